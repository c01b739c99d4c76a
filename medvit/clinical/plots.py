"""Plots of the clinical report: reliability diagram and the ROC of the clinical question with its operating points."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure  # pyplot-free: no global backend or figure state
from sklearn.calibration import calibration_curve
from sklearn.metrics import RocCurveDisplay

__all__ = ["plot_operating_points", "plot_reliability"]


def _reliability_panel(ax: Any, bins: Mapping[str, Any], title: str) -> None:
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
    confidence = np.array([np.nan if c is None else c for c in bins["confidence"]], dtype=float)
    counts = np.asarray(bins["counts"])
    ax.bar(edges[:-1], np.nan_to_num(accuracy), width=width, align="edge", color="tab:blue", alpha=0.7,
           edgecolor="white", label="accuracy")
    filled = counts > 0
    ax.scatter(confidence[filled], accuracy[filled], color="tab:red", s=14, zorder=3, label="mean confidence")
    for left, w, acc, n in zip(edges[:-1], width, accuracy, counts):
        if n:
            ax.text(left + w / 2, min(np.nan_to_num(acc) + 0.02, 0.97), str(int(n)), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7)


def plot_reliability(
    path: Path,
    panels: Sequence[tuple[str, Mapping[str, Any]]],
    question: tuple[str, np.ndarray, np.ndarray] | None = None,
    n_bins: int = 15,
) -> None:
    """Reliability diagram(s): per confidence bin, accuracy (bars, image count on top) and mean confidence.

    Args:
        path: PNG to write.
        panels: ``(title, bins)`` per panel, bins as :class:`medvit.metrics.calibration.ReliabilityBins` dicts.
        question: ``(name, is_positive, score)`` adds scikit-learn's ``calibration_curve`` of the
            clinical question's score.
        n_bins: bins of the question's curve.
    """
    n = len(panels) + (question is not None)
    fig = Figure(figsize=(4.6 * n, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (title, bins) in zip(axes, panels):
        _reliability_panel(ax, bins, title)
    if question is not None:
        name, positive, score = question
        ax = axes[-1]
        observed, predicted = calibration_curve(positive, score, n_bins=n_bins, strategy="uniform")
        ax.plot(predicted, observed, marker="o", color="tab:purple")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"predicted P({name})")
        ax.set_ylabel(f"observed fraction {name}")
        ax.set_title(f"{name}: score calibration (after scaling)", fontsize=10)
    fig.savefig(path, dpi=110)


def plot_operating_points(
    path: Path, name: str, positive: np.ndarray, score: np.ndarray, points: Sequence[Mapping[str, Any]], auroc: float
) -> None:
    """ROC of the clinical question on test, with each validation-chosen threshold marked where it lands."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    RocCurveDisplay.from_predictions(positive, score, name=name, ax=ax)  # the legend adds "(AUC = 0.81)"
    markers = "os^Dv"
    for i, point in enumerate(points):
        sens, spec = point["sensitivity"]["value"], point["specificity"]["value"]
        if sens is None or spec is None:
            continue
        label = f"{point['point']['description']} (t={point['point']['threshold']:.3f})"
        ax.plot(1 - spec, sens, markers[i % len(markers)], markersize=8, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{name} vs not (AUROC {auroc:.3f}): thresholds from validation", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.savefig(path, dpi=120)
