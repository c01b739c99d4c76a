"""Workflows: what composes the lower layers into one user-facing step, called by the CLI, the page and the study.

* :mod:`~medvit.workflows.training`: :func:`train_run` (train, then :func:`finish_run`: calibrate on
  validation and write the report) — what ``medvit train`` does.
* :mod:`~medvit.workflows.cv`: :func:`train_cv`, a cross-validated run (K fold runs, out-of-fold
  predictions and their calibration, the fold ensemble or the refit) — ``medvit train`` with ``cv.folds``.

The engine (:mod:`medvit.train`) only trains and predicts; it never calls up into :mod:`medvit.clinical`
or :mod:`medvit.report`.
"""

from medvit.workflows.cv import CVResult, is_cv_config, train_cv
from medvit.workflows.training import finish_run, train_run

__all__ = ["CVResult", "finish_run", "is_cv_config", "train_cv", "train_run"]
