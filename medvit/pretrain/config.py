"""Pretraining configuration: one validated dataclass, read from YAML with ``--set key=value`` overrides.

Every key of the YAML file maps to a field of :class:`PretrainConfig`, checked by the validator that
``medvit train`` uses (:func:`medvit.config_schema.build_config`): unknown keys ("did you mean") and bad
values raise a ``ValueError`` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from medvit.config_files import load_yaml_config
from medvit.config_schema import apply_overrides, build_config, image_size_pair
from medvit.config_schema import choices as _choices
from medvit.config_schema import value_range as _range
from medvit.run_dir import MODEL_JSON
from medvit.train.config import translate_legacy_amp

__all__ = ["TEACHERS", "PretrainConfig", "DataSource", "load_pretrain_config", "pretrain_config_from_dict", "pretrain_config_to_dict"]

TEACHERS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
"""Bundled ImageNet teachers (:mod:`medvit.models.efficientnet_lite`)."""


@dataclass(frozen=True)
class DataSource:
    """One manifest whose **train** split joins the pretraining pool.

    Attributes:
        manifest: manifest CSV written by ``medvit prepare``.
        root: raw folder the manifest's image paths are relative to (as the user gave it).
    """

    manifest: str
    root: str


@dataclass
class PretrainConfig:
    """Everything that defines a ``medvit pretrain`` run (``config.yaml`` of its run directory).

    Attributes:
        student: backbone to pretrain, any ``medvit.models.create_model`` name (``medvit models``).
        student_kwargs: extra keyword arguments for ``create_model`` (must be repeated as
            ``model_kwargs`` when fine-tuning).
        teacher: bundled ImageNet teacher, one of :data:`TEACHERS`, or a ``medvit train`` run directory
            (its fine-tuned network: the student then matches its stage maps and class logits, e.g. the
            EyePACS lite0 for a retina-specific start).
        data: list of ``{manifest, root}``; the union of their ``train`` splits is the pool
            (val and test rows are never read). Labels are unused.
        max_images_per_source: first keep a seeded subset of at most this many train images of each
            manifest, so a large dataset (HAM10000: 5,609) does not crowd out a small one (BUSI: 326);
            ``null``: all.
        max_images: then keep a seeded subset of at most this many pool images; ``null``: all.
        image_size: ``[H, W]`` (or one int) of the crops fed to teacher and student.
        crop_scale: smallest side fraction of the random resized crop (the largest is 1).
        vflip_prob: probability of an up-down flip (left-right flips always have 0.5).
        epochs: passes over the pool.
        batch_size: images per step.
        lr, min_lr, weight_decay, warmup_epochs, grad_clip: AdamW with a per-step cosine schedule.
        stage_weights: weight of the feature loss of each of the four stages (strides 4..32).
        kl_weight: weight of the KL term on the teacher's logits (1000 ImageNet classes, or a run's classes) (0.25: with T = 2 a fresh
            student's KL is about 19, so the weighted KL, about 5, is about half the four stage losses, about 8).
        temperature: softmax temperature of the KL term (scaled by ``T**2``).
        precision: ``auto``, ``fp32`` or ``bf16`` for the training step, as in ``medvit train``
            (:mod:`medvit.train.acceleration`); older configs' ``amp: false`` reads as ``fp32``.
        compile: compile the student with ``torch.compile`` (eager fallback), as in ``medvit train``.
        seed: seed of init, subset, order and augmentation.
        num_workers: data-loader worker processes.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    student: str = "vvt_tiny"
    student_kwargs: dict = field(default_factory=dict)
    teacher: str = "tf_efficientnet_lite2"
    data: list[DataSource] = field(default_factory=list)
    max_images_per_source: int | None = field(default=None, metadata=_range(1, None))
    max_images: int | None = field(default=None, metadata=_range(1, None))
    image_size: list = field(default_factory=lambda: [160, 160], metadata={"image_size": True})
    crop_scale: float = field(default=0.6, metadata=_range(0.05, 1.0))
    vflip_prob: float = field(default=0.0, metadata=_range(0.0, 1.0))
    epochs: int = field(default=20, metadata=_range(1, 10_000))
    batch_size: int = field(default=32, metadata=_range(2, 65_536))
    lr: float = field(default=1e-3, metadata=_range(0.0, 10.0))
    min_lr: float = field(default=1e-5, metadata=_range(0.0, 10.0))
    weight_decay: float = field(default=0.05, metadata=_range(0.0, 10.0))
    warmup_epochs: float = field(default=1.0, metadata=_range(0.0, 10_000))
    grad_clip: float | None = field(default=1.0, metadata=_range(0.0, None, low_open=True))
    stage_weights: list[float] = field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0], metadata={"expected": "four non-negative numbers (strides 4, 8, 16, 32)"}
    )
    kl_weight: float = field(default=0.25, metadata=_range(0.0, None))
    temperature: float = field(default=2.0, metadata=_range(0.0, None, low_open=True))
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16"))
    compile: bool = False
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    num_workers: int = field(default=0, metadata=_range(0, 256))
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))

    def __post_init__(self) -> None:
        self.image_size = image_size_pair(self.image_size)
        weights = list(self.stage_weights)
        if len(weights) != 4 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
            raise ValueError(
                f"config key 'stage_weights': expected four non-negative numbers (strides 4, 8, 16, 32), got {weights!r}"
            )
        self.stage_weights = [float(w) for w in weights]
        if not isinstance(self.teacher, str) or (
            self.teacher not in TEACHERS and not (Path(self.teacher) / MODEL_JSON).is_file()
        ):
            raise ValueError(
                f"config key 'teacher': got {self.teacher!r}; expected one of {', '.join(TEACHERS)} (bundled ImageNet "
                "weights) or a `medvit train` run directory (with its model.json)"
            )
        if not self.data:
            raise ValueError(
                "config key 'data': expected a list of {manifest: CSV, root: RAW_DIR}; e.g. "
                "data: [{manifest: data_manifests/busi_pool.csv, root: ../shared/datasets/pools/busi_256}]"
            )
        for i, source in enumerate(self.data):
            empty = [name for name in ("manifest", "root") if not getattr(source, name)]
            if empty:
                raise ValueError(f"config key 'data[{i}].{empty[0]}' is empty; give {{manifest: CSV, root: RAW_DIR}}")

    @property
    def sources(self) -> list[DataSource]:
        """The ``data`` entries as :class:`DataSource`."""
        return list(self.data)


