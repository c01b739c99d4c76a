"""Subgroup breakdowns: is the model worse for some patients (sex, age band, body site, image source, eye)?

For each value of a reporting-only manifest column: recall (sensitivity of the dataset's clinical
question at the predicted class; macro recall when there is no question), balanced accuracy and
AUROC (of the question's score; macro one-vs-rest without one), each with a stratified bootstrap CI.
Groups under ``min_size`` images get their point values and count but no CI, and are not eligible
as the "worst group"; with a clinical question, the same holds for recall and AUROC of a group with
fewer than ``min_size`` positives. Point values are scikit-learn's; the resamples reuse the vectorised
confusion-matrix and rank-AUROC code of :mod:`medvit.metrics.classification`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from medvit.metrics.bootstrap import Estimate, json_clean, percentile_interval, stratified_bootstrap_indices
from medvit.metrics.classification import bootstrap_auroc, confusion_matrices, scores_from_confusion

__all__ = ["AGE_BANDS", "GroupMetrics", "SubgroupTable", "age_bands", "subgroup_table"]

AGE_BANDS = (0, 20, 40, 60, 80)
"""Lower edges of the age bands (years): 0-19, 20-39, 40-59, 60-79, 80+."""
MIN_GROUP_SIZE = 10
METRICS = ("recall", "balanced_accuracy", "auroc")
_POSITIVE_METRICS = ("recall", "auroc")


def age_bands(ages: Sequence[Any]) -> list[str]:
    """Age in years -> ``"40-59"`` style bands (:data:`AGE_BANDS`); missing or unreadable -> ``"unknown"``."""
    values = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    edges = list(AGE_BANDS)
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]
    out = []
    for age in values:
        if np.isnan(age) or age < 0:
            out.append("unknown")
        else:
            out.append(names[int(np.searchsorted(edges, age, side="right")) - 1])
    return out


@dataclass
class GroupMetrics:
    """One subgroup: its size and the three metrics (no CI when ``n < min_size``)."""

    value: str
    n: int
    n_positive: int
    recall: Estimate
    balanced_accuracy: Estimate
    auroc: Estimate
    small: bool


@dataclass
class SubgroupTable:
    """All groups of one column, and the worst eligible group per metric (``None`` if none)."""

    column: str
    groups: list[GroupMetrics]
    worst: dict[str, str | None] = field(default_factory=dict)
    min_size: int = MIN_GROUP_SIZE

    def to_dict(self) -> dict[str, Any]:
        return json_clean(asdict(self))


def _point(labels: np.ndarray, probs: np.ndarray, positive_labels: np.ndarray | None) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():  # a small group often lacks some predicted classes: expected, not news
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        out = {"balanced_accuracy": float(balanced_accuracy_score(labels, pred))}
    if positive_labels is None:
        present = np.unique(labels)
        out["recall"] = float(recall_score(labels, pred, labels=present, average="macro", zero_division=0))
        aurocs = [roc_auc_score(labels == c, probs[:, c]) for c in present] if present.size > 1 else []
        out["auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
        return out
    positive = np.isin(labels, positive_labels)
    called = np.isin(pred, positive_labels)
    score = probs[:, positive_labels].sum(axis=1)
    out["recall"] = float((called & positive).sum() / positive.sum()) if positive.any() else float("nan")
    out["auroc"] = float(roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else float("nan")
    return out


def _resampled(labels: np.ndarray, probs: np.ndarray, positive_labels: np.ndarray | None, idx: np.ndarray) -> dict[str, np.ndarray]:
    K = probs.shape[1]
    pred = probs.argmax(axis=1)
    scores = scores_from_confusion(confusion_matrices(labels[idx], pred[idx], K))
    out = {"balanced_accuracy": scores["balanced_accuracy"]}
    if positive_labels is None:
        present = np.unique(labels)
        out["recall"] = scores["recall"][:, present].mean(axis=1)
        out["auroc"] = np.nanmean(bootstrap_auroc(probs, labels, idx)[:, present], axis=1) if present.size > 1 else np.full(idx.shape[0], np.nan)
        return out
    positive = np.isin(labels, positive_labels)
    called = np.isin(pred, positive_labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["recall"] = (called[idx] & positive[idx]).sum(axis=1) / positive[idx].sum(axis=1)
    score = probs[:, positive_labels].sum(axis=1)
    out["auroc"] = bootstrap_auroc(np.stack([1 - score, score], axis=1), positive.astype(np.int64), idx)[:, 1]
    return out


def subgroup_table(
    labels: np.ndarray,
    probabilities: np.ndarray,
    groups: Sequence[Any],
    column: str,
    positive_labels: Sequence[int] | None = None,
    min_size: int = MIN_GROUP_SIZE,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> SubgroupTable:
    """Per-group recall, balanced accuracy and AUROC of one reporting column.

    Args:
        labels: (N,) true classes.
        probabilities: (N, K) class probabilities.
        groups: (N,) the column's value per image (``""``/NaN become ``"unknown"``).
        column: the column's name (``sex``, ``age band``...).
        positive_labels: class indices of the clinical question's "yes" (``None``: macro scores).
        min_size: smaller groups get no CI and cannot be the worst group.
        n_bootstrap, confidence, seed: the stratified bootstrap.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    values = pd.Series(list(groups), dtype=object).fillna("unknown").astype(str).replace("", "unknown").to_numpy()
    if values.size != labels.size:
        raise ValueError(f"subgroup column {column!r} has {values.size} values for {labels.size} images")
    pos = None if positive_labels is None else np.asarray(list(positive_labels), dtype=np.int64)
    rows: list[GroupMetrics] = []
    for value in sorted(set(values)):
        members = np.flatnonzero(values == value)
        y, p = labels[members], probabilities[members]
        point = _point(y, p, pos)
        small = members.size < min_size
        boot = {}
        if not small and n_bootstrap > 0:
            boot = _resampled(y, p, pos, stratified_bootstrap_indices(y, n_bootstrap, seed))
        n_positive = int(np.isin(y, pos).sum()) if pos is not None else 0
        few_positives = pos is not None and n_positive < min_size  # recall and AUROC rest on the positives
        estimates = {
            key: Estimate(point[key], *percentile_interval(boot[key], confidence))
            if boot and not (few_positives and key in _POSITIVE_METRICS) else Estimate(point[key])
            for key in METRICS
        }
        rows.append(GroupMetrics(str(value), int(members.size), n_positive, small=small, **estimates))
    worst: dict[str, str | None] = {}
    for key in METRICS:
        eligible = [
            g for g in rows
            if not g.small and not np.isnan(getattr(g, key).value)
            and not (pos is not None and key in _POSITIVE_METRICS and g.n_positive < min_size)
        ]
        worst[key] = min(eligible, key=lambda g: getattr(g, key).value).value if len(eligible) > 1 else None
    return SubgroupTable(column, rows, worst, min_size)
