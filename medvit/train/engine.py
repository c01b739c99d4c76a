"""The fine-tuning loop: one code path for a single process and for DDP through ``torchrun``.

``torchrun --nproc_per_node N -m medvit.cli train ...`` starts N processes; each finds its rank in
the environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), joins a process group (``gloo`` on CPU,
``nccl`` on GPU) and trains a ``DistributedDataParallel`` copy on its shard of every global batch.
Evaluation gathers the logits of all ranks and drops the sampler's padding, so metrics are those of
the whole split. Only rank 0 writes.

Exact resume: data order, augmentation (:mod:`medvit.train.sampling`) and dropout are functions
of ``(seed, epoch)``, so an epoch replays identically whatever happened before it, and every epoch
ends with an atomic checkpoint commit (:mod:`medvit.train.resume`). A run killed at any moment
continues with ``--resume``: before its first commit it starts again from epoch 0, and
``metrics.csv`` is always rebuilt from the committed state.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import yaml
from timm.optim import create_optimizer_v2
from torch import nn
from tqdm.auto import tqdm

from medvit.data.manifest import read_manifest
from medvit.metrics import compute_metrics
from medvit.models import create_model, sized_model_kwargs
from medvit.run_dir import (
    BEST_WEIGHTS,
    CONFIG_YAML,
    LAST_STATE,
    METRICS_CSV,
    TRAIN_LOG,
    load_run_weights,
    predictions_filename,
    save_run_weights,
    write_metrics_csv,
)
from medvit.train.acceleration import inference_amp, resolve_precision
from medvit.train.config import TrainConfig, config_from_dict
from medvit.train.distill import DistillationLoss, load_teacher
from medvit.train.distributed import DistContext
from medvit.train.evaluate import evaluate_run
from medvit.train.freeze import apply_mode, frozen_roots, set_train_mode
from medvit.train.loop import EpochStats, NonFiniteLossError, Optimization, cosine_scheduler, run_log
from medvit.train.ordinal import OrdinalSoftLabelLoss
from medvit.train.predict import Predictions, predict, write_predictions
from medvit.train.resume import clean_interrupted_writes, seed_epoch, set_aside_unusable_state, try_recover_checkpoint
from medvit.train.run_files import dataset_description, holds_results, write_run_files
from medvit.train.sampling import SplitData, build_loader, load_split
from medvit.train.state import TrainState

__all__ = [
    "train",
    "evaluate_run",
    "predict",
    "Predictions",
    "TrainResult",
    "NonFiniteLossError",
    "class_weights",
    "apply_mode",
]

_logger = logging.getLogger(__name__)


def class_weights(labels: np.ndarray, num_classes: int, method: str, beta: float = 0.999) -> torch.Tensor | None:
    """Cross-entropy class weights from training label counts (normalised to mean 1).

    Args:
        labels: (N,) training labels.
        num_classes: K.
        method: ``none``, ``inverse`` (``N / (K n_c)``) or ``effective``
            (Cui et al. 2019, https://arxiv.org/abs/1901.05555, Eq. 3: ``(1 - beta) / (1 - beta^n_c)``).
        beta: the effective-number ``beta``.
    """
    if method == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"class_weighting={method}: classes {missing} have no training images; use class_weighting: none")
    if method == "inverse":
        weights = counts.sum() / (num_classes * counts)
    else:
        weights = (1 - beta) / (1 - np.power(beta, counts))
    weights = weights / weights.mean()
    return torch.tensor(weights, dtype=torch.float32)


def _sample_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weights ``1 / n_class`` for the balanced sampler."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(1.0 / counts[labels], dtype=torch.double)


@dataclass
class TrainResult:
    """Outcome of :func:`train` (on rank 0; other ranks get the same numbers)."""

    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_metric: float
    stopped_early: bool
    history: list[dict[str, float]]


def train(cfg: TrainConfig | None, out_dir: str | Path, resume: bool = False) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.manifest`` and write a run directory with its predictions.

    Calibration on validation and ``report/`` are not part of the engine: :func:`medvit.workflows.train_run`
    (what ``medvit train`` runs) trains with this function, then finishes the run.

    Works unchanged in one process or under ``torchrun`` (see the module docstring). A folder
    that holds no completed epoch (a run killed during its first epoch, or whose ``last_state.pt``
    is unreadable) may be started afresh or resumed: both start from epoch 0 and say so, and an
    unreadable state file is kept aside as ``last_state.pt.unusable``, never deleted.

    Args:
        cfg: the validated configuration (ignored on resume: the run's own ``config.yaml`` is used).
        out_dir: the run directory to create (or to continue with ``resume=True``).
        resume: continue from the last completed epoch of ``out_dir``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError: bad configuration or data, or ``out_dir`` holds a resumable
            run (or finished results) and ``resume`` is false.
    """
    out = Path(out_dir)
    if resume:
        config_path = out / CONFIG_YAML
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {out} is not a run to resume; drop --resume to start it")
        cfg = config_from_dict(yaml.safe_load(config_path.read_text()))
    if cfg is not None and cfg.cv.folds is not None:
        raise ValueError(
            f"config key 'cv.folds' is {cfg.cv.folds}: a cross-validated run is trained by "
            "medvit.workflows.cv.train_cv ('medvit train' does this); train() runs one fold"
        )
    if not resume and (out / LAST_STATE).exists() and try_recover_checkpoint(out, finish_commit=False) is not None:
        raise ValueError(f"{out} already holds a run; continue it with --resume or choose another --out")
    elif not resume and (results := holds_results(out)):
        raise ValueError(f"{out} holds results of a run ({results}) but no training state; choose another --out")

    ctx = DistContext.from_env(cfg.device)
    try:
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            clean_interrupted_writes(out)
        ctx.barrier()
        with run_log(out / TRAIN_LOG if ctx.is_main else None):
            return _Trainer(cfg, out, ctx).run(resume)
    finally:
        ctx.close()


class _Trainer:
    """One run's model, data, loss and optimizer; :meth:`run` is the loop."""

    def __init__(self, cfg: TrainConfig, out: Path, ctx: DistContext) -> None:
        from timm.data import resolve_model_data_config

        if cfg.batch_size % ctx.world_size:
            raise ValueError(
                f"config key 'batch_size': {cfg.batch_size} is not divisible by the {ctx.world_size} processes; "
                "use a multiple of --nproc_per_node"
            )
        self.cfg, self.out, self.ctx = cfg, out, ctx
        self.per_rank_batch = cfg.batch_size // ctx.world_size
        self.log: Callable[..., None] = _logger.info if ctx.is_main else _logger.debug  # one copy of the log
        self.data = dataset_description(cfg)
        self.class_names = self.data["class_names"]
        K = len(self.class_names)
        if cfg.ordinal_labels is not None and not self.data["is_ordinal"]:  # fail before loading model and data
            raise ValueError(
                f"config key 'ordinal_labels': the classes of {self.data['dataset']} ({', '.join(self.class_names)}) "
                "are not ordered grades; set ordinal_labels: null (it is for graded data such as EyePACS)"
            )

        self.model_kwargs = sized_model_kwargs(cfg.model, cfg.model_kwargs, cfg.image_size)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = create_model(cfg.model, num_classes=K, pretrained=cfg.pretrained, **self.model_kwargs)
        data_cfg = resolve_model_data_config(self.model)
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])
        frozen = apply_mode(self.model, cfg.mode)
        self.frozen_parts = frozen_roots(self.model) if frozen else []
        if frozen:
            self.log("mode %s: %d parameter tensors frozen (their norm layers stay in eval mode)", cfg.mode, len(frozen))
        self.model.to(ctx.device)

        self.split_args = dict(
            manifest=cfg.manifest, root=cfg.root, image_size=cfg.image_size, mean=self.mean, std=self.std,
            preset=self.data["preset"], seed=cfg.seed, cache=cfg.cache, batch_size=self.per_rank_batch,
        )
        self.train_data = load_split(split="train", train=True, **self.split_args)
        self.val_data = self._validation_split()
        labels = self.train_data.labels
        self.sample_weights = _sample_weights(labels, K) if cfg.balanced_sampler else None
        weights = class_weights(labels, K, cfg.class_weighting, cfg.class_weight_beta)
        weights = None if weights is None else weights.to(ctx.device)
        self.criterion = self._criterion(weights)
        self.val_criterion = nn.CrossEntropyLoss(weight=weights)
        self.distill: nn.Module | None = None
        if cfg.distill.teacher:
            teacher = load_teacher(cfg.distill.teacher, self.class_names, ctx.device)
            self.distill = DistillationLoss(
                self.criterion, teacher, cfg.distill.temperature, cfg.distill.alpha, self.mean, self.std
            ).to(ctx.device)

        self.optimizer = create_optimizer_v2(
            self.model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
        )
        steps_per_epoch = len(self._loader(self.train_data, epoch=0, train=True, num_workers=0, weights=self.sample_weights))
        self.scheduler = cosine_scheduler(
            self.optimizer, cfg.epochs, steps_per_epoch, cfg.lr, cfg.min_lr, cfg.warmup_epochs
        )
        self.precision = resolve_precision(cfg.precision, ctx.device)  # bf16 autocast: no loss scaling needed
        self.use_amp = inference_amp(ctx.device, self.precision)
        self.net: nn.Module = self.model
        if ctx.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        self.optimization = Optimization(
            self.model, self.optimizer, self.scheduler, ctx, self.precision, cfg.compile, cfg.grad_clip, cfg.seed,
            net=self.net,
        )
        self.interactive = ctx.is_main and sys.stderr.isatty()

    def _validation_split(self) -> SplitData | None:
        """The val split; ``None`` for a run that keeps its last epoch (``early_stopping.metric: epoch``)
        on a manifest without one (the refit of a cross-validated run, :mod:`medvit.workflows.cv`)."""
        if self.cfg.early_stopping.metric == "epoch" and not (read_manifest(self.cfg.manifest)["split"] == "val").any():
            self.log("no val split: keeping the last epoch, no validation metrics or calibration")
            return None
        return load_split(split="val", train=False, **self.split_args)

    def _criterion(self, weights: torch.Tensor | None) -> nn.Module:
        """The supervised loss: cross-entropy on one-hot (smoothed) or ordinal soft labels (graded data only)."""
        cfg = self.cfg
        if cfg.ordinal_labels is None:
            return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

        return OrdinalSoftLabelLoss(len(self.class_names), cfg.ordinal_labels, weights).to(self.ctx.device)

    def _loader(self, split: SplitData, epoch: int, train: bool, num_workers: int | None = None, weights=None):
        return build_loader(
            dataset=split.dataset, collate_fn=split.collate_fn, batch_size=self.per_rank_batch, ctx=self.ctx,
            seed=self.cfg.seed, epoch=epoch, train=train,
            num_workers=self.cfg.num_workers if num_workers is None else num_workers, weights=weights,
            epoch_size=self.cfg.train_images_per_epoch if train else None,
        )

    # -- resume ---------------------------------------------------------------------------------

    def _restore(self) -> TrainState:
        """The committed state of the run (a fresh one, said so, when no epoch was committed)."""
        state_dict = None
        if self.ctx.is_main:
            state_dict = try_recover_checkpoint(self.out)
            if state_dict is None and (self.out / LAST_STATE).exists():
                kept = set_aside_unusable_state(self.out)
                self.log("%s is unreadable; kept it as %s and starting from epoch 1", LAST_STATE, kept.name)
        self.ctx.barrier()
        if not self.ctx.is_main and (self.out / LAST_STATE).is_file():
            state_dict = torch.load(self.out / LAST_STATE, map_location="cpu", weights_only=True)
        if state_dict is None:
            self.log("%s has no completed epoch to resume; starting from epoch 1", self.out)
            return TrainState()
        state = self.optimization.restore(self.out, state_dict)
        if self.ctx.is_main:  # the rows of every committed epoch, whatever the kill interrupted
            write_metrics_csv(self.out / METRICS_CSV, state.history)
        if state.finished or state.next_epoch >= self.cfg.epochs:
            self.log("%s already finished; re-running the final evaluation only", self.out)
        else:
            self.log("resuming %s at epoch %d/%d", self.out, state.next_epoch + 1, self.cfg.epochs)
        return state

    # -- the loop -------------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        cfg = self.cfg
        state = self._restore() if resume else TrainState()
        if state.epoch < 0 and self.ctx.is_main:
            write_run_files(cfg, self.out, self.data, self.model_kwargs, self.mean, self.std, self.precision)
        stopped_early = False
        epochs_bar = tqdm(
            range(state.next_epoch, cfg.epochs), desc="epochs", initial=state.next_epoch, total=cfg.epochs,
            disable=not self.interactive, dynamic_ncols=True,
        )
        for epoch in epochs_bar:
            if state.finished:
                break
            t0 = time.perf_counter()
            stats = self._train_epoch(epoch, state)
            train_loss = stats.loss
            row: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss}
            row.update(self._validate(epoch))
            row.update(stats.columns(time.perf_counter() - t0, "train_images_per_s"))
            monitor = cfg.early_stopping.metric
            if monitor not in row:
                raise ValueError(
                    f"config key 'early_stopping.metric': {monitor} is not logged for this dataset; "
                    f"choose one of {[k for k in row if k.startswith('val_')]}"
                )
            improved, stop = state.end_epoch(row, cfg.early_stopping, cfg.epochs - 1)
            if self.ctx.is_main:
                if improved:
                    save_run_weights(self.model, self.out / BEST_WEIGHTS)
                self.optimization.commit(self.out, state)
                write_metrics_csv(self.out / METRICS_CSV, state.history)
            shown = "" if monitor == "val_loss" else f" {monitor} {row[monitor]:.4f}"
            self.log(
                "epoch %d/%d train_loss %.4f val_loss %.4f%s%s (%.1fs)",
                epoch + 1, cfg.epochs, train_loss, row.get("val_loss", float("nan")), shown, " *" if improved else "",
                row["epoch_time_s"],
            )
            epochs_bar.set_postfix(train_loss=f"{train_loss:.4f}", **{monitor: f"{row[monitor]:.4f}"})
            self.ctx.barrier()
            if stop:
                stopped_early = True
                self.log("early stopping: %s has not improved for %d epochs", monitor, state.bad_epochs)
                break
        epochs_bar.close()
        self._final_evaluation()
        best = float(state.best_metric) if state.best_metric is not None else float("nan")
        return TrainResult(self.out, len(state.history), state.best_epoch + 1, best, stopped_early, state.history)

    def _train_epoch(self, epoch: int, state: TrainState) -> EpochStats:
        """One pass over the training split (the shared loop; the loss is this engine's)."""
        cfg, ctx = self.cfg, self.ctx
        seed_epoch(cfg.seed, epoch, ctx.rank)
        loader = self._loader(self.train_data, epoch=epoch, train=True, weights=self.sample_weights)
        set_train_mode(self.net, self.frozen_parts)

        def loss_for(batch: Mapping[str, Any]) -> Callable[[nn.Module], torch.Tensor]:
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = torch.as_tensor(batch["label"]).long().to(ctx.device, non_blocking=True)

            def loss_of(net: nn.Module) -> torch.Tensor:
                logits = net(images)
                if self.distill is not None:
                    return self.distill(images, logits, labels)
                return self.criterion(logits.float(), labels)

            return loss_of

        return self.optimization.train_epoch(
            loader, epoch, cfg.epochs, state, loss_for, progress=self.interactive, where=str(self.out)
        )

    def _validate(self, epoch: int) -> dict[str, float]:
        """Validation loss and metrics (``val_*``) of the current weights."""
        if self.val_data is None:
            return {}
        loader = self._loader(self.val_data, epoch=epoch, train=False)
        preds = predict(self.net, loader, self.ctx, self.use_amp, progress=self.interactive, desc="val")
        device = self.ctx.device
        logits, labels = torch.from_numpy(preds.logits).to(device), torch.from_numpy(preds.labels).to(device)
        metrics = compute_metrics(preds.labels, preds.probabilities, self.class_names, self.data["is_ordinal"], n_bootstrap=0)
        row = {"val_loss": float(self.val_criterion(logits, labels).item())}
        row.update({f"val_{k}": float(v) for k, v in metrics.summary().items()})
        return row

    def _final_evaluation(self) -> None:
        """Predict the validation split and ``cfg.eval_split`` with the best weights. Calibrating on
        validation and the report are the next step of the workflow (:func:`medvit.workflows.finish_run`)."""
        cfg, ctx = self.cfg, self.ctx
        ctx.barrier()
        load_run_weights(self.model, self.out / BEST_WEIGHTS)
        splits = [cfg.eval_split] if cfg.eval_split == "val" else ["val", cfg.eval_split]
        if self.val_data is None:
            splits = [split for split in splits if split != "val"]
        for split in splits:
            data = self.val_data if split == "val" else load_split(split=split, train=False, **self.split_args)
            preds = predict(self.net, self._loader(data, epoch=0, train=False), ctx, self.use_amp,
                            progress=self.interactive, desc=split)
            if ctx.is_main:
                write_predictions(
                    self.out / predictions_filename(split), preds, data.records, self.class_names, cfg.root, split
                )
        ctx.barrier()

