"""The optimisation loop that ``medvit train`` and ``medvit pretrain`` share.

Both engines step a network through the same skeleton: a cosine schedule stepped per optimizer step,
the step itself in the run's precision, compiled or eager (:class:`medvit.train.acceleration.TrainStep`),
a stop on a non-finite loss, optional gradient clipping, progress on a bar and every
:data:`LOG_EVERY` steps in ``train.log``, and an epoch that ends with an atomic commit of the weights,
the optimizer, the schedule, the random state and :class:`medvit.train.state.TrainState`, from which
:meth:`Optimization.restore` resumes exactly. What differs stays in the engines: the loss of a batch,
validation and early stopping (fine-tuning), the adapters and the backbone file (pretraining).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm.auto import tqdm

from medvit.errors import RunError
from medvit.run_dir import LAST_WEIGHTS, load_run_weights
from medvit.train.acceleration import TrainStep
from medvit.train.distributed import DistContext
from medvit.train.resume import commit_checkpoint, rng_state, set_rng_state
from medvit.train.state import TrainState

__all__ = ["LOG_EVERY", "EpochStats", "NonFiniteLossError", "Optimization", "cosine_scheduler", "run_log"]

_logger = logging.getLogger(__name__)

LOG_EVERY = 50  # optimizer steps between progress lines in train.log

LossOf = Callable[[nn.Module], torch.Tensor]


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite."""


@contextlib.contextmanager
def run_log(path: Path | None) -> Iterator[None]:
    """Copy the ``medvit`` logger's INFO records to ``path`` (``train.log``) for the run's duration; no-op for ``None``."""
    if path is None:
        yield
        return
    logger = logging.getLogger("medvit")
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous)


