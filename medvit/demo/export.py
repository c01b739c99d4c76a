"""Embedding a demo model (``medvit demo-export``): the best of several runs on validation, fp16 weights.

:func:`validation_score` reads a run's validation metric at the epoch it kept
(:func:`medvit.run_dir.kept_epoch` over :func:`~medvit.run_dir.read_metrics`);
:func:`export_demo_model` compares candidates on it and writes ``selection.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from medvit.hashing import sha256_file
from medvit.report import read_summary, summary_estimate
from medvit.run_dir import (
    BEST_WEIGHTS,
    METRICS_CSV,
    REPORT_DIR,
    SELECTION_JSON,
    ReportFiles,
    atomic_write_text,
    export_run,
    kept_epoch,
    read_config,
    read_metrics,
)

__all__ = ["validation_score", "export_demo_model"]

_logger = logging.getLogger(__name__)

_DEFAULT_MONITOR = "val_loss"  # EarlyStoppingConfig.metric's default


def _describe_how(config: Mapping[str, Any]) -> str:
    """One phrase for how a run was trained, from its ``config.yaml``."""
    if config.get("pretrained"):
        mode = str(config.get("mode", "full"))
        if mode == "full":
            how = "fine-tuned (all layers) from ImageNet weights"
        elif mode == "linear":
            how = "linear probe (classifier only) on ImageNet weights"
        else:
            how = f"fine-tuned from ImageNet weights, stem and stages 1-{mode.partition(':')[2]} frozen"
    else:
        how = "trained from scratch"
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
    history = read_metrics(run)
    if not history:
        raise FileNotFoundError(f"{run / METRICS_CSV} not found or empty; is {run} a finished 'medvit train' run?")
    column = f"val_{metric}"
    if column not in history[0]:
        choices = ", ".join(c[len("val_"):] for c in history[0] if c.startswith("val_"))
        raise KeyError(f"{run / METRICS_CSV}: no column {column!r}; choose --metric from {choices}")
    config = read_config(run) if config is None else config
    monitor = (config.get("early_stopping") or {}).get("metric", _DEFAULT_MONITOR)
    kept = kept_epoch(history, monitor)
    return float(history[kept].get(column, float("nan"))), kept + 1


def export_demo_model(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    metric: str = "macro_f1",
    default: bool = False,
) -> dict[str, Any]:
    """Embed the best of several candidate runs as a demo model, with fp16 weights.

    The candidates are compared on their **validation** ``metric`` at the epoch each kept
    (:func:`validation_score`), never on the test split, so the test scores on the model card stay
    unbiased by the choice. Every candidate must have ``metrics.csv`` and ``report/summary.json``
    (``medvit report``; its test score is recorded beside the validation score). The chosen run is
    exported with :func:`medvit.run_dir.export_run`, and ``selection.json`` in ``out_dir`` records
    every candidate's scores, how it was trained and which was chosen, so the model card can say it.
    With one candidate this is a plain fp16 export plus ``selection.json``.

    Args:
        runs: candidate run directories.
        out_dir: the embedded model's folder (e.g. ``app/demo_models/busi_vvt_tiny``).
        metric: metric to maximise, a ``val_*`` column of ``metrics.csv`` without ``val_`` (e.g.
            ``macro_f1``, ``balanced_accuracy``, ``macro_auroc``).
        default: mark this model as its dataset's default on the page.

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
        score, epoch = validation_score(run, metric, config)
        test = summary_estimate(summary, metric)
        candidates.append({
            "run": run.name,
            "score": score,
            "epoch": epoch,
            "test_score": None if test is None else test["value"],
            "how": _describe_how(config),
        })
    best = max(range(len(candidates)), key=lambda i: candidates[i]["score"])
    out_dir = Path(out_dir)
    export_run(Path(runs[best]), out_dir, dtype=torch.float16)
    selection = {
        "chosen": candidates[best]["run"],
        "how": candidates[best]["how"],
        "metric": metric,
        "split": "val",
        "score": candidates[best]["score"],
        "candidates": candidates,
        "default": bool(default),
        "weights_sha256": sha256_file(out_dir / BEST_WEIGHTS),
    }
    atomic_write_text(out_dir / SELECTION_JSON, json.dumps(selection, indent=2) + "\n")
    _logger.info("embedded %s as %s (validation %s = %.4f)", runs[best], out_dir, metric, candidates[best]["score"])
    return selection
