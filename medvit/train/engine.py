"""The fine-tuning engine: one code path for a single process and for DDP through ``torchrun``.

``torchrun --nproc_per_node N -m medvit.cli train ...`` starts N processes; each finds its rank in
the environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), joins a process group (``gloo`` on CPU,
``nccl`` on GPU) and trains a ``DistributedDataParallel`` copy on its shard of every global batch.
Evaluation gathers the logits of all ranks and drops the sampler's padding, so metrics are those of
the whole split. Only rank 0 writes.

Exact resume: data order, augmentation (:mod:`medvit.train.sampling`) and dropout are functions
of ``(seed, epoch)``, so an epoch replays identically whatever happened before it, and every epoch
ends with an atomic checkpoint commit (:mod:`medvit.train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medvit.models.checkpoints import sha256_file
from medvit.run_dir import (
    BEST_WEIGHTS,
    CONFIG_YAML,
    LAST_STATE,
    LAST_WEIGHTS,
    MODEL_JSON,
    atomic_write_text,
    load_run,
    load_run_weights,
    save_run_weights,
)
from medvit.train.checkpoint import commit_checkpoint, recover_checkpoint, rng_state, seed_epoch, set_rng_state
from medvit.train.config import TrainConfig, config_from_dict, config_to_dict
from medvit.train.distributed import DistContext
from medvit.train.sampling import build_loader, load_split

__all__ = [
    "train",
    "evaluate_run",
    "predict",
    "Predictions",
    "TrainResult",
    "NonFiniteLossError",
    "class_weights",
    "apply_mode",
    "predictions_filename",
]

_logger = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
PREDICTIONS_CSV = "predictions.csv"
TRAIN_LOG = "train.log"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# Model set-up
# ----------------------------------------------------------------------------------------------


def apply_mode(model: nn.Module, mode: str) -> list[str]:
    """Freeze parameters for a linear probe or ``freeze_stages:N``; returns the frozen names.

    ``linear`` trains only ``model.get_classifier()``. ``freeze_stages:N`` freezes the first N
    pyramid stages (``medvit.models.stage_modules``) and everything registered before the first
    stage (the stem / patch embedding).
    """
    if mode == "full":
        return []
    if mode == "linear":
        head = model.get_classifier()
        trainable = {id(p) for p in head.parameters()}
        if not trainable:
            raise ValueError(f"{type(model).__name__}.get_classifier() has no parameters; cannot train a linear probe")
    else:
        from medvit.models import stage_modules

        n = int(mode.split(":")[1])
        stages = stage_modules(model)
        frozen_modules = {id(p) for s in stages[:n] for p in s.parameters()}
        later = {id(p) for s in stages[n:] for p in s.parameters()}
        first_stage = {id(p) for p in stages[0].parameters()}
        before_stem_end = set()
        for _, p in model.named_parameters():
            if id(p) in first_stage:
                break
            before_stem_end.add(id(p))
        frozen = (frozen_modules | before_stem_end) - later
        trainable = {id(p) for p in model.parameters()} - frozen
    frozen_names = []
    for name, p in model.named_parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
            frozen_names.append(name)
    return frozen_names


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


# ----------------------------------------------------------------------------------------------
# Prediction (gathered over ranks)
# ----------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Dataset-ordered outputs of one evaluation pass (identical on every rank)."""

    indices: np.ndarray
    logits: np.ndarray
    labels: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1).numpy()


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    ctx: DistContext,
    amp: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> Predictions:
    """Logits of every item of ``loader`` gathered from all ranks, padding dropped, in index order."""
    model.eval()
    indices, logits, labels = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images = batch["image"].to(ctx.device, non_blocking=True)
        with _autocast(ctx.device, amp):
            out = model(images)
        logits.append(out.float())
        labels.append(torch.as_tensor(batch["label"]).long().to(ctx.device))
        indices.append(torch.as_tensor(batch["index"]).long().to(ctx.device))
    idx = torch.cat(indices)
    lg = torch.cat(logits)
    lb = torch.cat(labels)
    if ctx.is_distributed:
        # DistributedSampler pads every rank to the same length, so plain all_gather works.
        gathered = []
        for t in (idx, lg, lb):
            parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
            dist.all_gather(parts, t)
            gathered.append(torch.cat(parts))
        idx, lg, lb = gathered
    idx_np = idx.cpu().numpy()
    order = np.argsort(idx_np, kind="stable")
    _, first = np.unique(idx_np[order], return_index=True)  # drop the sampler's padded duplicates
    keep = order[first]
    return Predictions(idx_np[keep], lg.cpu().numpy()[keep], lb.cpu().numpy()[keep])


