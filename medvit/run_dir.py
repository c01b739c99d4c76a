"""Run directories: the self-describing output of ``medvit train``.

A run directory holds ``config.yaml``, ``model.json`` (model name and kwargs, class names, image
size, normalisation, dataset, manifest hash, pretrained file hash), ``metrics.csv``,
``best.safetensors``, ``last.safetensors``, ``last_state.pt``, ``predictions.csv``, ``train.log``
and ``report/``. ``load_run`` rebuilds the trained model from ``model.json`` + ``best.safetensors``
alone, so ``evaluate``, ``explain`` and the app need nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from medvit.atomic import atomic_save, atomic_write_text  # re-exported: run files are written atomically
from medvit.boundary.weights import read_safetensors
from medvit.config_schema import build_config
from medvit.errors import UnknownNameError
from medvit.models import create_model
from medvit.models.ensemble import FoldEnsemble
from medvit.models.storage import dequantize, quantize
from medvit.run_names import (  # re-exported: the run's file names live in one module
    BEST_WEIGHTS,
    CONFIG_YAML,
    FOLDS_CSV,
    LAST_STATE,
    LAST_WEIGHTS,
    METRICS_CSV,
    MODEL_JSON,
    OOF_SPLIT,
    PREDICTIONS_CSV,
    REPORT_DIR,
    SELECTION_JSON,
    TRAIN_LOG,
)

__all__ = [
    "TIMING_COLUMNS",
    "Run",
    "load_run",
    "cv_members",
    "read_model_info",
    "write_model_info",
    "save_run_weights",
    "load_run_weights",
    "read_run_weights",
    "export_run",
    "atomic_save",
    "atomic_write_text",
    "MODEL_JSON",
    "BEST_WEIGHTS",
    "LAST_WEIGHTS",
    "LAST_STATE",
    "METRICS_CSV",
    "PREDICTIONS_CSV",
    "TRAIN_LOG",
    "predictions_filename",
    "write_metrics_csv",
    "read_metrics",
    "DEFAULT_MONITORED_METRIC",
    "kept_epoch",
    "metric_improves",
    "monitored_metric",
    "training_seconds",
    "split_sizes",
    "read_config",
    "read_model_header",
    "read_selection",
    "write_selection",
    "CONFIG_YAML",
    "SELECTION_JSON",
    "REPORT_DIR",
    "OOF_SPLIT",
    "FOLDS_CSV",
    "ReportFiles",
]

_logger = logging.getLogger(__name__)

#: ``metrics.csv`` columns that measure wall-clock time (they differ between two identical runs).
TIMING_COLUMNS = ("epoch_time_s", "train_images_per_s", "images_per_s", "data_wait_s", "compile_s")


@dataclass
class _RunInfoCore:
    """The keys of ``model.json`` every reader relies on, checked by :func:`read_model_info` (the one validator,
    :func:`medvit.config_schema.build_config`); each kind of run adds its own keys beside them."""

    model: str
    class_names: list[str]
    image_size: list[int] = field(metadata={"image_size": True})
    mean: list[float]
    std: list[float]
    kind: str | None = None
    dataset: str | None = None


_CORE_KEYS = tuple(f.name for f in dataclasses.fields(_RunInfoCore))


class ReportFiles:
    """Names of the files in ``RUN/report/`` (written by :func:`medvit.report.write_report`)."""

    per_class_csv = "per_class.csv"
    per_class_md = "per_class.md"
    summary_json = "summary.json"
    confusion_png = "confusion.png"
    roc_png = "roc.png"
    index_md = "index.md"
    reliability_png = "reliability.png"
    operating_points_png = "operating_points.png"


@dataclass
class Run:
    """A loaded run directory (the model is in eval mode on the requested device).

    Attributes:
        path: the run directory.
        model: the trained network (``best.safetensors``).
        model_name: backbone name for ``medvit.models.create_model``.
        class_names: class names in label order.
        image_size: (H, W) network input.
        mean, std: input normalisation.
        dataset: dataset name (``busi``, ``ham10000``, ``eyepacs``, ...).
        preset: augmentation preset used for training.
        info: the full ``model.json``.
        config: the resolved ``config.yaml`` (empty when the file is absent, e.g. a bare export).
        temperature: the calibration temperature fitted on validation (``model.json["calibration"]``,
            written by ``medvit calibrate``); 1.0 for an uncalibrated run. Probabilities are
            ``softmax(logits / temperature)``.
    """

    path: Path
    model: nn.Module
    model_name: str
    class_names: list[str]
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    preset: str
    info: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    temperature: float = 1.0


def predictions_filename(split: str) -> str:
    """``predictions.csv`` for the test split, ``predictions_<split>.csv`` for the others."""
    return PREDICTIONS_CSV if split == "test" else f"predictions_{split}.csv"


def write_metrics_csv(path: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Write the per-epoch training history (one row per epoch, columns in first-seen order) atomically."""
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
    atomic_write_text(Path(path), buffer.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The per-epoch history of ``run_dir/metrics.csv`` as a list of rows (empty when absent)."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module of a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_run_weights(
    model: nn.Module | Mapping[str, torch.Tensor], path: str | Path, dtype: torch.dtype | str | None = None
) -> None:
    """Save a model's ``state_dict`` as safetensors, atomically.

    Args:
        model: the model (a DDP wrapper is unwrapped) or a state dict.
        path: target ``.safetensors`` file.
        dtype: cast floating-point tensors to this dtype (e.g. ``torch.float16`` for a small
            export); ``"int8"`` stores matrices and kernels as per-channel int8
            (:mod:`medvit.models.storage`); ``None`` keeps each tensor's dtype.
    """
    state = model if isinstance(model, Mapping) else _unwrap(model).state_dict()
    if dtype == "int8":
        tensors, metadata = quantize(state)
    else:
        tensors, metadata = {}, {"format": "pt"}
        for name, tensor in state.items():
            tensor = tensor.detach().to("cpu")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensors[name] = tensor.clone().contiguous()  # clone: safetensors refuses shared storage
    atomic_save(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_run_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The float ``state_dict`` in a weights file (int8 storage dequantized).

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: not a readable safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the run has no saved weights (did training finish an epoch?)")
    tensors, metadata = read_safetensors(path, fix="re-export or retrain the run")
    return dequantize(tensors, metadata)


def load_run_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors ``state_dict`` into ``model`` (strict), casting to the model's dtype.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: the file is not a readable safetensors file or its keys/shapes do not match.
    """
    path = Path(path)
    state = read_run_weights(path)
    reference = model.state_dict()
    for name, tensor in state.items():
        if name in reference and tensor.is_floating_point() and reference[name].is_floating_point():
            state[name] = tensor.to(reference[name].dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match the model described in model.json ({error}); "
            "the run directory is inconsistent"
        ) from error
    return model


def write_model_info(run_dir: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``RUN/model.json`` atomically (indented JSON): the one writer of the file, for every kind of run.

    Training, pretraining, calibration, external evaluation, cross-validation and the demo export
    all write through here, so a reader never sees half a file.
    """
    path = Path(run_dir) / MODEL_JSON
    atomic_write_text(path, json.dumps(dict(info), indent=2))
    return path


def read_model_info(path: str | Path) -> dict[str, Any]:
    """Read and check ``model.json`` of a run directory.

    Raises:
        FileNotFoundError: the directory or its ``model.json`` is missing.
        ValueError: ``model.json`` is not valid JSON or lacks a required key.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} not found; train one with 'medvit train --out {path}'")
    info_path = path / MODEL_JSON
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: {path} is not a medvit run directory (see 'medvit train')")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{info_path}: not valid JSON ({error}); the run directory is corrupt") from error
    if isinstance(info, dict) and info.get("kind") == "pretrain":  # medvit.models.pretrained.PRETRAIN_KIND
        raise ValueError(
            f"{path} is a pretrain run (medvit pretrain), not a fine-tuned one: it holds a backbone without a "
            f"classifier; pass a 'medvit train' run, or fine-tune from it with --set pretrained={path}"
        )
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected a JSON object, got {type(info).__name__}; the run directory is corrupt")
    try:
        core = build_config(_RunInfoCore, {k: info[k] for k in _CORE_KEYS if k in info}, noun="model.json key")
        for name in ("mean", "std"):
            if len(getattr(core, name)) != 3:
                raise ValueError(f"model.json key '{name}': expected three numbers (R, G, B), got {info.get(name)!r}")
        if not core.class_names:
            raise ValueError("model.json key 'class_names': the list is empty")
    except ValueError as error:
        raise ValueError(f"{info_path}: {error}; the run directory is corrupt") from error
    return info


DEFAULT_MONITORED_METRIC = "val_balanced_accuracy"
"""The validation metric that chooses a run's kept epoch when its config names none (the engine's default)."""


def metric_improves(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (``None``: nothing yet): the rule that keeps an epoch.

    Losses (a name ending in ``loss``) are minimised, every other metric maximised; NaN never improves,
    ties do not.
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


def kept_epoch(history: Sequence[Mapping[str, float]], metric: str = "val_loss") -> int:
    """Index (0-based) of the epoch whose weights ``best.safetensors`` holds, from :func:`read_metrics`.

    The engine's rule (:func:`metric_improves`): the first epoch that improves ``metric`` is kept (losses are minimised, NaN or a missing value never improves); the last
    epoch when none did.

    Raises:
        ValueError: the history is empty.
        KeyError: ``metric`` is not a column of the history.
    """
    if not history:
        raise ValueError("the training history (metrics.csv) has no epochs; train the run first")
    if not any(metric in row for row in history):
        raise UnknownNameError(f"no column {metric!r} in metrics.csv; logged: {', '.join(history[0])}")
    best, kept = None, len(history) - 1
    for index, row in enumerate(history):
        value = row.get(metric, float("nan"))
        if metric_improves(metric, value, best):
            best, kept = value, index
    return kept


def monitored_metric(config: Mapping[str, Any]) -> str:
    """The ``early_stopping.metric`` of a run's config, which chose its kept epoch (the engine's default if unset)."""
    return str((config.get("early_stopping") or {}).get("metric", DEFAULT_MONITORED_METRIC))


def training_seconds(history: Sequence[Mapping[str, float]]) -> float | None:
    """Wall-clock training time: the sum of the engine's ``epoch_time_s`` column; ``None`` when not logged."""
    times = [row["epoch_time_s"] for row in history if "epoch_time_s" in row]
    return float(sum(times)) if times else None


