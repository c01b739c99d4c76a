"""``medvit pretrain``: stage-wise distillation from a frozen teacher (ImageNet or a fine-tuned run) on unlabeled images.

One process (CPU or one GPU). The loop reuses the fine-tuning engine's pieces: data order and
augmentation are functions of ``(seed, epoch)`` (:func:`medvit.train.sampling.build_loader`), every
epoch ends with an atomic commit (:func:`medvit.train.resume.commit_checkpoint`) of the student
*with* its adapters, so ``resume`` continues exactly, and then ``backbone.safetensors`` (the student
without adapters and without its ImageNet head) is rewritten, so even a time-boxed run that is
stopped leaves a usable backbone. The run directory holds ``config.yaml``, ``model.json``,
``metrics.csv``, ``train.log``, ``backbone.safetensors``, ``last.safetensors`` and ``last_state.pt``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import yaml
from monai.data import list_data_collate
from timm.optim import create_optimizer_v2
from torch import nn

from medvit.hashing import sha256_file
from medvit.models import create_model, sized_model_kwargs
from medvit.models.pretrained import PRETRAIN_KIND, PRETRAIN_WEIGHTS
from medvit.pretrain.adapters import PyramidStudent, backbone_state_dict
from medvit.pretrain.config import TEACHERS, PretrainConfig, pretrain_config_from_dict, pretrain_config_to_dict
from medvit.pretrain.data import load_pool, pool_dataset, pretrain_transforms
from medvit.pretrain.losses import PretrainLoss
from medvit.pretrain.teacher import TeacherSource, load_teacher
from medvit.run_dir import (
    CONFIG_YAML,
    LAST_STATE,
    METRICS_CSV,
    TRAIN_LOG,
    atomic_write_text,
    read_model_info,
    save_run_weights,
    write_metrics_csv,
    write_model_info,
)
from medvit.train.acceleration import resolve_precision, train_autocast
from medvit.train.distributed import DistContext
from medvit.train.loop import Optimization, cosine_scheduler, run_log
from medvit.train.resume import clean_interrupted_writes, recover_checkpoint, seed_epoch, try_recover_checkpoint
from medvit.train.sampling import build_loader
from medvit.train.state import TrainState

__all__ = ["METRICS_CSV", "TRAIN_LOG", "PretrainResult", "pretrain"]

_logger = logging.getLogger(__name__)

_PARTS = ("stage1", "stage2", "stage3", "stage4", "kl")


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain`.

    Attributes:
        run_dir: the run directory.
        epochs_run: completed epochs (including those of an earlier, resumed call).
        history: one ``metrics.csv`` row per epoch.
        images_seen: absolute paths of the images drawn by this call (for audit and tests).
    """

    run_dir: Path
    epochs_run: int
    history: list[dict[str, float]]
    images_seen: set[str] = field(default_factory=set)

    @property
    def backbone(self) -> Path:
        """``backbone.safetensors``: pass the run directory (or this file) as ``pretrained``."""
        return self.run_dir / PRETRAIN_WEIGHTS


def _model_json(
    cfg: PretrainConfig, student_kwargs: dict, teacher: TeacherSource, pool: Any, mean: Sequence[float],
    std: Sequence[float], precision: str,
) -> dict[str, Any]:
    return {
        "kind": PRETRAIN_KIND,
        "model": cfg.student,
        "model_kwargs": student_kwargs,
        "teacher": teacher.model,
        "teacher_kind": teacher.kind,
        "teacher_weights": teacher.value,
        "teacher_sha256": sha256_file(teacher.weights),
        "teacher_dataset": teacher.dataset,
        "data": pool.sources,
        "datasets": pool.datasets,
        "num_images": len(pool.records),
        "image_size": list(cfg.image_size),
        "mean": list(mean),
        "std": list(std),
        "loss": {
            "feature": "MSE of per-channel standardised stage maps (adapter: 1x1 conv + BatchNorm2d)",
            "stage_weights": list(cfg.stage_weights),
            "kl_weight": cfg.kl_weight,
            "temperature": cfg.temperature,
        },
        "weights": PRETRAIN_WEIGHTS,
        "seed": cfg.seed,
        "precision": precision,
        "compile": cfg.compile,
        "torch": torch.__version__,
    }


