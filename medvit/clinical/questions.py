"""The clinical questions of a run: recorded in ``model.json``, else its dataset spec's."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from medvit.data.datasets import DATASETS, ClinicalQuestion

__all__ = ["run_questions"]

_logger = logging.getLogger(__name__)


def run_questions(info: Mapping[str, Any]) -> list[ClinicalQuestion]:
    """The binary questions reported for a run, in order (the first is the page's).

    ``model.json["questions"]`` (copied from the manifest's side JSON at training time, or set by
    ``medvit calibrate``) wins; older runs fall back to their dataset spec. Questions naming a class
    the run does not have are dropped with a warning.
    """
    class_names = [str(c) for c in info.get("class_names", [])]
    recorded = info.get("questions")
    if recorded is None:
        spec = DATASETS.get(str(info.get("dataset", "")).lower())
        questions = list(spec.questions) if spec else []
    else:
        questions = [ClinicalQuestion(str(q["name"]), tuple(str(c) for c in q["positive_classes"])) for q in recorded]
    kept = []
    for question in questions:
        if all(c in class_names for c in question.positive_classes):
            kept.append(question)
        else:
            _logger.warning("question %r names classes outside %s; skipped", question.name, class_names)
    return kept
