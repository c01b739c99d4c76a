"""Split-conformal prediction sets: a set of classes per image that holds the true class with
probability >= 1 - alpha over exchangeable data (Angelopoulos & Bates 2021, https://arxiv.org/abs/2107.07511).

Calibrated on the validation split, reported on test. Two scores (written by hand: neither
scikit-learn nor MONAI has conformal prediction, and each is a few lines):

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): score ``1 - p_true``; the set
  holds every class with ``1 - p_k <= q``. The most probable class is always added, so no set is
  empty (this can only raise coverage).
- ``aps`` (adaptive prediction sets, Romano et al. 2020), non-randomised: score = total probability of
  the classes ranked at or above the true one; the set takes classes by decreasing probability until
  that total reaches ``q``. Without the randomisation of the paper its coverage is conservative
  (often near 0.99 for alpha = 0.1) and its sets larger; ``lac`` is the default.

``q`` is the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of the validation scores (section 1 of
the reference, "higher" interpolation).

For a cross-validated run, :func:`cv_plus_sets` builds **CV+** sets (Barber, Candès, Ramdas & Tibshirani 2021,
https://arxiv.org/abs/1905.02928, section 3; for classification Romano, Sesia & Candès 2020,
https://arxiv.org/abs/2006.02544): every train+val image ``i`` is scored by the fold model that did not train
on it (its out-of-fold score ``R_i``), and a test image's candidate class ``y`` is scored by each fold model
``k(i)``; ``y`` is in the set when ``#{i : R_i < S_k(i)(x, y)} < (1 - alpha)(n + 1)``. It needs no refit on
all the data, is valid for the fold ensemble (coverage >= 1 - 2 alpha in theory, about 1 - alpha in
practice) and, unlike one threshold on out-of-fold scores, accounts for the folds' models differing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from medvit.metrics.bootstrap import Estimate, bootstrap_estimate, json_clean

__all__ = [
    "ConformalResult",
    "SET_SEPARATOR",
    "conformal_quantile",
    "cv_plus_sets",
    "evaluate_prediction_sets",
    "evaluate_set_membership",
    "format_set",
    "prediction_sets",
]

Method = Literal["lac", "aps"]
METHODS = ("lac", "aps")
SET_SEPARATOR = "|"


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"conformal method {method!r}; choose one of {METHODS}")


def _class_scores(probabilities: np.ndarray, method: str) -> np.ndarray:
    """(N, K) conformal score of every candidate class (what :func:`_scores` gives for the true one)."""
    if method == "lac":
        return 1.0 - probabilities
    # aps: for candidate k, the mass of every class at least as probable as k (ties count as above)
    return (probabilities[:, None, :] * (probabilities[:, None, :] >= probabilities[:, :, None])).sum(axis=2)


def _scores(probabilities: np.ndarray, labels: np.ndarray, method: str) -> np.ndarray:
    rows = np.arange(labels.size)
    p_true = probabilities[rows, labels]
    if method == "lac":
        return 1.0 - p_true
    # aps: mass of every class at least as probable as the true one (ties count as above)
    return (probabilities * (probabilities >= p_true[:, None])).sum(axis=1)


def conformal_quantile(labels: np.ndarray, probabilities: np.ndarray, alpha: float = 0.1, method: Method = "lac") -> float:
    """The calibrated score threshold ``q`` from validation predictions.

    Raises:
        ValueError: ``alpha`` outside (0, 1), an unknown method, or no calibration images.
    """
    _check_method(method)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1) (0.1 asks for 90 % coverage)")
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    if n == 0:
        raise ValueError("conformal calibration needs validation predictions; the val split is empty")
    scores = _scores(np.asarray(probabilities, dtype=np.float64), labels, method)
    level = np.ceil((n + 1) * (1 - alpha)) / n
    if level > 1:  # too few calibration images for this alpha: every class goes into every set
        return float("inf")
    return float(np.quantile(scores, level, method="higher"))


def prediction_sets(probabilities: np.ndarray, q: float, method: Method = "lac") -> np.ndarray:
    """(N, K) bool membership of each class in each image's prediction set."""
    _check_method(method)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if method == "lac":
        member = 1.0 - probabilities <= q + 1e-12
    else:
        order = np.argsort(-probabilities, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probabilities, order, axis=1)
        mass_before = np.cumsum(sorted_p, axis=1) - sorted_p
        take = mass_before < q - 1e-12
        member = np.zeros_like(take)
        np.put_along_axis(member, order, take, axis=1)
    member[np.arange(member.shape[0]), probabilities.argmax(axis=1)] = True
    return member


