"""The training state: counters, early-stopping bookkeeping and history, saved every epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from medvit.train.config import EarlyStoppingConfig

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Everything of the loop that is not a tensor of the model, optimizer or scheduler.

    Attributes:
        epoch: the last completed epoch (0-based); -1 before the first.
        global_step: optimizer steps taken.
        best_metric: best value of the early-stopping metric so far (``None`` before the first epoch).
        best_epoch: the epoch (0-based) of ``best_metric``; its weights are ``best.safetensors``.
        bad_epochs: epochs since the last improvement.
        finished: the loop has ended (last epoch or early stop); only the final evaluation remains.
        history: one ``metrics.csv`` row per completed epoch.
    """

    epoch: int = -1
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    def record(self, row: dict[str, float], last_epoch: int) -> None:
        """Record a completed epoch's row (no early stopping: ``finished`` after ``last_epoch``)."""
        self.epoch += 1
        self.history.append(row)
        self.finished = self.epoch == last_epoch

    def end_epoch(self, row: dict[str, float], monitor: EarlyStoppingConfig, last_epoch: int) -> tuple[bool, bool]:
        """Record a completed epoch's row and its early-stopping metric; returns ``(improved, stop_early)`` and
        sets ``finished``."""
        self.record(row, last_epoch)
        improved = monitor.improves(row[monitor.metric], self.best_metric)
        if improved:
            self.best_metric, self.best_epoch, self.bad_epochs = row[monitor.metric], self.epoch, 0
        else:
            self.bad_epochs += 1
        stop = monitor.patience > 0 and self.bad_epochs >= monitor.patience
        self.finished = stop or self.epoch == last_epoch
        return improved, stop

    def state_dict(self) -> dict[str, Any]:
        """Primitives only, so the checkpoint loads with ``weights_only=True``."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "finished": self.finished,
            "history": [dict(row) for row in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> "TrainState":
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        best = state.get("best_metric")  # absent in pretrain states (no early stopping) of earlier versions
        self.best_metric = None if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.finished = bool(state.get("finished", False))
        self.history = [dict(row) for row in state["history"]]
        return self
