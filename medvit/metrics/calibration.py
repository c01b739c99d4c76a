"""Calibration: ECE, adaptive ECE, MCE, Brier score and NLL with bootstrap CIs; temperature scaling.

Binned errors are top-label (Guo et al. 2017, https://proceedings.mlr.press/v70/guo17a.html): the
confidence of an image is its largest class probability, "correct" is whether that class is the true
one. ECE and MCE come from MONAI's ``CalibrationErrorMetric`` (15 equal-width bins), the reliability
bins from ``calibration_binning``; the bootstrap resamples use :func:`binned_errors`, a vectorised
copy of the same binning. Percentile intervals of ECE need not contain the point value: binned
errors are biased upwards on resamples (duplicated images make bins look noisier). Brier score and NLL are scikit-learn's ``brier_score_loss`` / ``log_loss``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric, calibration_binning
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.metrics import brier_score_loss, log_loss

from medvit.metrics.bootstrap import Estimate, bootstrap_estimate, json_clean

__all__ = [
    "CalibrationMetrics",
    "ReliabilityBins",
    "adaptive_ece",
    "apply_temperature",
    "binned_errors",
    "monai_calibration_error",
    "compute_calibration",
    "fit_temperature",
    "nll",
    "reliability_bins",
]

N_BINS = 15
_EPS = 1e-12
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


@dataclass
class ReliabilityBins:
    """Equal-width confidence bins: mean confidence, accuracy and image count per bin (``nan`` when empty)."""

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    counts: list[int]


@dataclass
class CalibrationMetrics:
    """Top-label calibration of one set of predictions.

    Attributes:
        ece: expected calibration error, 15 equal-width bins (count-weighted mean |accuracy - confidence|).
        adaptive_ece: the same with 15 equal-count bins.
        mce: maximum calibration error (largest bin gap).
        brier: multi-class Brier score (scikit-learn's; halved for two classes).
        nll: mean negative log-likelihood of the true class.
        bins: the reliability diagram's bins.
    """

    n: int
    ece: Estimate
    adaptive_ece: Estimate
    mce: Estimate
    brier: Estimate
    nll: Estimate
    bins: ReliabilityBins
    n_bins: int = N_BINS
    n_bootstrap: int = 0
    confidence: float = 0.95
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` becomes ``None``)."""
        return json_clean(asdict(self))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """``log p`` clipped away from 0: logits up to a per-row constant, which softmax ignores."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, None))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: temperature-scaled probabilities from (already softmaxed) probabilities.

    ``T = 1`` returns the input unchanged (bit for bit), so runs without scaling keep their outputs.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if float(temperature) == 1.0:
        return probabilities
    return softmax(log_probabilities(probabilities) / float(temperature), axis=1)


def nll(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (scikit-learn's ``log_loss``)."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(log_loss(labels, probabilities, labels=list(range(probabilities.shape[1]))))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``labels`` (Guo et al. 2017, section 4.2).

    A bounded scalar search over ``log T`` in [log 0.05, log 20] (one parameter: Brent's method
    needs no gradients and cannot diverge, unlike LBFGS on tiny validation splits). The result
    is rounded to 6 significant digits and kept only when it lowers the NLL; otherwise ``1.0`` is
    returned, so scaling never raises the validation NLL.

    Args:
        labels: (N,) true classes of the validation split.
        probabilities: (N, K) unscaled validation probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    logp = log_probabilities(probabilities)
    if labels.size == 0:
        raise ValueError("fit_temperature needs validation predictions; the val split is empty")
    rows = np.arange(labels.size)

    def loss(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, labels]))

    result = minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    temperature = float(f"{np.exp(result.x):.6g}")  # 6 digits: what prediction files and model.json hold
    if not result.success or loss(np.log(temperature)) >= loss(0.0):
        return 1.0
    return temperature


def _top_label(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == labels).astype(np.float64)


def monai_calibration_error(confidence: np.ndarray, correct: np.ndarray, reduction: str, n_bins: int = N_BINS) -> float:
    """MONAI's ``CalibrationErrorMetric`` (``expected`` = ECE, ``maximum`` = MCE) of top-label confidences."""
    metric = CalibrationErrorMetric(num_bins=n_bins, calibration_reduction=reduction, metric_reduction="none")
    y_pred = torch.from_numpy(np.asarray(confidence, dtype=np.float32)[None, None, :])
    y = torch.from_numpy(np.asarray(correct, dtype=np.float32)[None, None, :])
    return float(metric(y_pred=y_pred, y=y)[0, 0])


def binned_errors(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """ECE and MCE of every row of (R, N) confidences with one ``np.bincount``.

    The bootstrap's copy of MONAI's binning (same float32 boundaries and ``torch.bucketize``
    rule): MONAI loops over its batch in Python, 1000 resamples take ~16 s there and ~0.1 s here.
    ``tests/test_clinical_metrics.py`` checks the two agree.
    """
    conf = np.atleast_2d(confidence).astype(np.float32)
    corr = np.atleast_2d(correct).astype(np.float64)
    R = conf.shape[0]
    edges = np.linspace(0.0, 1.0 + np.finfo(np.float32).eps, n_bins + 1, dtype=np.float32)
    bins = np.minimum(np.searchsorted(edges[1:], conf, side="left"), n_bins - 1)
    flat = (np.arange(R)[:, None] * n_bins + bins).ravel()
    size = R * n_bins
    counts = np.bincount(flat, minlength=size).reshape(R, n_bins)
    sum_p = np.bincount(flat, weights=conf.astype(np.float64).ravel(), minlength=size).reshape(R, n_bins)
    sum_y = np.bincount(flat, weights=corr.ravel(), minlength=size).reshape(R, n_bins)
    gap = np.abs(sum_p - sum_y) / np.maximum(counts, 1)
    return (gap * counts).sum(axis=1) / counts.sum(axis=1), np.where(counts > 0, gap, 0.0).max(axis=1)


def adaptive_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """ECE with equal-count bins (Nixon et al. 2019, https://arxiv.org/abs/1904.01685).

    Written by hand: MONAI and scikit-learn bin only by equal width. Rows of (R, N) input are
    separate samples (the bootstrap); images are sorted by confidence and cut into ``n_bins``
    near-equal runs with ``np.array_split``.
    """
    confidence = np.atleast_2d(confidence)
    correct = np.atleast_2d(correct)
    order = np.argsort(confidence, axis=1, kind="stable")
    conf = np.take_along_axis(confidence, order, axis=1)
    corr = np.take_along_axis(correct, order, axis=1)
    n = conf.shape[1]
    total = np.zeros(conf.shape[0])
    for part in np.array_split(np.arange(n), min(n_bins, n)):
        gap = np.abs(corr[:, part].mean(axis=1) - conf[:, part].mean(axis=1))
        total += gap * part.size / n
    return total


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = N_BINS) -> ReliabilityBins:
    """Top-label reliability bins from MONAI's ``calibration_binning``."""
    confidence, correct = _top_label(np.asarray(labels), np.asarray(probabilities, dtype=np.float64))
    mean_p, mean_gt, counts = calibration_binning(
        torch.from_numpy(confidence[None, None, :].astype(np.float32)),
        torch.from_numpy(correct[None, None, :].astype(np.float32)),
        num_bins=n_bins,
    )
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        confidence=mean_p[0, 0].double().tolist(),
        accuracy=mean_gt[0, 0].double().tolist(),
        counts=[int(c) for c in counts[0, 0].tolist()],
    )


