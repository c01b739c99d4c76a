"""Finish a run: train, then calibrate on validation and write the report (``medvit train``).

:func:`medvit.train.train` fine-tunes and writes the run's predictions; :func:`finish_run` then fits the
calibration on the validation split (:func:`medvit.clinical.calibrate.calibrate_run`: temperature,
conformal sets, operating points; the prediction files are rewritten with it) and writes ``report/``
(:func:`medvit.report.write_report`), as the run's ``config.yaml`` asks (``eval_split``, ``report``).
"""

from __future__ import annotations

import os
from pathlib import Path

from medvit.report import write_report
from medvit.clinical.calibrate import calibrate_run
from medvit.run_dir import predictions_filename, read_config
from medvit.train.config import TrainConfig, config_from_dict
from medvit.train.engine import TrainResult, train

__all__ = ["finish_run", "train_run"]


def finish_run(run_dir: str | Path, cfg: TrainConfig | None = None) -> None:
    """Calibrate a trained run on validation (unless it is evaluated on validation) and write its report.

    Args:
        run_dir: a run directory :func:`medvit.train.train` wrote (predictions of ``val`` and ``eval_split``).
        cfg: the run's configuration (default: its ``config.yaml``).
    """
    run_dir = Path(run_dir)
    cfg = config_from_dict(read_config(run_dir)) if cfg is None else cfg
    if cfg.eval_split != "val" and (run_dir / predictions_filename("val")).is_file():
        calibrate_run(run_dir)  # not for a run without a validation split (a cross-validated run's refit)
    if cfg.report:
        write_report(run_dir, split=cfg.eval_split, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)


def train_run(cfg: TrainConfig | None, out_dir: str | Path, resume: bool = False) -> TrainResult:
    """:func:`medvit.train.train` (same arguments), then :func:`finish_run` on the main process.

    Under ``torchrun`` every process trains; only rank 0 (``RANK``) calibrates and reports, after the
    process group is closed.
    """
    result = train(cfg, out_dir, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        finish_run(result.run_dir)
    return result