def pretrain_config_from_dict(data: Mapping[str, Any]) -> PretrainConfig:
    """Build and validate a :class:`PretrainConfig` from a mapping.

    Raises:
        ValueError: an unknown key or an invalid value, naming the key and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a pretrain config is a mapping of keys, got {data!r}")
    return build_config(PretrainConfig, translate_legacy_amp(data))


def pretrain_config_to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain-dict form of a config (what ``config.yaml`` of a pretrain run holds)."""
    return dataclasses.asdict(cfg)


def load_pretrain_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML config, apply ``--set key=value`` overrides and validate.

    Args:
        path: YAML file (``None``: defaults plus ``overrides``).
            A file that names a ``base:`` is expanded first (:func:`medvit.config_files.load_yaml_config`).
        overrides: ``key=value`` strings (values parsed as YAML), applied after the file.

    Raises:
        FileNotFoundError: the YAML file, or a base it names, does not exist.
        ValueError: invalid YAML, a cycle of bases, an unknown key or a bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml_config(path, not_found_hint="see experiments/configs/pretrain_*.yaml")
    plain = [item for item in overrides if not item.startswith("data.")]
    data = apply_overrides(data, plain)
    for item in overrides:
        if item.startswith("data."):
            data["data"] = _override_source(data.get("data"), item)
    return pretrain_config_from_dict(data)


def _override_source(sources: Any, item: str) -> list:
    """Apply ``data.N.manifest=...`` / ``data.N.root=...`` to the list of sources."""
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    sources = [dict(s) for s in (sources or [])]
    if len(parts) != 3 or not parts[1].isdigit() or not raw:
        raise ValueError(f"--set {item!r}: expected data.N.root=DIR or data.N.manifest=CSV (N counts from 0)")
    index = int(parts[1])
    if index >= len(sources):
        raise ValueError(f"--set {item!r}: the config has {len(sources)} data entries (data.0 .. data.{len(sources) - 1})")
    sources[index][parts[2]] = yaml.safe_load(raw)
    return sources
