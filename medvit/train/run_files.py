"""The files a training run writes before its first epoch (``config.yaml``, ``model.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from medvit.data import get_spec
from medvit.data.manifest import manifest_hash, read_manifest_info
from medvit.hashing import sha256_file
from medvit.models.pretrained import describe_pretrained
from medvit.run_dir import BEST_WEIGHTS, CONFIG_YAML, PREDICTIONS_CSV, atomic_write_text, write_model_info
from medvit.train.config import TrainConfig, config_to_dict

__all__ = ["dataset_description", "holds_results", "write_run_files"]

_RESULT_FILES = (PREDICTIONS_CSV, "report", "selection.json")


def holds_results(out: Path) -> str:
    """The finished-run files in ``out`` (``""`` when none): a fresh start must not overwrite them."""
    found = [name for name in _RESULT_FILES if (out / name).exists()]
    if not found and (out / BEST_WEIGHTS).exists() and not (out / CONFIG_YAML).exists():
        found.append(BEST_WEIGHTS)  # exported weights without a training config
    return ", ".join(found)


def dataset_description(cfg: TrainConfig) -> dict[str, Any]:
    """Dataset name, class names, preset and ordinality from the manifest's side JSON."""
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


def _pretrained_record(cfg: TrainConfig) -> dict[str, Any]:
    """How ``model.json`` names the starting weights: portable (no machine path), hashed, described."""
    return describe_pretrained(cfg.pretrained, cfg.model)


def _teacher_record(cfg: TrainConfig) -> dict[str, Any]:
    """The distillation teacher's weights sha256, so the record holds when the teacher folder is retrained."""
    if not cfg.distill.teacher:
        return {}
    weights = Path(cfg.distill.teacher) / BEST_WEIGHTS
    return {"distill_teacher_sha256": sha256_file(weights) if weights.is_file() else None}


def write_run_files(
    cfg: TrainConfig, out: Path, data: dict[str, Any], model_kwargs: dict[str, Any], mean: Sequence[float],
    std: Sequence[float], precision: str,
) -> None:
    """``config.yaml`` and ``model.json`` at the start of a run (``precision``: the resolved training precision)."""
    atomic_write_text(out / CONFIG_YAML, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
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
        "questions": side.get("questions"),  # the dataset's clinical questions (None: the spec's, see reporting)
        "raw_hash": side.get("raw_hash"),
        **_pretrained_record(cfg),
        **_teacher_record(cfg),
        "seed": cfg.seed,
        "precision": precision,
        "compile": cfg.compile,
        "torch": torch.__version__,
    }
    write_model_info(out, info)
