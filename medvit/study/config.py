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

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


from medvit.config_files import load_yaml_config
from medvit.pretrain.config import PretrainConfig, pretrain_config_from_dict
from medvit.train.config import TrainConfig, apply_overrides, config_from_dict

__all__ = ["STARTS", "Claim", "StudyConfig", "load_study_config", "study_config_from_dict"]

STARTS = ("distilled", "imagenet", "scratch")
CLAIM_KINDS = ("highest_macro_precision", "recall_ratio", "highest_recall", "highest_localization")
_TOP_KEYS = ("name", "datasets", "backbones", "reference", "protocol", "cam", "claims", "n_bootstrap")
_PROTOCOL_KEYS = ("start", "image_size", "seeds", "selection", "pretrain", "train", "weights")
_DATASET_KEYS = ("manifest", "root", "train")
_BACKBONE_KEYS = ("model", "model_kwargs", "start")
_CAM_KEYS = ("dataset", "split", "method", "figure_images", "score", "stage")
_CLAIM_KEYS = ("id", "kind", "text", "datasets", "dataset", "class", "ratio", "score", "stage")


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
        return str(self.backbones[backbone].get("start", self.start))

    def cell_train_dict(self, dataset: str, backbone: str, seed: int, pretrained: str | None) -> dict[str, Any]:
        """The training config of cell (``dataset``, ``backbone``, ``seed``) as a plain dict."""
        data = _merge(self.train, self.datasets[dataset].get("train", {}))
        spec = self.backbones[backbone]
        data.update(
            model=spec["model"],
            model_kwargs=_merge(data.get("model_kwargs", {}), spec.get("model_kwargs", {})),
            manifest=self.datasets[dataset]["manifest"],
            root=self.datasets[dataset]["root"],
            image_size=list(self.image_size),
            seed=seed,
            pretrained=pretrained,
        )
        data["early_stopping"] = _merge(data.get("early_stopping", {}), {"metric": self.selection})
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
            student_kwargs=_merge(data.get("student_kwargs", {}), spec.get("model_kwargs", {})),
            image_size=list(self.image_size),
        )
        data.setdefault("data", [{"manifest": d["manifest"], "root": d["root"]} for d in self.datasets.values()])
        return data

    def pretrain_config(self, backbone: str) -> PretrainConfig:
        """:meth:`pretrain_dict`, validated."""
        return pretrain_config_from_dict(self.pretrain_dict(backbone))


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, one level deep for nested sections."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _check_keys(where: str, data: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"study config {where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(allowed)}"
            raise ValueError(f"unknown study config key '{where}{key}'{hint}")
    return dict(data)


def _claims(items: Any, datasets: Sequence[str]) -> list[Claim]:
    if not isinstance(items, list):
        raise ValueError("study config 'claims': expected a list")
    claims = []
    for i, item in enumerate(items):
        item = _check_keys(f"claims[{i}].", item, _CLAIM_KEYS)
        kind = item.get("kind")
        if kind not in CLAIM_KINDS:
            raise ValueError(f"study config 'claims[{i}].kind': got {kind!r}; allowed: {', '.join(CLAIM_KINDS)}")
        names = tuple(item.get("datasets") or ([item["dataset"]] if "dataset" in item else datasets))
        unknown = [d for d in names if d not in datasets]
        if unknown:
            raise ValueError(f"study config 'claims[{i}]': dataset {unknown[0]!r} is not one of {list(datasets)}")
        if kind in ("recall_ratio", "highest_recall") and "class" not in item:
            raise ValueError(f"study config 'claims[{i}]': a {kind} claim needs 'class'")
        claims.append(Claim(
            id=str(item.get("id", f"claim{i + 1}")), kind=kind, text=str(item.get("text", "")), datasets=names,
            class_name=None if item.get("class") is None else str(item["class"]), ratio=float(item.get("ratio", 1.0)),
            score=str(item.get("score", "energy")), stage=int(item.get("stage", 4)),
        ))
    return claims


def study_config_from_dict(data: Mapping[str, Any]) -> StudyConfig:
    """Validate a study config (and every cell's training / pretraining config it implies).

    Raises:
        ValueError: an unknown key, a bad value, or a cell config the engine would refuse (named).
    """
    top = _check_keys("", data, _TOP_KEYS)
    for key in ("datasets", "backbones", "protocol"):
        if key not in top:
            raise ValueError(f"study config: missing '{key}'")
    datasets = {}
    for name, spec in _check_keys("datasets.", top["datasets"], list(top["datasets"])).items():
        spec = _check_keys(f"datasets.{name}.", spec, _DATASET_KEYS)
        if "manifest" not in spec or "root" not in spec:
            raise ValueError(f"study config 'datasets.{name}': needs 'manifest' and 'root'")
        datasets[str(name)] = spec
    backbones = {}
    for name, spec in top["backbones"].items():
        spec = _check_keys(f"backbones.{name}.", spec or {"model": name}, _BACKBONE_KEYS)
        spec.setdefault("model", name)
        backbones[str(name)] = spec
    if not datasets or not backbones:
        raise ValueError("study config: needs at least one dataset and one backbone")
    protocol = _check_keys("protocol.", top["protocol"], _PROTOCOL_KEYS)
    start = protocol.get("start", "distilled")
    if start not in STARTS:
        raise ValueError(f"study config 'protocol.start': got {start!r}; allowed: {', '.join(STARTS)}")
    size = protocol.get("image_size", 128)
    image_size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    seeds = [int(s) for s in protocol.get("seeds", [0])]
    weights = {str(k): str(v) for k, v in (protocol.get("weights") or {}).items()}
    unknown = [b for b in weights if b not in backbones]
    if unknown:
        raise ValueError(f"study config 'protocol.weights': {unknown[0]!r} is not one of the backbones {list(backbones)}")
    reference = str(top.get("reference", next(iter(backbones))))
    if reference not in backbones:
        raise ValueError(f"study config 'reference': {reference!r} is not one of the backbones {list(backbones)}")
    cam = _check_keys("cam.", top.get("cam") or {}, _CAM_KEYS)
    if cam and cam.get("dataset") not in datasets:
        raise ValueError(f"study config 'cam.dataset': {cam.get('dataset')!r} is not one of {list(datasets)}")
    cfg = StudyConfig(
        name=str(top.get("name", "study")), datasets=datasets, backbones=backbones, reference=reference,
        start=start, image_size=image_size, seeds=seeds,
        selection=str(protocol.get("selection", "val_balanced_accuracy")),
        pretrain=dict(protocol.get("pretrain") or {}), train=dict(protocol.get("train") or {}), weights=weights,
        cam=cam, claims=_claims(top.get("claims", []), list(datasets)),
        n_bootstrap=int(top.get("n_bootstrap", 1000)), source=dict(data),
    )
    for backbone in backbones:  # fail fast: every cell's config is checked before hours of training
        own = cfg.backbone_start(backbone)
        if own not in STARTS:
            raise ValueError(f"study config 'backbones.{backbone}.start': got {own!r}; allowed: {', '.join(STARTS)}")
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