def compute_calibration(
    labels: np.ndarray,
    probabilities: np.ndarray,
    n_bins: int = N_BINS,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CalibrationMetrics:
    """ECE, adaptive ECE, MCE, Brier score and NLL of predicted probabilities, with bootstrap CIs.

    Args:
        labels: (N,) true classes.
        probabilities: (N, K) class probabilities.
        n_bins: confidence bins of ECE, adaptive ECE, MCE and the reliability diagram.
        n_bootstrap: stratified bootstrap resamples (0: point estimates only).
        confidence: interval coverage.
        seed: bootstrap seed.

    Raises:
        ValueError: mismatched shapes or no samples.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.size or labels.size == 0:
        raise ValueError(f"calibration needs (N, K) probabilities for N = {labels.size} labels; got {probabilities.shape}")
    K = probabilities.shape[1]
    conf, correct = _top_label(labels, probabilities)
    one_hot = np.eye(K)[labels]
    # per-image Brier term: scikit-learn sums over classes and halves it for two classes
    brier_terms = ((probabilities - one_hot) ** 2).sum(axis=1) / (2.0 if K == 2 else 1.0)
    nll_terms = -log_probabilities(probabilities)[np.arange(labels.size), labels]
    boot = dict(strata=labels, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence, vectorised=True)

    def statistic(point: float, resampled: Any) -> Any:
        """The point estimate for the full sample, ``resampled(idx)`` for (R, N) resamples."""
        return lambda idx: point if idx.ndim == 1 else resampled(idx)

    ece = monai_calibration_error(conf, correct, "expected", n_bins)
    mce = monai_calibration_error(conf, correct, "maximum", n_bins)
    aece = adaptive_ece(conf, correct, n_bins)[0]
    brier = float(brier_score_loss(labels, probabilities, labels=list(range(K))))
    return CalibrationMetrics(
        n=int(labels.size),
        ece=bootstrap_estimate(statistic(ece, lambda i: binned_errors(conf[i], correct[i], n_bins)[0]), **boot),
        adaptive_ece=bootstrap_estimate(statistic(aece, lambda i: adaptive_ece(conf[i], correct[i], n_bins)), **boot),
        mce=bootstrap_estimate(statistic(mce, lambda i: binned_errors(conf[i], correct[i], n_bins)[1]), **boot),
        brier=bootstrap_estimate(statistic(brier, lambda i: brier_terms[i].mean(axis=1)), **boot),
        nll=bootstrap_estimate(statistic(nll(labels, probabilities), lambda i: nll_terms[i].mean(axis=1)), **boot),
        bins=reliability_bins(labels, probabilities, n_bins),
        n_bins=n_bins,
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
    )
