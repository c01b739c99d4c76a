"""Verdicts of a claim from confidence intervals: ``holds``, ``does not hold`` or ``not resolved at this n``.

A claim is a set of comparisons, each a difference (reference minus a baseline, or a margin statistic
such as ``recall_ref - 2 * best other recall``) that the claim says is positive. With 95% intervals:

* **holds**: every interval lies above 0;
* **does not hold**: some interval lies below 0 (a baseline is clearly better, or the margin clearly missed);
* **not resolved at this n**: otherwise. The report then says what n would resolve it: the interval's
  half-width shrinks as ``1/sqrt(n)``, so a comparison with point difference ``d`` and half-width ``h``
  at ``n`` images excludes 0 at about ``n * (h / |d|)^2`` images if ``d`` stayed as it is (no n when
  ``d`` is 0); the claim needs the largest of its undecided comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from medvit.metrics import Estimate

__all__ = ["HOLDS", "NOT_HOLD", "NOT_RESOLVED", "Verdict", "verdict"]

HOLDS, NOT_HOLD, NOT_RESOLVED = "holds", "does not hold", "not resolved at this n"


@dataclass(frozen=True)
class Verdict:
    """The verdict of one claim.

    Attributes:
        verdict: :data:`HOLDS`, :data:`NOT_HOLD` or :data:`NOT_RESOLVED`.
        reason: one sentence: which comparison decided it.
        n: the number of test images (or images with masks) the intervals came from.
        n_to_resolve: for an unresolved claim, the n at which its undecided comparisons would
            exclude 0 (None: resolved, or some difference is exactly 0).
    """

    verdict: str
    reason: str
    n: int
    n_to_resolve: int | None = None


def verdict(comparisons: Sequence[tuple[str, Estimate]], n: int) -> Verdict:
    """The verdict of a claim that every ``(name, difference)`` in ``comparisons`` is positive.

    Raises:
        ValueError: no comparison, or one without an interval.
    """
    if not comparisons:
        raise ValueError("a verdict needs at least one comparison")
    for name, est in comparisons:
        if math.isnan(est.low) or math.isnan(est.high):
            raise ValueError(f"comparison {name!r} has no confidence interval")
    below = [(name, est) for name, est in comparisons if est.high < 0]
    if below:
        name, est = min(below, key=lambda item: item[1].high)
        return Verdict(NOT_HOLD, f"{name}: {est.format()} lies below 0", n)
    undecided = [(name, est) for name, est in comparisons if est.low <= 0]
    if not undecided:
        name, est = min(comparisons, key=lambda item: item[1].low)
        return Verdict(HOLDS, f"every interval lies above 0 (closest: {name}: {est.format()})", n)
    needs = []
    for _, est in undecided:
        half = (est.high - est.low) / 2
        needs.append(None if est.value == 0 else math.ceil(n * (half / abs(est.value)) ** 2))
    n_to_resolve = None if any(v is None for v in needs) else max(needs)
    names = ", ".join(f"{name}: {est.format()}" for name, est in undecided)
    return Verdict(NOT_RESOLVED, f"intervals include 0 ({names})", n, n_to_resolve)
