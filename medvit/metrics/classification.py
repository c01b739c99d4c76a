"""Per-class classification metrics with stratified bootstrap confidence intervals.

Point estimates come from scikit-learn (``precision_recall_fscore_support``,
``multilabel_confusion_matrix``, ``balanced_accuracy_score``, ``roc_auc_score``,
``cohen_kappa_score``). The bootstrap recomputes the same definitions for every resample at once:
one ``np.bincount`` builds all resampled confusion matrices, and AUROC uses the rank (Mann-Whitney)
form on a batch of resamples, so 1000 resamples take seconds. ``tests/test_metrics.py`` checks that
each resample agrees with scikit-learn.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medvit.metrics.bootstrap import Estimate, percentile_interval, stratified_bootstrap_indices

__all__ = [
    "Estimate",
    "ClassMetrics",
    "ClassificationMetrics",
    "compute_metrics",
    "confusion_matrices",
    "scores_from_confusion",
    "bootstrap_auroc",
]

_logger = logging.getLogger(__name__)

_CLASS_SCORES = ("precision", "recall", "specificity", "f1")


@dataclass
class ClassMetrics:
    """One-vs-rest metrics of one class."""

    name: str
    support: int
    precision: Estimate
    recall: Estimate
    specificity: Estimate
    f1: Estimate
    auroc: Estimate


@dataclass
class ClassificationMetrics:
    """All metrics of one evaluation.

    Attributes:
        class_names: class names in label order.
        n: number of evaluated images.
        per_class: one :class:`ClassMetrics` per class.
        macro: unweighted means over classes of precision, recall, specificity, f1.
        weighted: support-weighted means of the same.
        accuracy, balanced_accuracy, macro_auroc: overall scores.
        qwk: quadratic weighted kappa (ordinal datasets only, else ``None``).
        confusion: (K, K) counts, rows = true class, columns = predicted class.
        n_bootstrap, confidence, seed: how the intervals were computed.
    """

    class_names: list[str]
    n: int
    per_class: list[ClassMetrics]
    macro: dict[str, Estimate]
    weighted: dict[str, Estimate]
    accuracy: Estimate
    balanced_accuracy: Estimate
    macro_auroc: Estimate
    qwk: Estimate | None
    confusion: list[list[int]] = field(default_factory=list)
    n_bootstrap: int = 0
    confidence: float = 0.95
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (``nan`` becomes ``None``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and np.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(dataclasses.asdict(self))

    def summary(self) -> dict[str, float]:
        """Flat point estimates (what ``metrics.csv`` logs per epoch)."""
        out = {
            "accuracy": self.accuracy.value,
            "balanced_accuracy": self.balanced_accuracy.value,
            "macro_f1": self.macro["f1"].value,
            "macro_auroc": self.macro_auroc.value,
        }
        if self.qwk is not None:
            out["qwk"] = self.qwk.value
        return out


def confusion_matrices(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrices of a batch of resamples with one ``np.bincount``.

    Args:
        labels: (R, N) or (N,) true labels.
        predictions: same shape, predicted labels.
        num_classes: K.

    Returns:
        (R, K, K) int64 counts (rows true, columns predicted), or (K, K) for 1-D input.
    """
    squeeze = labels.ndim == 1
    labels = np.atleast_2d(labels)
    predictions = np.atleast_2d(predictions)
    R = labels.shape[0]
    offset = np.arange(R)[:, None] * num_classes * num_classes
    flat = offset + labels * num_classes + predictions
    cm = np.bincount(flat.ravel(), minlength=R * num_classes * num_classes)
    cm = cm.reshape(R, num_classes, num_classes)
    return cm[0] if squeeze else cm


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """scikit-learn's metric definitions, vectorised over a batch of confusion matrices.

    Args:
        cm: (R, K, K) counts, rows true, columns predicted.

    Returns:
        ``precision``, ``recall``, ``specificity``, ``f1`` as (R, K); ``accuracy``,
        ``balanced_accuracy``, ``macro_*``, ``weighted_*`` and ``qwk`` as (R,).
    """
    cm = cm.astype(np.float64)
    K = cm.shape[-1]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    fp = predicted - tp
    fn = support - tp
    tn = total[:, None] - tp - fp - fn
    out = {
        "precision": _safe_divide(tp, predicted),
        "recall": _safe_divide(tp, support),
        "specificity": _safe_divide(tn, tn + fp),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
    }
    out["accuracy"] = _safe_divide(tp.sum(axis=1), total)
    present = support > 0
    # balanced_accuracy_score: mean recall over the classes present in y_true
    out["balanced_accuracy"] = _safe_divide((out["recall"] * present).sum(axis=1), present.sum(axis=1))
    weights = _safe_divide(support, total[:, None])
    for name in _CLASS_SCORES:
        out[f"macro_{name}"] = out[name].mean(axis=1)
        out[f"weighted_{name}"] = (out[name] * weights).sum(axis=1)
    # cohen_kappa_score(weights="quadratic"): 1 - sum(w * O) / sum(w * E)
    grid = np.arange(K)
    w = (grid[:, None] - grid[None, :]) ** 2
    expected = _safe_divide(predicted[:, :, None] * support[:, None, :], total[:, None, None])
    num = (w * cm).sum(axis=(1, 2))
    den = (w * expected).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["qwk"] = np.where(den != 0, 1.0 - num / np.where(den != 0, den, 1.0), np.nan)
    return out


