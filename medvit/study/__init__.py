"""The transfer study: every backbone fine-tuned on every dataset under one protocol, and its report.

``medvit study`` = :func:`run_study` (cells as jobs, :mod:`medvit.study.cells`,
:mod:`medvit.study.launch`) then :func:`write_study_report` (tables, paired differences, verdicts).
"""

from medvit.study.config import Claim, StudyConfig, load_study_config, study_config_from_dict
from medvit.study.launch import LAUNCHERS, run_study


def write_study_report(*args, **kwargs):
    """See :func:`medvit.study.report.write_study_report` (imported lazily: it loads the plotting stack)."""
    from medvit.study.report import write_study_report as write

    return write(*args, **kwargs)


__all__ = ["Claim", "LAUNCHERS", "StudyConfig", "load_study_config", "run_study", "study_config_from_dict", "write_study_report"]