def split_sizes(info: Mapping[str, Any]) -> dict[str, int]:
    """Images per split from ``model.json``'s ``manifest_counts`` (``{class: {split: n}}`` plus ``total``).

    Returns ``{}`` when the counts were not recorded.
    """
    counts = info.get("manifest_counts")
    if not isinstance(counts, Mapping) or not counts:
        return {}
    totals = counts.get("total")
    if not isinstance(totals, Mapping):
        totals = {}
        for per_split in counts.values():
            for split, n in (per_split or {}).items():
                totals[split] = totals.get(split, 0) + int(n)
    return {str(split): int(n) for split, n in totals.items() if split != "total"}


def read_model_header(path: str | Path) -> tuple[str, str, str]:
    """(dataset, model name, kind) of a run directory's ``model.json``; ``("", "", "")`` when it is unreadable.

    ``kind`` is ``"pretrain"`` for a ``medvit pretrain`` run and ``""`` for a training run (no such key).
    """
    try:
        info = json.loads((Path(path) / MODEL_JSON).read_text())
        return str(info.get("dataset", "")), str(info.get("model", "")), str(info.get("kind", ""))
    except (OSError, ValueError, AttributeError):
        return "", "", ""


def write_selection(folder: str | Path, selection: Mapping[str, Any]) -> Path:
    """Write ``FOLDER/selection.json`` atomically: the one writer of an embedded model's selection record
    (:func:`medvit.demo.export.export_demo_model` and :func:`~medvit.demo.export.mark_defaults`)."""
    path = Path(folder) / SELECTION_JSON
    atomic_write_text(path, json.dumps(dict(selection), indent=2) + "\n")
    return path


