"""Workflows: what composes the lower layers into one user-facing step, called by the CLI, the page and the study.

* :mod:`~medvit.workflows.training`: :func:`train_run` (train, then :func:`finish_run`: calibrate on
  validation and write the report) — what ``medvit train`` does.

The engine (:mod:`medvit.train`) only trains and predicts; it never calls up into :mod:`medvit.reporting`
or :mod:`medvit.report`.
"""

from medvit.workflows.training import finish_run, train_run

__all__ = ["finish_run", "train_run"]
