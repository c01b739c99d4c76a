"""The transfer study: every backbone fine-tuned on every dataset under one protocol, and its report.

``medvit study`` = :func:`run_study` (cells as jobs: :mod:`medvit.study.cells`, :mod:`medvit.study.launch`)
then :func:`write_study_report` (tables, paired differences, verdicts: :mod:`medvit.study.report`).
"""

from medvit.study.config import Claim, StudyConfig, load_study_config, study_config_from_dict
from medvit.study.launch import LAUNCHERS, run_study
from medvit.study.report import write_study_report

__all__ = ["Claim", "LAUNCHERS", "StudyConfig", "load_study_config", "run_study", "study_config_from_dict", "write_study_report"]