def predictions_filename(split: str) -> str:
    """``predictions.csv`` for the test split, ``predictions_<split>.csv`` for the others."""
    return PREDICTIONS_CSV if split == "test" else f"predictions_{split}.csv"


def _write_predictions(
    path: Path, preds: Predictions, records: Sequence[dict], class_names: Sequence[str], root: str | Path, split: str
) -> None:
    probs = preds.probabilities
    predicted = probs.argmax(axis=1)
    root = Path(root)
    images = []
    for i in preds.indices:
        record = records[i]
        image = Path(str(record.get("path", record["image"])))
        with contextlib.suppress(ValueError):
            image = image.relative_to(root)
        images.append(image.as_posix())
    frame = pd.DataFrame(
        {
            "image": images,
            "split": split,
            "label": preds.labels,
            "label_name": [class_names[i] for i in preds.labels],
            "prediction": predicted,
            "prediction_name": [class_names[i] for i in predicted],
        }
    )
    for c, name in enumerate(class_names):
        frame[f"prob_{name}"] = probs[:, c]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.8g")
    atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Outcome of :func:`train` (on rank 0; other ranks get the same numbers)."""

    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_metric: float
    stopped_early: bool
    history: list[dict[str, float]]


def _dataset_description(cfg: TrainConfig) -> dict[str, Any]:
    """Dataset name, class names, preset and ordinality from the manifest's side JSON."""
    from medvit.data import get_spec
    from medvit.data.manifest import read_manifest_info

    if not cfg.manifest or not cfg.root:
        raise ValueError(
            "config keys 'manifest' and 'root' are required; set them in the YAML or with "
            "--set manifest=data_manifests/NAME.csv --set root=RAW_DIR"
        )
    manifest = Path(cfg.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"config key 'manifest': {manifest} not found; create it with 'medvit prepare'")
    if not Path(cfg.root).is_dir():
        raise FileNotFoundError(f"config key 'root': {cfg.root} is not a directory (the raw data folder)")
    side = read_manifest_info(manifest)
    dataset = str(side.get("dataset", "folder"))
    class_names = [str(c) for c in side.get("class_names", [])]
    preset, is_ordinal = side.get("preset"), side.get("is_ordinal")
    if not class_names or preset is None or is_ordinal is None:
        spec = get_spec(dataset)
        class_names = class_names or list(spec.class_names)
        preset = spec.preset if preset is None else preset
        is_ordinal = spec.is_ordinal if is_ordinal is None else is_ordinal
    return {
        "dataset": dataset,
        "class_names": class_names,
        "preset": cfg.preset or preset,
        "is_ordinal": bool(is_ordinal),
        "side": side,
    }


def _metrics_row(prefix: str, metrics: Any) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in metrics.summary().items()}


def _write_metrics_csv(path: Path, history: Sequence[dict[str, float]]) -> None:
    if not history:
        return
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