def bootstrap_auroc(
    probabilities: np.ndarray, labels: np.ndarray, idx: np.ndarray, chunk: int = 250
) -> np.ndarray:
    """One-vs-rest AUROC of every class for every resample (Mann-Whitney rank form).

    Args:
        probabilities: (N, K) class probabilities.
        labels: (N,) integer labels.
        idx: (R, N) resample indices from :func:`stratified_bootstrap_indices`.
        chunk: resamples ranked at once (bounds memory).

    Returns:
        (R, K) AUROC; ``nan`` for a class with no positives or no negatives.
    """
    R = idx.shape[0]
    K = probabilities.shape[1]
    out = np.full((R, K), np.nan)
    y = labels[idx[0]]  # identical in every row: the resampling is stratified
    for c in range(K):
        positive = y == c
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        for start in range(0, R, chunk):
            block = idx[start:start + chunk]
            ranks = rankdata(probabilities[block, c], axis=1)
            rank_sum = ranks[:, positive].sum(axis=1)
            out[start:start + chunk, c] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _auroc_point(probabilities: np.ndarray, labels: np.ndarray, c: int) -> float:
    positive = labels == c
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, probabilities[:, c]))


def compute_metrics(
    labels: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    is_ordinal: bool = False,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ClassificationMetrics:
    """Per-class and overall metrics of predicted probabilities, with bootstrap CIs.

    Args:
        labels: (N,) true class indices in ``[0, K)``.
        probabilities: (N, K) predicted class probabilities; the prediction is the argmax.
        class_names: K class names.
        is_ordinal: also compute quadratic weighted kappa (e.g. EyePACS DR grades).
        n_bootstrap: stratified bootstrap resamples (0: point estimates only).
        confidence: interval coverage (0.95 gives 2.5th-97.5th percentiles).
        seed: bootstrap seed.

    Raises:
        ValueError: mismatched shapes or labels outside ``[0, K)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    K = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape != (labels.size, K):
        raise ValueError(
            f"probabilities must be (N, K) = ({labels.size}, {K}) for {K} class names; got {probabilities.shape}"
        )
    if labels.size == 0:
        raise ValueError("no samples to evaluate: the split is empty; check the manifest's split column")
    if labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"labels must lie in [0, {K}); got range [{labels.min()}, {labels.max()}]")
    predictions = probabilities.argmax(axis=1)
    classes = list(range(K))

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    mcm = multilabel_confusion_matrix(labels, predictions, labels=classes)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    specificity = _safe_divide(tn, tn + fp)
    point = {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1}
    auroc = np.array([_auroc_point(probabilities, labels, c) for c in classes])
    weights = support / support.sum()
    accuracy = float(accuracy_score(labels, predictions))
    balanced = float(balanced_accuracy_score(labels, predictions))
    qwk = float(cohen_kappa_score(labels, predictions, labels=classes, weights="quadratic")) if is_ordinal else None
    macro_auroc = float(np.nanmean(auroc)) if not np.isnan(auroc).all() else float("nan")

    boot: dict[str, np.ndarray] = {}
    if n_bootstrap > 0:
        idx = stratified_bootstrap_indices(labels, n_bootstrap, seed)
        boot = scores_from_confusion(confusion_matrices(labels[idx], predictions[idx], K))
        boot["auroc"] = bootstrap_auroc(probabilities, labels, idx)
        with np.errstate(all="ignore"):
            valid = ~np.isnan(boot["auroc"])
            boot["macro_auroc"] = np.where(
                valid.any(axis=1), np.nansum(boot["auroc"], axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan
            )

    def estimate(value: float, key: str, column: int | None = None) -> Estimate:
        if key not in boot:
            return Estimate(float(value))
        samples = boot[key] if column is None else boot[key][:, column]
        return Estimate(float(value), *percentile_interval(samples, confidence))

    per_class = [
        ClassMetrics(
            name=str(name),
            support=int(support[c]),
            **{s: estimate(point[s][c], s, c) for s in _CLASS_SCORES},
            auroc=estimate(auroc[c], "auroc", c),
        )
        for c, name in enumerate(class_names)
    ]
    return ClassificationMetrics(
        class_names=[str(c) for c in class_names],
        n=int(labels.size),
        per_class=per_class,
        macro={s: estimate(point[s].mean(), f"macro_{s}") for s in _CLASS_SCORES},
        weighted={s: estimate((point[s] * weights).sum(), f"weighted_{s}") for s in _CLASS_SCORES},
        accuracy=estimate(accuracy, "accuracy"),
        balanced_accuracy=estimate(balanced, "balanced_accuracy"),
        macro_auroc=estimate(macro_auroc, "macro_auroc"),
        qwk=None if qwk is None else estimate(qwk, "qwk"),
        confusion=confusion_matrix(labels, predictions, labels=classes).tolist(),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
    )