def cosine_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, lr: float, min_lr: float, warmup_epochs: float,
) -> CosineLRScheduler:
    """timm's cosine schedule over ``epochs * steps_per_epoch`` optimizer steps, with a linear warm-up from
    ``min_lr`` (stepped per update; timm applies each group's layer-decay ``lr_scale``)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, epochs * steps_per_epoch),
        lr_min=min(min_lr, lr),
        warmup_t=int(round(warmup_epochs * steps_per_epoch)),
        warmup_lr_init=min(min_lr, lr),
        t_in_epochs=False,
    )


@dataclass
class EpochStats:
    """One training epoch, as :meth:`Optimization.train_epoch` measured it.

    Attributes:
        loss: mean training loss per image (all ranks).
        images: images stepped on (all ranks).
        seconds: wall time of the epoch's steps, loader included.
        data_wait_s: of those, the time spent waiting for the loader (rank 0's).
        lr: the largest group learning rate at the end of the epoch.
        compiled: whether the step ran compiled at the end of the epoch.
        compile_s: compilation time paid in this epoch.
    """

    loss: float
    images: int
    seconds: float
    data_wait_s: float
    lr: float
    compiled: bool
    compile_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def columns(self, epoch_time_s: float, rate_column: str) -> dict[str, float]:
        """The ``metrics.csv`` columns both engines log for an epoch, in their order: ``lr``, ``epoch_time_s`` (the
        engine's whole epoch, validation included), the step rate as ``rate_column``, ``data_wait_s`` (time the
        step waited for the loader; the rest is the model), ``compiled`` and ``compile_s``."""
        return {
            "lr": self.lr, "epoch_time_s": epoch_time_s, rate_column: self.images_per_s, "data_wait_s": self.data_wait_s,
            "compiled": float(self.compiled), "compile_s": self.compile_s,
        }


class Optimization:
    """A network, its optimizer and schedule, and the step that trains it: one epoch at a time, committed and resumed.

    Args:
        model: the module whose weights are saved and restored (not DDP-wrapped).
        optimizer: its optimizer.
        scheduler: a per-update timm scheduler (:func:`cosine_scheduler`).
        ctx: the process context (device; rank and world size under ``torchrun``).
        precision: the resolved precision (``fp32`` or ``bf16``).
        compile: run the step through ``torch.compile``.
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        seed: the run's seed (the random state committed with each epoch is a function of it).
        net: the module that is stepped when it is not ``model`` itself (its DDP wrapper).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler, ctx: DistContext,
        precision: str, compile: bool, grad_clip: float | None, seed: int, net: nn.Module | None = None,
    ) -> None:
        self.model, self.net = model, model if net is None else net
        self.optimizer, self.scheduler, self.ctx = optimizer, scheduler, ctx
        self.grad_clip, self.seed = grad_clip, seed
        self.step = TrainStep(self.net, ctx.device, precision, compile)
        self.log: Callable[..., None] = _logger.info if ctx.is_main else _logger.debug
        self.log("training step: %s%s on %s", precision, ", compiled" if compile else "", ctx.device)

    @property
    def lr(self) -> float:
        return float(max(group["lr"] for group in self.optimizer.param_groups))

    def train_epoch(
        self, loader: Iterable[Mapping[str, Any]], epoch: int, epochs: int, state: TrainState,
        loss_for: Callable[[Mapping[str, Any]], LossOf], on_step: Callable[[Mapping[str, Any], torch.Tensor], None] | None = None,
        progress: bool = False, where: str = "",
    ) -> EpochStats:
        """One pass over ``loader``: for each batch, ``loss_for(batch)`` gives the loss of a network, which is
        stepped; ``on_step(batch, loss)`` sees every step (the engine's own sums). Advances ``state.global_step``.

        Raises:
            NonFiniteLossError: the loss became NaN or infinite (on any rank); nothing of this epoch is committed.
        """
        ctx = self.ctx
        t0 = time.perf_counter()
        compile_before = self.step.compile_s
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        seen, data_wait = 0, 0.0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress, dynamic_ncols=True)
        steps = len(batches) if hasattr(loader, "__len__") else None
        waiting = time.perf_counter()
        for step, batch in enumerate(batches):
            data_wait += time.perf_counter() - waiting
            self.scheduler.step_update(state.global_step)
            loss_of = loss_for(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.step(loss_of)  # forward and backward, in the run's precision, compiled or eager
            if ctx.any_true(not bool(torch.isfinite(loss))):
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {epoch + 1}, step {step + 1}; stopped. The last good "
                    f"checkpoint (epoch {epoch}) is kept in {where}; lower lr, set grad_clip or check the data"
                )
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.requires_grad], self.grad_clip)
            self.optimizer.step()
            state.global_step += 1
            n = int(batch["image"].shape[0])
            loss_sum += loss.detach().double() * n
            seen += n
            if on_step is not None:
                on_step(batch, loss)
            logged, shown = (step + 1) % LOG_EVERY == 0, progress
            if logged or shown:
                rate = seen * ctx.world_size / max(time.perf_counter() - t0, 1e-9)
            if logged:
                self.log("epoch %d step %d/%s loss %.4f (%.1f img/s)", epoch + 1, step + 1, steps or "?",
                         float(loss_sum) / seen, rate)
            if shown:
                batches.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
            waiting = time.perf_counter()
        if ctx.is_distributed:
            totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=ctx.device)])
            dist.all_reduce(totals)
            loss_sum, seen = totals[0], int(totals[1].item())
        return EpochStats(
            loss=float(loss_sum.item() / max(seen, 1)), images=seen, seconds=time.perf_counter() - t0,
            data_wait_s=data_wait, lr=self.lr, compiled=self.step.compiled, compile_s=self.step.compile_s - compile_before,
        )

    def commit(self, out: Path, state: TrainState) -> None:
        """Atomically commit ``model``'s weights with the optimizer, schedule, random state and ``state``."""
        payload = state.state_dict()
        payload.update(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=rng_state(self.seed, state.next_epoch),
        )
        commit_checkpoint(out, self.model, payload)

    def restore(self, out: Path, committed: Mapping[str, Any]) -> TrainState:
        """Load what :meth:`commit` wrote (``committed``: the recovered ``last_state.pt``); returns its state."""
        load_run_weights(self.model, out / LAST_WEIGHTS)
        self.optimizer.load_state_dict(committed["optimizer"])
        self.scheduler.load_state_dict(committed["scheduler"])
        set_rng_state(committed["rng"])
        return TrainState().load_state_dict(committed)
