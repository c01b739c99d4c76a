"""Stratified bootstrap shared by every metric module: resample indices, percentile intervals, estimates.

Every confidence interval in the reports comes from here: resample within each class (so class
counts stay fixed, as in :func:`medvit.metrics.compute_metrics`), recompute the statistic on each
resample, and take the percentile interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "Estimate",
    "bootstrap_estimate",
    "json_clean",
    "percentile_interval",
    "stratified_bootstrap_indices",
]


@dataclass
class Estimate:
    """A point estimate with its bootstrap confidence interval (``nan`` bounds without bootstrap)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> Estimate:
        """From a ``summary.json`` record ``{"value", "low", "high"}``; ``None`` or a missing key is ``nan``."""
        record = record or {}
        return cls(*(float("nan") if record.get(k) is None else float(record[k]) for k in ("value", "low", "high")))

    def format(self, digits: int = 3) -> str:
        """``0.912 (0.880-0.940)``, or only the value when there is no interval."""
        if np.isnan(self.value):
            return "n/a"
        if np.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


def stratified_bootstrap_indices(labels: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Resample indices within each class (class counts stay fixed).

    Args:
        labels: (N,) integer labels.
        n_bootstrap: number of resamples R.
        seed: seed of the ``np.random.Generator``.

    Returns:
        (R, N) indices into ``labels``; columns are grouped by class in ascending label order,
        so ``labels[idx]`` is identical in every row.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        blocks.append(members[rng.integers(0, members.size, size=(n_bootstrap, members.size))])
    return np.concatenate(blocks, axis=1)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``samples`` (``nan`` ignored)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_estimate(
    statistic: Callable[[np.ndarray], np.ndarray | float],
    strata: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    vectorised: bool = False,
) -> Estimate:
    """A statistic of a sample with its stratified bootstrap percentile interval.

    Args:
        statistic: ``statistic(idx)`` with ``idx`` an (N,) index array returns a float.
        strata: (N,) labels to resample within (the true class).
        n_bootstrap: resamples (0: the point estimate only).
        seed: bootstrap seed.
        confidence: interval coverage.
        vectorised: ``statistic`` also takes the (R, N) resample indices and returns (R,) values
            at once; otherwise it is called once per resample.
    """
    strata = np.asarray(strata)
    value = float(statistic(np.arange(strata.size)))
    if n_bootstrap <= 0 or strata.size == 0:
        return Estimate(value)
    idx = stratified_bootstrap_indices(strata, n_bootstrap, seed)
    if vectorised:
        samples = np.asarray(statistic(idx), dtype=np.float64)
    else:
        samples = np.array([float(statistic(row)) for row in idx])
    return Estimate(value, *percentile_interval(samples, confidence))


def json_clean(value: Any) -> Any:
    """A JSON-ready copy: ``nan``/``inf`` become ``None``, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