def pretrain(cfg: PretrainConfig | None, out_dir: str | Path, resume: bool = False) -> PretrainResult:
    """Distil ``cfg.teacher`` into ``cfg.student`` on the train splits of ``cfg.data``.

    Args:
        cfg: the validated configuration (``None`` with ``resume``: the run's ``config.yaml``).
        out_dir: the run directory to create, or to continue with ``resume=True``.
        resume: continue from the last completed epoch of ``out_dir``.

    Returns:
        A :class:`PretrainResult`.

    Raises:
        ValueError / FileNotFoundError: a bad configuration or data, ``out_dir`` already holds a run
            and ``resume`` is false, or the command was started with several processes.
        RuntimeError: the loss became NaN or infinite (the last good epoch is kept).
    """
    out = Path(out_dir)
    if resume:
        config_path = out / CONFIG_YAML
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {out} is not a pretrain run to resume; drop --resume")
        cfg = pretrain_config_from_dict(yaml.safe_load(config_path.read_text()))
    elif cfg is None:
        raise ValueError("pretrain needs a config (or resume=True to continue a run)")
    elif (out / PRETRAIN_WEIGHTS).exists() or (
        (out / LAST_STATE).exists() and try_recover_checkpoint(out, finish_commit=False) is not None
    ):
        raise ValueError(f"{out} already holds a run; continue it with --resume or choose another --out")
    ctx = DistContext.from_env(cfg.device)
    try:
        if ctx.is_distributed:
            raise ValueError("medvit pretrain runs in one process (CPU or one GPU); start it without torchrun")
        _check_before_writing(cfg)  # a bad image_size or teacher leaves no folder behind
        out.mkdir(parents=True, exist_ok=True)
        clean_interrupted_writes(out)
        with run_log(out / TRAIN_LOG):
            return _pretrain(cfg, out, resume, ctx.device)
    finally:
        ctx.close()


def _student_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    return sized_model_kwargs(cfg.student, cfg.student_kwargs, cfg.image_size)


@torch.no_grad()
def _check_before_writing(cfg: PretrainConfig) -> None:
    """What can be checked before the run folder exists: the teacher run's description, and one forward
    pass of the student at ``image_size`` on the CPU (a size it cannot take fails here, not in epoch 1).

    Raises:
        ValueError: the teacher is not a fine-tuned run, or the student refuses the size (the config key is named).
    """
    if cfg.teacher not in TEACHERS:
        try:
            read_model_info(cfg.teacher)
        except ValueError as error:
            raise ValueError(f"config key 'teacher': {error}") from error

    student = create_model(cfg.student, num_classes=0, **_student_kwargs(cfg)).eval()
    try:
        student(torch.zeros(1, 3, *cfg.image_size))
    except (ValueError, RuntimeError, AssertionError) as error:
        raise ValueError(f"config key 'image_size' = {list(cfg.image_size)}: {error}") from error


