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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np

from medvit.metrics.bootstrap import Estimate, bootstrap_estimate, json_clean

__all__ = [
    "ConformalResult",
    "SET_SEPARATOR",
    "conformal_quantile",
    "evaluate_prediction_sets",
    "format_set",
    "prediction_sets",
]

Method = Literal["lac", "aps"]
METHODS = ("lac", "aps")
SET_SEPARATOR = "|"


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"conformal method {method!r}; choose one of {METHODS}")


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
    labels = np.asarray(labels, dtype=np.int64)
    member = prediction_sets(probabilities, q, method)
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
        size_counts={str(k): int((size == k).sum()) for k in range(1, member.shape[1] + 1)},
    )