def read_selection(path: str | Path) -> dict[str, Any]:
    """``selection.json`` of an embedded demo model (which candidate was chosen and why); ``{}`` when absent."""
    file = Path(path) / SELECTION_JSON
    try:
        selection = json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}
    return selection if isinstance(selection, dict) else {}


def read_config(path: str | Path) -> dict[str, Any]:
    """A run's resolved ``config.yaml`` as a dict (empty when the file is absent, e.g. a bare export).

    Raises:
        ValueError: ``config.yaml`` is not valid YAML.
    """
    config_path = Path(path) / CONFIG_YAML
    if not config_path.is_file():
        return {}
    try:
        return yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{config_path}: not valid YAML ({error}); the run directory is corrupt") from error


def cv_members(info: Mapping[str, Any]) -> list[str]:
    """The member folders of a cross-validated run's final predictor (``model.json["cv"]["members"]``):
    the K fold runs of an ensemble, or the one refit; ``[]`` for an ordinary run."""
    return [str(m) for m in ((info.get("cv") or {}).get("members") or [])]


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: the model (``best.safetensors``, eval mode) and its description.

    A cross-validated run (:mod:`medvit.workflows.cv`) loads its final predictor: the refit member, or the
    fold models as one :class:`~medvit.models.ensemble.FoldEnsemble` with the temperature fitted on
    their out-of-fold predictions inside it (the run's own ``temperature`` is then 1).

    Args:
        path: run directory written by ``medvit train`` (or ``medvit export``).
        device: where to put the model.

    Returns:
        A :class:`Run`.

    Raises:
        FileNotFoundError: the directory, ``model.json`` or ``best.safetensors`` is missing.
        ValueError: a corrupt ``model.json``/``best.safetensors`` or weights that do not fit the model.
    """
    path = Path(path)
    info = read_model_info(path)
    config = read_config(path)
    class_names = [str(c) for c in info["class_names"]]

    def network(folder: Path) -> nn.Module:
        model = create_model(info["model"], num_classes=len(class_names), **info.get("model_kwargs", {}))
        return load_run_weights(model, folder / BEST_WEIGHTS)

    temperature = float((info.get("calibration") or {}).get("temperature", 1.0))
    members = cv_members(info)
    if not members:
        model = network(path)
    elif len(members) == 1:  # a refit on train+val
        model = network(path / members[0])
    else:
        member_temperature = float((info.get("calibration") or {}).get("member_temperature", 1.0))
        model = FoldEnsemble([network(path / member) for member in members], temperature=member_temperature)
    model.to(device).eval()
    return Run(
        path=path,
        model=model,
        model_name=info["model"],
        class_names=class_names,
        image_size=tuple(int(s) for s in info["image_size"]),
        mean=tuple(float(m) for m in info["mean"]),
        std=tuple(float(s) for s in info["std"]),
        dataset=str(info.get("dataset", "")),
        preset=str(info.get("preset", "")),
        info=info,
        config=config,
        temperature=temperature,
    )


def export_run(
    run_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | str = torch.float16
) -> Path:
    """Copy a run's description and report, with ``best.safetensors`` cast to ``dtype`` (or ``"int8"``).

    Copies ``model.json``, ``config.yaml``, ``metrics.csv``, ``predictions.csv``, ``predictions_val.csv``
    (what ``medvit calibrate`` fits on) and ``report/``
    (those present) and writes ``best.safetensors`` in ``dtype`` (fp16 halves the size; ``load_run``
    casts back to the model's dtype). Training state (``last*``) is not exported. A cross-validated run
    also copies ``predictions_oof.csv``, ``folds.csv`` and each fold run's records (model, config, metrics,
    predictions), with the weights of its final predictor's members only (the K folds, or the refit).

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_run` for a missing or corrupt run.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_model_info(run_dir)
    members = cv_members(info)
    weight_dirs = [run_dir / member for member in members] if members else [run_dir]
    for folder in weight_dirs:
        if not (folder / BEST_WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder / BEST_WEIGHTS} not found; the run has no best checkpoint to export")
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"export target {out_dir} is the run directory itself; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (MODEL_JSON, CONFIG_YAML, METRICS_CSV, PREDICTIONS_CSV, predictions_filename("val"))
    for name in names + ((predictions_filename(OOF_SPLIT), FOLDS_CSV) if members else ()):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    if (run_dir / REPORT_DIR).is_dir():
        shutil.copytree(run_dir / REPORT_DIR, out_dir / REPORT_DIR, dirs_exist_ok=True)
    cv = info.get("cv") or {}
    for member in dict.fromkeys([*cv.get("fold_runs", []), *members]):  # a cross-validated run's members' records
        (out_dir / member).mkdir(exist_ok=True)
        for name in names:
            if (run_dir / member / name).is_file():
                shutil.copy2(run_dir / member / name, out_dir / member / name)
    for folder in weight_dirs:
        target = out_dir / folder.relative_to(run_dir) / BEST_WEIGHTS
        save_run_weights(read_run_weights(folder / BEST_WEIGHTS), target, dtype=dtype)
    _logger.info("exported %s -> %s (%s weights)", run_dir, out_dir, str(dtype).replace("torch.", ""))
    return out_dir