class _LogFile:
    """Adds a ``train.log`` handler to the ``medvit`` logger for the run's duration."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.handler: logging.Handler | None = None
        self.logger = logging.getLogger("medvit")
        self.previous_level = self.logger.level

    def __enter__(self) -> "_LogFile":
        if self.path is not None:
            self.handler = logging.FileHandler(self.path, mode="a")
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self.handler.setLevel(logging.INFO)
            self.logger.addHandler(self.handler)
            if self.logger.getEffectiveLevel() > logging.INFO:
                self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            self.handler.close()
            self.logger.setLevel(self.previous_level)


def train(cfg: TrainConfig | None, out_dir: str | Path, resume: bool = False) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.manifest`` and write a run directory.

    Works unchanged in one process or under ``torchrun`` (see the module docstring).

    Args:
        cfg: the validated configuration (ignored on resume except for being checked: the run's
            own ``config.yaml`` is used).
        out_dir: the run directory to create (or to continue with ``resume=True``).
        resume: continue from the last completed epoch of ``out_dir``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError: bad configuration or data, or ``out_dir`` already holds a
            run and ``resume`` is false.
    """
    out = Path(out_dir)
    if resume:
        config_path = out / CONFIG_YAML
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {out} is not a run to resume; drop --resume to start it")
        cfg = config_from_dict(yaml.safe_load(config_path.read_text()))
    elif (out / MODEL_JSON).exists() or (out / LAST_STATE).exists():
        raise ValueError(f"{out} already holds a run; continue it with --resume or choose another --out")

    ctx = DistContext.from_env(cfg.device)
    try:
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        with _LogFile(out / TRAIN_LOG if ctx.is_main else None):
            return _train(cfg, out, resume, ctx)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, out: Path, resume: bool, ctx: DistContext) -> TrainResult:
    from medvit.models import create_model, get_model_info
    from timm.data import resolve_model_data_config

    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"config key 'batch_size': {cfg.batch_size} is not divisible by the {ctx.world_size} processes; "
            "use a multiple of --nproc_per_node"
        )
    per_rank_batch = cfg.batch_size // ctx.world_size
    log = _logger.info if ctx.is_main else _logger.debug  # one copy of the progress log
    data = _dataset_description(cfg)
    class_names = data["class_names"]
    K = len(class_names)

    model_kwargs = dict(cfg.model_kwargs)
    info = get_model_info(cfg.model)
    if info is not None and info.takes_img_size:
        model_kwargs.setdefault("img_size", list(cfg.image_size))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, num_classes=K, pretrained=cfg.pretrained, **model_kwargs)
    data_cfg = resolve_model_data_config(model)
    mean, std = tuple(float(m) for m in data_cfg["mean"]), tuple(float(s) for s in data_cfg["std"])
    frozen = apply_mode(model, cfg.mode)
    if frozen:
        log("mode %s: %d parameter tensors frozen", cfg.mode, len(frozen))
    model.to(ctx.device)

    split_args = dict(
        manifest=cfg.manifest, root=cfg.root, image_size=cfg.image_size, mean=mean, std=std,
        preset=data["preset"], seed=cfg.seed, cache=cfg.cache, batch_size=per_rank_batch,
    )
    train_data = load_split(split="train", train=True, **split_args)
    val_data = load_split(split="val", train=False, **split_args)
    train_labels = train_data.labels
    sample_weights = _sample_weights(train_labels, K) if cfg.balanced_sampler else None
    weights = class_weights(train_labels, K, cfg.class_weighting, cfg.class_weight_beta)

    criterion: nn.Module = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(ctx.device), label_smoothing=cfg.label_smoothing
    )
    val_criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(ctx.device))
    distill = None
    if cfg.distill.teacher:
        from medvit.train.distill import DistillationLoss, load_teacher

        teacher = load_teacher(cfg.distill.teacher, class_names, ctx.device)
        distill = DistillationLoss(criterion, teacher, cfg.distill.temperature, cfg.distill.alpha, mean, std).to(ctx.device)

    optimizer = create_optimizer_v2(
        model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
    )
    steps_per_epoch = len(build_loader(train_data.dataset, train_data.collate_fn, per_rank_batch, ctx, cfg.seed, 0, True, 0))
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    scheduler = CosineLRScheduler(  # timm applies each group's layer-decay "lr_scale"
        optimizer,
        t_initial=total_steps,
        lr_min=min(cfg.min_lr, cfg.lr),
        warmup_t=int(round(cfg.warmup_epochs * steps_per_epoch)),
        warmup_lr_init=min(cfg.min_lr, cfg.lr),
        t_in_epochs=False,
    )
    use_amp = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 autocast needs no loss scaling

    start_epoch, global_step, best, best_epoch, bad_epochs = 0, 0, None, -1, 0
    history: list[dict[str, float]] = []
    if resume:
        state = recover_checkpoint(out) if ctx.is_main else None
        ctx.barrier()
        if not ctx.is_main:
            state = torch.load(out / LAST_STATE, map_location="cpu", weights_only=True)
        load_run_weights(model, out / LAST_WEIGHTS)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        best, best_epoch, bad_epochs = state["best_metric"], state["best_epoch"], state["bad_epochs"]
        history = [dict(row) for row in state["history"]]
        set_rng_state(state["rng"])
        log("resuming %s at epoch %d/%d", out, start_epoch + 1, cfg.epochs)
        if state.get("finished"):
            log("%s already finished; re-running the final evaluation only", out)
    elif ctx.is_main:
        _write_run_files(cfg, out, data, model_kwargs, mean, std)

    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    interactive = ctx.is_main and sys.stderr.isatty()
    monitor = cfg.early_stopping.metric
    stopped_early = False
    epochs_bar = tqdm(
        range(start_epoch, cfg.epochs), desc="epochs", initial=start_epoch, total=cfg.epochs,
        disable=not interactive, dynamic_ncols=True,
    )
    for epoch in epochs_bar:
        if resume and state.get("finished"):
            break
        t0 = time.perf_counter()
        seed_epoch(cfg.seed, epoch, ctx.rank)
        loader = build_loader(
            train_data.dataset, train_data.collate_fn, per_rank_batch, ctx, cfg.seed, epoch, True,
            cfg.num_workers, sample_weights,
        )
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        seen = 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not interactive, dynamic_ncols=True)
        for step, batch in enumerate(batches):
            scheduler.step_update(global_step)
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = torch.as_tensor(batch["label"]).long().to(ctx.device, non_blocking=True)
            with _autocast(ctx.device, use_amp):
                logits = net(images)
                loss = distill(images, logits, labels) if distill is not None else criterion(logits.float(), labels)
            if ctx.any_true(not bool(torch.isfinite(loss))):
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {epoch + 1}, step {step + 1}; stopped. The last good "
                    f"checkpoint (epoch {epoch}) is kept in {out}; lower lr, set grad_clip or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            global_step += 1
            loss_sum += loss.detach().double() * images.shape[0]
            seen += images.shape[0]
            if interactive:
                rate = seen * ctx.world_size / max(time.perf_counter() - t0, 1e-9)
                batches.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        if ctx.is_distributed:
            totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=ctx.device)])
            dist.all_reduce(totals)
            loss_sum, seen = totals[0], int(totals[1].item())
        train_time = time.perf_counter() - t0
        train_loss = float(loss_sum.item() / max(seen, 1))

        val_loader = build_loader(val_data.dataset, val_data.collate_fn, per_rank_batch, ctx, cfg.seed, epoch, False, cfg.num_workers)
        preds = predict(net, val_loader, ctx, use_amp, progress=interactive, desc="val")
        val_loss = float(val_criterion(torch.from_numpy(preds.logits).to(ctx.device), torch.from_numpy(preds.labels).to(ctx.device)).item())
        from medvit.metrics import compute_metrics

        val_metrics = compute_metrics(preds.labels, preds.probabilities, class_names, data["is_ordinal"], n_bootstrap=0)
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss}
        row.update(_metrics_row("val", val_metrics))
        row["lr"] = float(max(g["lr"] for g in optimizer.param_groups))
        row["epoch_time_s"] = time.perf_counter() - t0
        row["train_images_per_s"] = seen / max(train_time, 1e-9)
        history.append(row)
        if monitor not in row:
            raise ValueError(
                f"config key 'early_stopping.metric': {monitor} is not logged for this dataset; "
                f"choose one of {[k for k in row if k.startswith('val_')]}"
            )
        improved = cfg.early_stopping.improves(row[monitor], best)
        if improved:
            best, best_epoch, bad_epochs = row[monitor], epoch, 0
        else:
            bad_epochs += 1
        stop = cfg.early_stopping.patience > 0 and bad_epochs >= cfg.early_stopping.patience
        finished = stop or epoch + 1 == cfg.epochs
        if ctx.is_main:
            if improved:
                save_run_weights(model, out / BEST_WEIGHTS)
            commit_checkpoint(
                out,
                model,
                {
                    "epoch": epoch,
                    "global_step": global_step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "finished": finished,
                    "rng": rng_state(cfg.seed, epoch + 1),
                },
            )
            _write_metrics_csv(out / METRICS_CSV, history)
        shown = "" if monitor == "val_loss" else f" {monitor} {row[monitor]:.4f}"
        log(
            "epoch %d/%d train_loss %.4f val_loss %.4f%s%s (%.1fs)",
            epoch + 1, cfg.epochs, train_loss, val_loss, shown, " *" if improved else "", row["epoch_time_s"],
        )
        epochs_bar.set_postfix(train_loss=f"{train_loss:.4f}", **{monitor: f"{row[monitor]:.4f}"})
        ctx.barrier()
        if stop:
            stopped_early = True
            log("early stopping: %s has not improved for %d epochs", monitor, bad_epochs)
            break
    epochs_bar.close()

    # Final evaluation of the best checkpoint on cfg.eval_split.
    ctx.barrier()
    load_run_weights(model, out / BEST_WEIGHTS)
    eval_data = load_split(split=cfg.eval_split, train=False, **split_args)
    eval_loader = build_loader(eval_data.dataset, eval_data.collate_fn, per_rank_batch, ctx, cfg.seed, 0, False, cfg.num_workers)
    preds = predict(net, eval_loader, ctx, use_amp, progress=interactive, desc=cfg.eval_split)
    if ctx.is_main:
        _write_predictions(
            out / predictions_filename(cfg.eval_split), preds, eval_data.records, class_names, cfg.root, cfg.eval_split
        )
        if cfg.report:
            from medvit.report import write_report

            write_report(out, split=cfg.eval_split, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    ctx.barrier()
    return TrainResult(out, len(history), best_epoch + 1, float(best) if best is not None else float("nan"), stopped_early, history)


def _pretrained_file(cfg: TrainConfig) -> Path | None:
    """The weights file a run starts from (``pretrained: true`` resolves to the bundled file)."""
    if cfg.pretrained is True:
        from medvit.models.efficientnet_lite import bundled_weights_path

        try:
            return bundled_weights_path(cfg.model)
        except KeyError:  # create_model has already said which file to pass
            return None
    if isinstance(cfg.pretrained, str) and Path(cfg.pretrained).is_file():
        return Path(cfg.pretrained)
    return None


def _write_run_files(
    cfg: TrainConfig, out: Path, data: dict[str, Any], model_kwargs: dict[str, Any], mean: Sequence[float], std: Sequence[float]
) -> None:
    """``config.yaml`` and ``model.json`` at the start of a run."""
    from medvit.data.manifest import manifest_hash

    atomic_write_text(out / CONFIG_YAML, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    pretrained_file = _pretrained_file(cfg)
    manifest = Path(cfg.manifest)
    side = data["side"]
    info = {
        "model": cfg.model,
        "model_kwargs": model_kwargs,
        "num_classes": len(data["class_names"]),
        "class_names": data["class_names"],
        "image_size": list(cfg.image_size),
        "mean": list(mean),
        "std": list(std),
        "dataset": data["dataset"],
        "preset": data["preset"],
        "is_ordinal": data["is_ordinal"],
        "manifest": str(manifest),
        "manifest_hash": manifest_hash(manifest),
        "manifest_counts": side.get("counts"),
        "manifest_num_rejected": side.get("num_rejected"),
        "manifest_num_duplicate_sets": len(side.get("duplicate_sets") or []),
        "manifest_duplicates": side.get("duplicates"),
        "raw_hash": side.get("raw_hash"),
        "pretrained": str(pretrained_file) if pretrained_file else cfg.pretrained,
        "pretrained_sha256": sha256_file(pretrained_file) if pretrained_file else None,
        "seed": cfg.seed,
        "torch": torch.__version__,
    }
    atomic_write_text(out / MODEL_JSON, json.dumps(info, indent=2))


# ----------------------------------------------------------------------------------------------
# Evaluation of a finished run
# ----------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    root: str | Path | None = None,
    split: str = "test",
    batch_size: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
) -> Path:
    """Predict a split with a run's best model and write ``predictions.csv``.

    Args:
        run_dir: the run directory.
        manifest, root: data to evaluate (default: the run's own ``config.yaml``).
        split: ``train``, ``val`` or ``test``.
        batch_size: evaluation batch size (default: the run's).
        device: ``auto``, ``cpu`` or ``cuda``.
        out: output CSV (default ``RUN/predictions.csv``, ``RUN/predictions_<split>.csv`` for
            other splits).

    Returns:
        The written CSV path.
    """
    run_dir = Path(run_dir)
    ctx = DistContext.from_env(device)
    try:
        run = load_run(run_dir, device=ctx.device)
        manifest = manifest or run.config.get("manifest")
        root = root or run.config.get("root")
        if not manifest or not root:
            raise ValueError(f"{run_dir}: no manifest/root in config.yaml; pass --manifest and --root")
        data = load_split(
            manifest, root, split, run.image_size, run.mean, run.std, run.preset or "generic",
            train=False, seed=int(run.config.get("seed", 0)), cache=False,
        )
        bs = batch_size or int(run.config.get("batch_size", 32))
        loader = build_loader(data.dataset, data.collate_fn, bs, ctx, 0, 0, False, int(run.config.get("num_workers", 0)))
        preds = predict(run.model, loader, ctx, amp=bool(run.config.get("amp", False)), progress=sys.stderr.isatty())
        path = Path(out) if out else run_dir / predictions_filename(split)
        if ctx.is_main:
            _write_predictions(path, preds, data.records, run.class_names, root, split)
            _logger.info("wrote %s (%d images)", path, len(preds.labels))
        return path
    finally:
        ctx.close()