def _pretrain(cfg: PretrainConfig, out: Path, resume: bool, device: torch.device) -> PretrainResult:
    from timm.data import resolve_model_data_config

    student_kwargs = _student_kwargs(cfg)
    data_cfg = resolve_model_data_config(create_model(cfg.student, num_classes=0, **student_kwargs))
    mean, std = [float(m) for m in data_cfg["mean"]], [float(s) for s in data_cfg["std"]]
    teacher, teacher_source = load_teacher(cfg.teacher, mean, std)
    torch.manual_seed(cfg.seed)
    student = create_model(cfg.student, num_classes=teacher.num_classes, **student_kwargs)
    net = PyramidStudent(student, teacher.stage_chs, teacher.num_classes)
    net.to(device)
    teacher.to(device)
    criterion = PretrainLoss(cfg.stage_weights, cfg.kl_weight, cfg.temperature)

    pool = load_pool(cfg.sources, cfg.max_images, cfg.seed, cfg.max_images_per_source)
    dataset = pool_dataset(pool, pretrain_transforms(cfg.image_size, mean, std, cfg.crop_scale, cfg.vflip_prob))
    ctx = DistContext(device=device)
    steps_per_epoch = len(build_loader(dataset, list_data_collate, cfg.batch_size, ctx, cfg.seed, 0, True, 0))
    optimizer = create_optimizer_v2(net, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_scheduler(optimizer, cfg.epochs, steps_per_epoch, cfg.lr, cfg.min_lr, cfg.warmup_epochs)
    precision = resolve_precision(cfg.precision, device)
    optimization = Optimization(net, optimizer, scheduler, ctx, precision, cfg.compile, cfg.grad_clip, cfg.seed)
    state = TrainState()
    if resume and not (out / LAST_STATE).is_file():
        _logger.info("%s: no epoch was committed before the interruption; starting at epoch 1", out)
        resume = False
    if resume:
        state = optimization.restore(out, recover_checkpoint(out))
        save_run_weights(backbone_state_dict(student), out / PRETRAIN_WEIGHTS)  # in step with last.safetensors
        if state.next_epoch >= cfg.epochs:
            _logger.info("%s already finished (%d epochs); nothing to train", out, state.next_epoch)
        else:
            _logger.info("resuming %s at epoch %d/%d", out, state.next_epoch + 1, cfg.epochs)
    else:
        atomic_write_text(out / CONFIG_YAML, yaml.safe_dump(pretrain_config_to_dict(cfg), sort_keys=False))
        write_model_info(out, _model_json(cfg, student_kwargs, teacher_source, pool, mean, std, precision))
    _logger.info(
        "pretrain %s <- %s on %d images (%s), %dx%d, %d steps/epoch, %d epochs",
        cfg.student, teacher_source.value, len(pool.records), ", ".join(pool.datasets), *cfg.image_size,
        steps_per_epoch, cfg.epochs,
    )

    interactive = sys.stderr.isatty()
    seen_paths: set[str] = set()
    for epoch in range(state.next_epoch, cfg.epochs):
        t0 = time.perf_counter()
        seed_epoch(cfg.seed, epoch, 0)
        loader = build_loader(dataset, list_data_collate, cfg.batch_size, ctx, cfg.seed, epoch, True, cfg.num_workers)
        net.train()
        part_sums = {name: 0.0 for name in _PARTS}
        parts: dict[str, torch.Tensor] = {}

        def loss_for(batch: Mapping[str, Any]) -> Callable[[nn.Module], torch.Tensor]:
            images = batch["image"].to(device, non_blocking=True)
            with train_autocast(device, precision):
                teacher_logits, teacher_maps = teacher(images)

            def loss_of(student_net: nn.Module) -> torch.Tensor:
                logits, maps = student_net(images, sizes=[m.shape[-2:] for m in teacher_maps])
                loss, step_parts = criterion(logits, maps, teacher_logits, teacher_maps)
                parts.update(step_parts)
                return loss

            return loss_of

        def on_step(batch: Mapping[str, Any], loss: torch.Tensor) -> None:
            n = batch["image"].shape[0]
            seen_paths.update(str(p) for p in batch["path"])
            for name in _PARTS:
                part_sums[name] += float(parts[name].detach()) * n

        stats = optimization.train_epoch(loader, epoch, cfg.epochs, state, loss_for, on_step, interactive, str(out))
        row: dict[str, float] = {"epoch": epoch + 1, "loss": stats.loss}
        row.update({name: value / max(stats.images, 1) for name, value in part_sums.items()})
        row.update(stats.columns(time.perf_counter() - t0, "images_per_s"))
        state.record(row, cfg.epochs - 1)
        optimization.commit(out, state)
        save_run_weights(backbone_state_dict(student), out / PRETRAIN_WEIGHTS)
        write_metrics_csv(out / METRICS_CSV, state.history)
        _logger.info(
            "epoch %d/%d loss %.4f (stages %s, kl %.4f) %.1f img/s (%.0fs)",
            epoch + 1, cfg.epochs, row["loss"], " ".join(f"{row[f'stage{i}']:.3f}" for i in range(1, 5)), row["kl"],
            row["images_per_s"], row["epoch_time_s"],
        )
    _logger.info("wrote %s: pass pretrained=%s to medvit train", out / PRETRAIN_WEIGHTS, out)
    return PretrainResult(out, len(state.history), state.history, seen_paths)
