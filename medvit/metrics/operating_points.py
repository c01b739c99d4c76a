"""Operating points of a binary clinical question (e.g. "malignant or not") asked of a multi-class model.

The question's score is the summed probability of its positive classes. Thresholds are chosen on
the validation split (the smallest-specificity-loss threshold reaching each target sensitivity, and
Youden's J = sensitivity + specificity - 1) with scikit-learn's ``roc_curve``; the test split then
gives sensitivity, specificity, PPV and NPV at each threshold with stratified bootstrap CIs. An image
is called positive when its score is ``>= threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from medvit.metrics.bootstrap import Estimate, json_clean, percentile_interval, stratified_bootstrap_indices
from medvit.metrics.classification import bootstrap_auroc

__all__ = [
    "DEFAULT_SENSITIVITIES",
    "OperatingPoint",
    "OperatingPointResult",
    "binary_scores",
    "choose_thresholds",
    "evaluate_operating_points",
    "question_auroc",
]

DEFAULT_SENSITIVITIES = (0.90, 0.95)


@dataclass
class OperatingPoint:
    """A threshold on the question's score, chosen on validation.

    Attributes:
        name: ``sens>=0.95`` or ``youden``.
        description: in words, for reports and the page (``95 %-sensitivity threshold``).
        threshold: call positive when score >= threshold.
        target_sensitivity: the target (``None`` for Youden's J).
        val_sensitivity, val_specificity: what the threshold gives on validation.
    """

    name: str
    description: str
    threshold: float
    target_sensitivity: float | None
    val_sensitivity: float
    val_specificity: float


@dataclass
class OperatingPointResult:
    """One operating point on the test split, with counts and bootstrap CIs."""

    point: OperatingPoint
    n_positive: int
    n_negative: int
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate

    def to_dict(self) -> dict[str, Any]:
        return json_clean(asdict(self))


def binary_scores(probabilities: np.ndarray, class_names: Sequence[str], positive_classes: Sequence[str]) -> np.ndarray:
    """Summed probability of ``positive_classes``: the score of the binary question.

    Raises:
        ValueError: a positive class is not one of ``class_names`` (or none is given).
    """
    names = [str(c) for c in class_names]
    unknown = [c for c in positive_classes if str(c) not in names]
    if unknown or not positive_classes:
        raise ValueError(f"positive classes {list(positive_classes)} must be among the run's classes {names}")
    columns = [names.index(str(c)) for c in positive_classes]
    return np.asarray(probabilities, dtype=np.float64)[:, columns].sum(axis=1)


def _percent(value: float) -> str:
    return f"{value * 100:g} %"


def choose_thresholds(
    positive: np.ndarray, scores: np.ndarray, target_sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES, youden: bool = True
) -> list[OperatingPoint]:
    """Thresholds for target sensitivities (and Youden's J) on validation data.

    For a target ``s`` the threshold is the highest one whose validation sensitivity is ``>= s``
    (so specificity is as high as the target allows).

    Args:
        positive: (N,) bool, the image answers the question "yes".
        scores: (N,) the question's score.
        target_sensitivities: each in (0, 1].
        youden: add the threshold maximising sensitivity + specificity - 1.

    Raises:
        ValueError: validation has no positive or no negative image, or a target outside (0, 1].
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError(
            f"operating points need positive and negative validation images; got {int(positive.sum())} positive "
            f"of {positive.size}"
        )
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    points = []
    for target in target_sensitivities:
        if not 0 < target <= 1:
            raise ValueError(f"target sensitivity {target} must be in (0, 1]")
        i = int(np.argmax(tpr >= target - 1e-12))
        points.append(
            OperatingPoint(
                f"sens>={target:g}", f"{_percent(target)}-sensitivity threshold", float(min(thresholds[i], 1.0)),
                float(target), float(tpr[i]), float(1 - fpr[i]),
            )
        )
    if youden:
        i = int(np.argmax(tpr - fpr))
        points.append(
            OperatingPoint("youden", "Youden's J threshold", float(min(thresholds[i], 1.0)), None, float(tpr[i]), float(1 - fpr[i]))
        )
    return points


def _rates(positive: np.ndarray, called: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV along the last axis (``nan`` where undefined)."""
    tp = (called & positive).sum(axis=-1)
    fp = (called & ~positive).sum(axis=-1)
    fn = (~called & positive).sum(axis=-1)
    tn = (~called & ~positive).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        }


def evaluate_operating_points(
    positive: np.ndarray,
    scores: np.ndarray,
    points: Sequence[OperatingPoint],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[OperatingPointResult]:
    """Sensitivity, specificity, PPV and NPV of each threshold on (test) data, with bootstrap CIs.

    The bootstrap resamples within positives and negatives (their counts stay fixed), like the
    per-class metrics.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    idx = stratified_bootstrap_indices(positive.astype(np.int64), n_bootstrap, seed) if n_bootstrap > 0 else None
    results = []
    for point in points:
        called = scores >= point.threshold
        rates = _rates(positive, called)
        boot = _rates(positive[idx], called[idx]) if idx is not None else {}

        def estimate(key: str) -> Estimate:
            value = float(rates[key])
            return Estimate(value, *percentile_interval(boot[key], confidence)) if boot else Estimate(value)

        results.append(
            OperatingPointResult(
                point, int(positive.sum()), int((~positive).sum()),
                *(int(rates[k]) for k in ("tp", "fp", "tn", "fn")),
                *(estimate(k) for k in ("sensitivity", "specificity", "ppv", "npv")),
            )
        )
    return results


def question_auroc(
    positive: np.ndarray, scores: np.ndarray, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """AUROC of the binary question (scikit-learn's ``roc_auc_score``) with a stratified bootstrap CI (rank form)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return Estimate(float("nan"))
    value = float(roc_auc_score(positive, scores))
    if n_bootstrap <= 0:
        return Estimate(value)
    labels = positive.astype(np.int64)
    idx = stratified_bootstrap_indices(labels, n_bootstrap, seed)
    samples = bootstrap_auroc(np.stack([1 - scores, scores], axis=1), labels, idx)[:, 1]
    return Estimate(value, *percentile_interval(samples, confidence))