def cv_plus_sets(
    oof_labels: np.ndarray,
    oof_probabilities: np.ndarray,
    oof_folds: np.ndarray,
    fold_probabilities: Mapping[int, np.ndarray],
    alpha: float = 0.1,
    method: Method = "lac",
) -> np.ndarray:
    """(N, K) membership of the CV+ prediction sets of N new images (see the module docstring).

    Args:
        oof_labels, oof_probabilities, oof_folds: the out-of-fold predictions: label, probabilities (n, K)
            and the fold whose model predicted each (the one that did not train on it).
        fold_probabilities: ``{fold: (N, K) probabilities of the new images by that fold's model}``, at the
            same temperature as ``oof_probabilities``.
        alpha: miscoverage (0.1: about 90 % of sets hold the true class).
        method: the score, ``lac`` or ``aps``.

    Raises:
        ValueError: ``alpha`` outside (0, 1), an unknown method, or a fold without new-image probabilities.
    """
    _check_method(method)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1) (0.1 asks for 90 % coverage)")
    labels = np.asarray(oof_labels, dtype=np.int64)
    folds = np.asarray(oof_folds)
    residuals = _scores(np.asarray(oof_probabilities, dtype=np.float64), labels, method)
    missing = sorted(set(np.unique(folds).tolist()) - set(fold_probabilities))
    if missing:
        raise ValueError(f"CV+ needs the new images' probabilities of every fold model; folds {missing} have none")
    beaten = None  # (N, K): how many calibration images score below the candidate, each under its own fold model
    for fold in np.unique(folds):
        fold_residuals = np.sort(residuals[folds == fold])
        candidate = _class_scores(np.asarray(fold_probabilities[fold], dtype=np.float64), method)
        count = np.searchsorted(fold_residuals, candidate, side="left")
        beaten = count if beaten is None else beaten + count
    return beaten < (1 - alpha) * (labels.size + 1)


def format_set(member: Sequence[bool], class_names: Sequence[str]) -> str:
    """``benign|malignant``: the classes of one set in label order."""
    return SET_SEPARATOR.join(str(name) for name, m in zip(class_names, member) if m)


@dataclass
class ConformalResult:
    """Empirical behaviour of the prediction sets on (test) data.

    Attributes:
        method, alpha, q: the calibration (``q`` from validation).
        coverage: fraction of images whose set holds the true class (target >= 1 - alpha).
        mean_size: mean number of classes per set.
        per_class: per true class: ``n``, ``coverage``, ``mean_size`` (Estimates).
        size_counts: how many sets have 1, 2, ... classes.
    """

    method: str
    alpha: float
    q: float
    n_calibration: int
    n: int
    coverage: Estimate
    mean_size: Estimate
    per_class: dict[str, dict[str, Any]]
    size_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return json_clean(asdict(self))


def evaluate_prediction_sets(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    q: float,
    method: Method = "lac",
    alpha: float = 0.1,
    n_calibration: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConformalResult:
    """Coverage and set size of the calibrated sets on labelled data, with stratified bootstrap CIs."""
    member = prediction_sets(probabilities, q, method)
    return evaluate_set_membership(labels, member, class_names, method, alpha, q, n_calibration, n_bootstrap,
                                   confidence, seed)


def evaluate_set_membership(
    labels: np.ndarray,
    member: np.ndarray,
    class_names: Sequence[str],
    method: str,
    alpha: float,
    q: float = float("nan"),
    n_calibration: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConformalResult:
    """Coverage and set size of given (N, K) set memberships on labelled data (:func:`prediction_sets`,
    :func:`cv_plus_sets`), with stratified bootstrap CIs; ``q``: the threshold, when one made the sets."""
    labels = np.asarray(labels, dtype=np.int64)
    member = np.asarray(member, dtype=bool)
    covered = member[np.arange(labels.size), labels].astype(np.float64)
    size = member.sum(axis=1).astype(np.float64)
    boot = dict(n_bootstrap=n_bootstrap, seed=seed, confidence=confidence, vectorised=True)
    per_class = {}
    for c, name in enumerate(class_names):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            per_class[str(name)] = {"n": 0, "coverage": Estimate(float("nan")), "mean_size": Estimate(float("nan"))}
            continue
        strata = np.zeros(rows.size, dtype=np.int64)
        per_class[str(name)] = {
            "n": int(rows.size),
            "coverage": bootstrap_estimate(lambda i: covered[rows][i].mean(axis=-1), strata, **boot),
            "mean_size": bootstrap_estimate(lambda i: size[rows][i].mean(axis=-1), strata, **boot),
        }
    return ConformalResult(
        method=method,
        alpha=float(alpha),
        q=float(q),
        n_calibration=int(n_calibration),
        n=int(labels.size),
        coverage=bootstrap_estimate(lambda i: covered[i].mean(axis=-1), labels, **boot),
        mean_size=bootstrap_estimate(lambda i: size[i].mean(axis=-1), labels, **boot),
        per_class=per_class,
        size_counts={str(k): int((size == k).sum()) for k in range(0 if (size == 0).any() else 1, member.shape[1] + 1)},
    )
