"""What the page says about one image beyond its probabilities: the prediction set and the
operating-point decisions of the run's first clinical question, each with one sentence of meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from medvit.metrics.conformal import prediction_sets
from medvit.metrics.operating_points import binary_scores

__all__ = ["ImageDecision", "OperatingDecision", "decide"]


@dataclass
class OperatingDecision:
    """One threshold applied to the image's score."""

    description: str
    threshold: float
    above: bool
    sentence: str


@dataclass
class ImageDecision:
    """The clinical reading of one image's (temperature-scaled) probabilities.

    Attributes:
        temperature: the run's temperature (1.0: not calibrated).
        probability_sentence: what the probabilities mean.
        prediction_set: the classes of the conformal set (``None``: the run has no conformal record).
        set_sentence: what the set means.
        question: the clinical question's name (``None``: the run has none).
        score: the image's score for the question (summed positive-class probability).
        decisions: one per operating point.
    """

    temperature: float
    probability_sentence: str
    prediction_set: list[str] | None = None
    set_sentence: str = ""
    question: str | None = None
    score: float | None = None
    decisions: list[OperatingDecision] = field(default_factory=list)

    @property
    def set_text(self) -> str:
        """``benign or malignant``."""
        return " or ".join(self.prediction_set or [])


def decide(probabilities: Sequence[float], class_names: Sequence[str], info: Mapping[str, Any]) -> ImageDecision:
    """Read one image's probabilities with the run's calibration record (``model.json["calibration"]``).

    Args:
        probabilities: (K,) probabilities, already temperature-scaled with the run's temperature
            (what :func:`medvit.explain.pipeline.explain` returns).
        class_names: the run's classes.
        info: the run's ``model.json``.
    """
    probs = np.asarray(probabilities, dtype=np.float64)[None, :]
    record = info.get("calibration") or {}
    temperature = float(record.get("temperature", 1.0))
    if record:
        probability_sentence = (
            f"Probabilities are temperature-scaled (T = {temperature:.3f}, fitted on the validation split) so that, "
            "on those images, a class given 80 % was right about 80 % of the time."
        )
    else:
        probability_sentence = (
            "Probabilities are the network's softmax, not calibrated: run `medvit calibrate RUN` to scale them "
            "and add prediction sets and operating points."
        )
    out = ImageDecision(temperature, probability_sentence)
    conformal = record.get("conformal")
    if conformal:
        q = float("inf") if conformal.get("q") is None else float(conformal["q"])
        member = prediction_sets(probs, q, conformal.get("method", "lac"))[0]
        out.prediction_set = [str(name) for name, m in zip(class_names, member) if m]
        coverage = f"{1 - float(conformal['alpha']):.0%}"
        what = "The model cannot rule out these classes" if len(out.prediction_set) > 1 else "Only this class remains"
        out.set_sentence = (
            f"{what} at the {coverage} level: sets built this way held the true class for at least {coverage} "
            "of images like the validation ones."
        )
    questions = record.get("questions") or []
    if questions:
        q = questions[0]
        out.question = str(q["name"])
        out.score = float(binary_scores(probs, class_names, q["positive_classes"])[0])
        for point in q.get("operating_points", []):
            above = out.score >= float(point["threshold"])
            where = "above" if above else "below"
            meaning = (
                f"at this threshold the model flagged {point['val_sensitivity']:.0%} of {out.question} validation "
                f"images and cleared {point['val_specificity']:.0%} of the others"
            )
            sentence = (
                f"P({out.question}) = {out.score:.1%} is {where} the {point['description']} for {out.question} "
                f"({float(point['threshold']):.1%}): {meaning}."
            )
            out.decisions.append(OperatingDecision(str(point["description"]), float(point["threshold"]), above, sentence))
    return out
