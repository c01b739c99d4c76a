"""The study config: datasets × backbones under one protocol, read from YAML with ``--set`` overrides.

A study fine-tunes every backbone on every dataset with the same recipe. What a cell trains with is
the protocol's ``train`` section, then the dataset's ``train`` section (per-dataset settings such as
class weighting or an epoch cap, the same for every backbone), then the backbone's ``model`` and
``model_kwargs``; the result is an ordinary training config, validated by :mod:`medvit.train.config`
before anything runs. With ``start: distilled`` each backbone is first distilled once
(``medvit pretrain``, the protocol's ``pretrain`` section: same teacher, data and budget for all) and
every dataset's cell fine-tunes from that run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medvit.config_files import load_yaml_config, merge_config
from medvit.config_schema import build_config, choices, value_range
from medvit.pretrain.config import PretrainConfig, pretrain_config_from_dict
from medvit.train.config import TrainConfig, apply_overrides, config_from_dict

__all__ = ["STARTS", "Claim", "StudyConfig", "load_study_config", "study_config_from_dict"]

STARTS = ("distilled", "imagenet", "scratch")
CLAIM_KINDS = ("highest_macro_precision", "recall_ratio", "highest_recall", "highest_localization")
_NOUN = "study config key"


# -- the YAML schema (checked by medvit.config_schema.build_config, like the train and pretrain configs) --------


@dataclass
class _DatasetSpec:
    manifest: str
    root: str
    train: dict[str, Any] = field(default_factory=dict)  # per-dataset training keys, validated per cell


@dataclass
class _BackboneSpec:
    model: str | None = None  # default: the backbone's name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    start: str | None = field(default=None, metadata=choices(None, *STARTS))  # default: the protocol's


@dataclass
class _ProtocolSpec:
    start: str = field(default="distilled", metadata=choices(*STARTS))
    image_size: list[int] = field(default_factory=lambda: [128, 128], metadata={"image_size": True})
    seeds: list[int] = field(default_factory=lambda: [0])
    selection: str = "val_balanced_accuracy"
    pretrain: dict[str, Any] = field(default_factory=dict)  # validated as each backbone's pretrain config
    train: dict[str, Any] = field(default_factory=dict)  # validated as each cell's training config
    weights: dict[str, str] = field(default_factory=dict)


@dataclass
class _CamSpec:
    dataset: str | None = None
    split: str = "test"
    method: str = "gradcam"
    figure_images: int = field(default=6, metadata=value_range(0))
    score: str = "energy"
    stage: int = field(default=4, metadata=value_range(1, 4))


@dataclass
class _ClaimSpec:
    kind: str = field(metadata=choices(*CLAIM_KINDS))
    id: str | None = None
    text: str = ""
    datasets: list[str] | None = None
    dataset: str | None = None
    class_name: str | int | None = field(default=None, metadata={"key": "class"})
    ratio: float = field(default=1.0, metadata=value_range(0, low_open=True))
    score: str = "energy"
    stage: int = field(default=4, metadata=value_range(1, 4))


@dataclass
class _StudySpec:
    datasets: dict[str, _DatasetSpec]
    backbones: dict[str, _BackboneSpec | None]
    protocol: _ProtocolSpec
    name: str = "study"
    reference: str | None = None  # default: the first backbone
    cam: _CamSpec | None = None
    claims: list[_ClaimSpec] = field(default_factory=list)
    n_bootstrap: int = field(default=1000, metadata=value_range(1))


@dataclass(frozen=True)
class Claim:
    """One claim of the papers, checked by :func:`medvit.study.verdicts.claim_verdict`.

    Attributes:
        id: short name (``precision``, ``mild_recall``...).
        kind: ``highest_macro_precision`` (the reference's macro precision above every baseline on
            every dataset), ``recall_ratio`` (its recall of ``class`` at least ``ratio`` times the best
            baseline's), ``highest_recall`` (of ``class``, above every baseline) or
            ``highest_localization`` (the CAM score ``score`` at ``stage`` above every baseline).
        text: the claim as the paper words it.
        datasets: datasets it covers.
        class_name: the class it is about (recall claims).
        ratio: the factor of ``recall_ratio``.
        score, stage: the localisation score and stage of ``highest_localization``.
    """

    id: str
    kind: str
    text: str
    datasets: tuple[str, ...]
    class_name: str | None = None
    ratio: float = 1.0
    score: str = "energy"
    stage: int = 4


@dataclass
class StudyConfig:
    """A validated study (see the module docstring); ``cell_train_dict`` gives a cell's training config."""

    name: str
    datasets: dict[str, dict[str, Any]]
    backbones: dict[str, dict[str, Any]]
    reference: str
    start: str
    image_size: list[int]
    seeds: list[int]
    selection: str
    pretrain: dict[str, Any]
    train: dict[str, Any]
    weights: dict[str, str]
    cam: dict[str, Any]
    claims: list[Claim]
    n_bootstrap: int = 1000
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def backbone_start(self, backbone: str) -> str:
        """The start of ``backbone``: its own ``start`` (e.g. ``distilled`` for a backbone without public
        ImageNet weights in an ``imagenet`` study) or the protocol's."""
        return str(self.backbones[backbone].get("start") or self.start)

    def cell_train_dict(self, dataset: str, backbone: str, seed: int, pretrained: str | None) -> dict[str, Any]:
        """The training config of cell (``dataset``, ``backbone``, ``seed``) as a plain dict."""
        data = merge_config(self.train, self.datasets[dataset].get("train", {}))
        spec = self.backbones[backbone]
        data.update(
            model=spec["model"],
            model_kwargs=merge_config(data.get("model_kwargs", {}), spec.get("model_kwargs", {})),
            manifest=self.datasets[dataset]["manifest"],
            root=self.datasets[dataset]["root"],
            image_size=list(self.image_size),
            seed=seed,
            pretrained=pretrained,
        )
        data["early_stopping"] = merge_config(data.get("early_stopping", {}), {"metric": self.selection})
        return data

    def cell_train_config(self, dataset: str, backbone: str, seed: int, pretrained: str | None) -> TrainConfig:
        """:meth:`cell_train_dict`, validated."""
        return config_from_dict(self.cell_train_dict(dataset, backbone, seed, pretrained))

    def pretrain_dict(self, backbone: str) -> dict[str, Any]:
        """The ``medvit pretrain`` config of ``backbone`` (the distilled start), as a plain dict."""
        data = dict(self.pretrain)
        spec = self.backbones[backbone]
        data.update(
            student=spec["model"],
            student_kwargs=merge_config(data.get("student_kwargs", {}), spec.get("model_kwargs", {})),
            image_size=list(self.image_size),
        )
        data.setdefault("data", [{"manifest": d["manifest"], "root": d["root"]} for d in self.datasets.values()])
        return data

    def pretrain_config(self, backbone: str) -> PretrainConfig:
        """:meth:`pretrain_dict`, validated."""
        return pretrain_config_from_dict(self.pretrain_dict(backbone))


def _claims(specs: Sequence[_ClaimSpec], datasets: Sequence[str]) -> list[Claim]:
    claims = []
    for i, spec in enumerate(specs):
        names = tuple(spec.datasets or ([spec.dataset] if spec.dataset is not None else datasets))
        unknown = [d for d in names if d not in datasets]
        if unknown:
            raise ValueError(f"study config 'claims[{i}]': dataset {unknown[0]!r} is not one of {list(datasets)}")
        if spec.kind in ("recall_ratio", "highest_recall") and spec.class_name is None:
            raise ValueError(f"study config 'claims[{i}]': a {spec.kind} claim needs 'class'")
        claims.append(Claim(
            id=spec.id or f"claim{i + 1}", kind=spec.kind, text=spec.text, datasets=names,
            class_name=None if spec.class_name is None else str(spec.class_name), ratio=spec.ratio,
            score=spec.score, stage=spec.stage,
        ))
    return claims


def study_config_from_dict(data: Mapping[str, Any]) -> StudyConfig:
    """Validate a study config (and every cell's training / pretraining config it implies).

    Raises:
        ValueError: an unknown key, a bad value, or a cell config the engine would refuse (named).
    """
    spec = build_config(_StudySpec, data, noun=_NOUN)
    datasets = {name: dataclasses.asdict(d) for name, d in spec.datasets.items()}
    backbones = {name: dataclasses.asdict(b or _BackboneSpec()) for name, b in spec.backbones.items()}
    for name, backbone in backbones.items():
        backbone["model"] = backbone["model"] or name
    if not datasets or not backbones:
        raise ValueError("study config: needs at least one dataset and one backbone")
    protocol = spec.protocol
    unknown = [b for b in protocol.weights if b not in backbones]
    if unknown:
        raise ValueError(f"study config 'protocol.weights': {unknown[0]!r} is not one of the backbones {list(backbones)}")
    reference = spec.reference or next(iter(backbones))
    if reference not in backbones:
        raise ValueError(f"study config 'reference': {reference!r} is not one of the backbones {list(backbones)}")
    cam = {} if spec.cam is None else dataclasses.asdict(spec.cam)
    if cam and cam["dataset"] not in datasets:
        raise ValueError(f"study config 'cam.dataset': {cam['dataset']!r} is not one of {list(datasets)}")
    seeds = protocol.seeds
    cfg = StudyConfig(
        name=spec.name, datasets=datasets, backbones=backbones, reference=reference, start=protocol.start,
        image_size=protocol.image_size, seeds=seeds, selection=protocol.selection,
        pretrain=dict(protocol.pretrain), train=dict(protocol.train), weights=dict(protocol.weights),
        cam=cam, claims=_claims(spec.claims, list(datasets)), n_bootstrap=spec.n_bootstrap, source=dict(data),
    )
    for backbone in backbones:  # fail fast: every cell's config is checked before hours of training
        own = cfg.backbone_start(backbone)
        if own == "distilled":
            _named(f"pretrain/{backbone}", lambda: cfg.pretrain_config(backbone))
        for dataset in datasets:
            pretrained = "<pretrain run>" if own == "distilled" else cfg.weights.get(backbone)
            if own == "imagenet" and pretrained is None:
                raise ValueError(
                    f"study config: start 'imagenet' needs protocol.weights.{backbone} (a weight file or an hf-hub: "
                    f"name in the local hub cache), or backbones.{backbone}.start: distilled"
                )
            _named(f"{dataset}/{backbone}", lambda: cfg.cell_train_config(dataset, backbone, seeds[0], pretrained))
    return cfg


def _named(cell: str, build: Any) -> None:
    try:
        build()
    except ValueError as error:
        raise ValueError(f"study cell {cell}: {error}") from error


def load_study_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML (a ``base:`` expanded, :func:`medvit.config_files.load_yaml_config`), apply ``--set a.b=c``
    overrides and validate.

    Raises:
        FileNotFoundError: the file, or a base it names, does not exist.
        ValueError: invalid YAML, a cycle of bases, or an invalid config.
    """
    data = load_yaml_config(path, not_found_hint="see experiments/study/ for presets")
    return study_config_from_dict(apply_overrides(data, overrides))
