"""Embedding a demo model (``medvit demo-export``): the best of several runs on validation, small weights.

:func:`validation_score` reads a run's validation metric at the epoch it kept
(:func:`medvit.run_dir.kept_epoch` over :func:`~medvit.run_dir.read_metrics`);
:func:`export_demo_model` compares candidates on it, stores the chosen weights (per-channel int8 by
default), measures them again as stored (validation and test predictions, calibration, report) and
writes ``selection.json``; :func:`mark_defaults` makes each dataset's best embedded model on
validation the page's default.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from medvit.boundary.predictions import read_predictions_file
from medvit.clinical.calibrate import calibrate_run
from medvit.errors import UnknownNameError
from medvit.hashing import sha256_file
from medvit.metrics import compute_metrics
from medvit.models.pretrained import describe_pretrained
from medvit.report import read_summary, summary_estimate, write_report
from medvit.run_dir import (
    BEST_WEIGHTS,
    CONFIG_YAML,
    METRICS_CSV,
    MODEL_JSON,
    REPORT_DIR,
    SELECTION_JSON,
    ReportFiles,
    atomic_write_text,
    cv_members,
    export_run,
    kept_epoch,
    monitored_metric,
    predictions_filename,
    read_config,
    read_metrics,
    read_model_info,
    read_selection,
    write_model_info,
    write_selection,
)
from medvit.train.evaluate import evaluate_run
from medvit.train.probabilities import probability_columns
from medvit.workflows.cv import chosen_epochs

__all__ = ["validation_score", "export_demo_model", "mark_defaults", "portable_config"]

_PATH_KEYS = ("manifest", "root", "pretrained")
_SPLIT_WORDS = {"val": "validation", "oof": "out-of-fold"}

_logger = logging.getLogger(__name__)


def _describe_how(config: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """One phrase for how a run was trained, from its ``config.yaml`` (and ``model.json``)."""
    described = (info or {}).get("pretrained_description")
    pretrained = config.get("pretrained")
    if pretrained and isinstance(pretrained, str) and not pretrained.startswith(("bundled:", "hf-hub:")) and described:
        how = f"fine-tuned (all layers) from weights {described}"
    elif config.get("pretrained"):
        mode = str(config.get("mode", "full"))
        if mode == "full":
            how = "fine-tuned (all layers) from ImageNet weights"
        elif mode == "linear":
            how = "linear probe (classifier only) on ImageNet weights"
        else:
            how = f"fine-tuned from ImageNet weights, stem and stages 1-{mode.partition(':')[2]} frozen"
    else:
        how = "trained from scratch"
    if config.get("ordinal_labels"):
        how += f" on SORD ordinal soft labels (scale {config['ordinal_labels']})"
    cv = (info or {}).get("cv")
    if cv:
        how += f", {cv['folds']}-fold cross-validated ({'fold ensemble' if cv.get('final') == 'ensemble' else 'refit on train+val'})"
    distill = config.get("distill") or {}
    if distill.get("teacher"):
        how += (
            f", distilled from {Path(str(distill['teacher'])).name} "
            f"(DeiT soft targets, T={distill.get('temperature')}, alpha={distill.get('alpha')})"
        )
    return how


def validation_score(
    run: str | Path, metric: str = "macro_f1", config: Mapping[str, Any] | None = None
) -> tuple[float, int]:
    """Validation ``metric`` of a run at the epoch whose weights it kept (``best.safetensors``).

    Reads ``metrics.csv`` and, from ``config`` (default: the run's ``config.yaml``), the
    ``early_stopping.metric`` that chose the kept epoch (:func:`medvit.run_dir.kept_epoch`: the first
    best row, as the engine keeps it; ``val_loss`` is minimised).

    Returns:
        (score, epoch): ``val_{metric}`` of that epoch and the epoch number (1-based).

    Raises:
        FileNotFoundError: ``metrics.csv`` is missing or empty.
        KeyError: ``val_{metric}`` is not a column of ``metrics.csv``.
    """
    run = Path(run)
    info = read_model_info(run)
    if info.get("cv"):
        return _out_of_fold_score(run, info, metric)
    history = read_metrics(run)
    if not history:
        raise FileNotFoundError(f"{run / METRICS_CSV} not found or empty; is {run} a finished 'medvit train' run?")
    column = f"val_{metric}"
    if column not in history[0]:
        choices = ", ".join(c[len("val_"):] for c in history[0] if c.startswith("val_"))
        raise UnknownNameError(f"{run / METRICS_CSV}: no column {column!r}; choose --metric from {choices}")
    config = read_config(run) if config is None else config
    kept = kept_epoch(history, monitored_metric(config))
    return float(history[kept].get(column, float("nan"))), kept + 1


def _out_of_fold_score(run: Path, info: Mapping[str, Any], metric: str) -> tuple[float, int]:
    """A cross-validated run's ``metric`` on its out-of-fold predictions and the epochs of its final predictor
    (the refit's, or the median of the folds' kept epochs)."""

    names = [str(c) for c in info["class_names"]]
    frame = read_predictions_file(run / predictions_filename("oof"), names)
    probs = probability_columns(frame, names)
    summary = compute_metrics(frame["label"].to_numpy(), probs, names, bool(info.get("is_ordinal")), n_bootstrap=0).summary()
    if metric not in summary:
        raise KeyError(f"{run}: out-of-fold {metric!r} is not computed; choose --metric from {', '.join(summary)}")
    cv = info["cv"]
    return float(summary[metric]), int(cv.get("refit_epochs") or chosen_epochs(cv["best_epochs"]))


def export_demo_model(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    metric: str = "macro_f1",
    default: bool = False,
    dtype: torch.dtype | str = "int8",
    remeasure: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Embed the best of several candidate runs as a demo model, with small weights measured as stored.

    The candidates are compared on their **validation** ``metric`` at the epoch each kept
    (:func:`validation_score`), never on the test split, so the test scores on the model card stay
    unbiased by the choice. Every candidate must have ``metrics.csv`` and ``report/summary.json``
    (``medvit report``; its test score is recorded beside the validation score). The chosen run is
    exported with :func:`medvit.run_dir.export_run` (paths in its config made portable), measured
    again as stored, and ``selection.json`` in ``out_dir`` records every candidate's scores, how it
    was trained and which was chosen, so the model card can say it.

    Args:
        runs: candidate run directories.
        out_dir: the embedded model's folder (e.g. ``medvit/assets/demo_models/busi_vvt_tiny``).
        metric: metric to maximise, a ``val_*`` column of ``metrics.csv`` without ``val_`` (e.g.
            ``macro_f1``, ``balanced_accuracy``, ``macro_auroc``).
        default: mark this model as its dataset's default on the page (see also :func:`mark_defaults`).
        dtype: weight storage: ``"int8"`` (per-channel, :mod:`medvit.models.storage`) or a torch dtype.
        remeasure: predict validation and test again with the stored weights, calibrate and rewrite
            the report (:func:`remeasure_stored_weights`; needs the run's data).
        device: for the re-measurement.

    Returns:
        The selection record written to ``selection.json``.

    Raises:
        FileNotFoundError: a candidate, its ``metrics.csv`` or its ``report/summary.json`` is missing.
        KeyError: ``metric`` is not logged for a candidate.
    """
    if not runs:
        raise ValueError("demo-export needs at least one candidate run directory")
    candidates = []
    for run in map(Path, runs):
        summary = read_summary(run)
        if summary is None:
            raise FileNotFoundError(
                f"{run / REPORT_DIR / ReportFiles.summary_json} not found; run 'medvit report {run}' first"
            )
        config = read_config(run)
        info = read_model_info(run)
        score, epoch = validation_score(run, metric, config)
        test = summary_estimate(summary, metric)
        candidates.append({
            "run": run.name,
            "score": score,
            "epoch": epoch,
            "test_score": None if test is None else test["value"],
            "how": _describe_how(config, info),
        })
    best = max(range(len(candidates)), key=lambda i: candidates[i]["score"])
    out_dir = Path(out_dir)
    export_run(Path(runs[best]), out_dir, dtype=dtype)
    _make_portable(out_dir)
    if remeasure:
        remeasure_stored_weights(out_dir, device=device)
    chosen_info = read_model_info(out_dir)
    selection = {
        "chosen": candidates[best]["run"],
        "how": candidates[best]["how"],
        "metric": metric,
        "split": "oof" if chosen_info.get("cv") else "val",
        "score": candidates[best]["score"],
        "candidates": candidates,
        "default": bool(default),
        "storage": str(dtype).replace("torch.", ""),
        "weights_sha256": _weights_sha256(out_dir, chosen_info),
    }
    write_selection(out_dir, selection)
    _logger.info("embedded %s as %s (%s %s = %.4f)", runs[best], out_dir, _SPLIT_WORDS[selection["split"]], metric,
                 candidates[best]["score"])
    return selection


def _weights_sha256(out_dir: Path, info: Mapping[str, Any]) -> str | dict[str, str]:
    """sha256 of the stored weights: one file, or ``{member: sha256}`` for a cross-validated run."""
    members = cv_members(info)
    if not members:
        return sha256_file(out_dir / BEST_WEIGHTS)
    return {member: sha256_file(out_dir / member / BEST_WEIGHTS) for member in members}


def portable_config(config: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """``config`` with absolute paths (manifest, root, pretrained, distill.teacher) made relative to ``base``.

    Nothing embedded may hold a path of the machine it was made on; relative paths keep working
    from a checkout (``base`` defaults to the current directory, where ``make demo-models`` runs).
    """
    base = Path.cwd() if base is None else base

    def relative(value: Any) -> Any:
        if isinstance(value, str) and os.path.isabs(value):
            return os.path.relpath(value, base)
        return value

    out = {k: relative(v) if k in _PATH_KEYS else v for k, v in config.items()}
    if isinstance(out.get("distill"), Mapping):
        out["distill"] = {k: relative(v) if k == "teacher" else v for k, v in out["distill"].items()}
    return out


def _make_portable(out_dir: Path) -> None:
    import yaml

    config_path, info_path = out_dir / CONFIG_YAML, out_dir / MODEL_JSON
    for path in [config_path, *sorted(out_dir.glob(f"*/{CONFIG_YAML}"))]:  # with a cross-validated run's members
        if path.is_file():
            config = portable_config(yaml.safe_load(path.read_text()) or {})
            atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    for path in sorted(out_dir.glob(f"*/{MODEL_JSON}")):
        write_model_info(path.parent, portable_config(json.loads(path.read_text())))
    info = json.loads(info_path.read_text())
    if "pretrained_description" not in info:  # runs from before describe_pretrained existed
        try:
            info.update(describe_pretrained(info.get("pretrained"), str(info["model"])))
        except (FileNotFoundError, ValueError) as error:
            _logger.warning("%s: cannot describe the starting weights (%s)", out_dir, error)
    write_model_info(out_dir, portable_config(info))


def remeasure_stored_weights(out_dir: str | Path, device: str = "auto") -> None:
    """Predict validation and test with the weights as stored, fit the calibration, rewrite the report.

    Every figure of the embedded model's card then describes the file the page loads (int8 storage
    moves probabilities slightly), not the float weights it was exported from.
    """
    out_dir = Path(out_dir)
    config = read_config(out_dir)
    if read_model_info(out_dir).get("cv"):
        # Cross-validated: the calibration is fitted on the copied out-of-fold predictions (re-predicting them
        # needs each fold's manifest); test is predicted again through the stored members, after it.
        calibrate_run(out_dir, device=device)
        evaluate_run(out_dir, split="test", device=device, replace=True)
        write_report(out_dir, split="test", n_bootstrap=int(config.get("n_bootstrap", 1000)), seed=int(config.get("seed", 0)))
        return
    for split in ("val", str(config.get("eval_split", "test"))):
        evaluate_run(out_dir, split=split, device=device, replace=True)  # the copied float-weight predictions
    calibrate_run(out_dir, device=device)
    write_report(out_dir, split=str(config.get("eval_split", "test")), n_bootstrap=int(config.get("n_bootstrap", 1000)),
                 seed=int(config.get("seed", 0)))


def mark_defaults(embedded_dir: str | Path, metric: str = "balanced_accuracy") -> dict[str, str]:
    """Make each dataset's best embedded model on **validation** its default on the page.

    The score is ``metric`` of the stored weights on the validation split (``predictions_val.csv``,
    written by :func:`remeasure_stored_weights`); ``selection.json`` of every model records whether
    it is the default and the score that decided. Returns ``{dataset: model folder name}``.
    """
    scores: dict[str, list[tuple[float, Path]]] = {}
    for folder in sorted(Path(embedded_dir).iterdir()):
        if not (folder / SELECTION_JSON).is_file():
            continue
        info = read_model_info(folder)
        names = [str(c) for c in info["class_names"]]
        frame = read_predictions_file(folder / predictions_filename("oof" if info.get("cv") else "val"), names)
        probs = probability_columns(frame, names)
        summary = compute_metrics(frame["label"].to_numpy(), probs, names, bool(info.get("is_ordinal")), n_bootstrap=0).summary()
        scores.setdefault(str(info.get("dataset", "")), []).append((float(summary[metric]), folder))
    chosen = {}
    for dataset, entries in scores.items():
        best = max(entries, key=lambda e: e[0])[1]
        chosen[dataset] = best.name
        for score, folder in entries:
            selection = read_selection(folder)
            selection.update(default=folder == best, default_metric=f"val_{metric}", default_score=score)
            write_selection(folder, selection)
    return chosen
