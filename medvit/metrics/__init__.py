"""Metrics with stratified bootstrap CIs: per-class classification scores, calibration, operating
points of a dataset's clinical question, conformal prediction sets and subgroup breakdowns.

``medvit.metrics`` re-exports the classification names it always had, so ``from medvit.metrics import
compute_metrics`` keeps working; the other modules are imported by name
(``medvit.metrics.calibration`` etc.).
"""

from medvit.metrics.bootstrap import Estimate, stratified_bootstrap_indices
from medvit.metrics.classification import (
    ClassificationMetrics,
    ClassMetrics,
    bootstrap_auroc,
    compute_metrics,
    confusion_matrices,
    scores_from_confusion,
)

__all__ = [
    "Estimate",
    "ClassMetrics",
    "ClassificationMetrics",
    "compute_metrics",
    "stratified_bootstrap_indices",
    "confusion_matrices",
    "scores_from_confusion",
    "bootstrap_auroc",
]
