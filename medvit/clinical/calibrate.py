"""Post-hoc calibration of a run on its validation split: temperature, conformal threshold, operating points.

:func:`calibrate_run` fits, on ``predictions_val.csv``:

1. a temperature ``T`` (:func:`medvit.metrics.calibration.fit_temperature`),
2. the split-conformal score threshold of the temperature-scaled probabilities,
3. per clinical question, the thresholds for the target sensitivities and Youden's J,

stores them as ``model.json["calibration"]`` and rewrites the run's prediction files with the
scaled probabilities and a ``prediction_set`` column. Everything that reads a run
(evaluate, explain, the page, exports) applies the same record (:mod:`medvit.train.probabilities`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.boundary.predictions import read_predictions_file
from medvit.clinical.questions import run_questions
from medvit.metrics.calibration import apply_temperature, fit_temperature, nll
from medvit.metrics.conformal import conformal_quantile
from medvit.metrics.operating_points import DEFAULT_SENSITIVITIES, binary_scores, choose_thresholds
from medvit.run_dir import OOF_SPLIT, atomic_write_text, predictions_filename, read_model_info, write_model_info
from medvit.train.evaluate import evaluate_run
from medvit.train.probabilities import DEFAULT_METHOD, calibrate_frame, unscaled_probabilities

__all__ = ["DEFAULT_ALPHA", "DEFAULT_SENSITIVITIES", "calibrate_run", "fit_calibration"]

_logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.1


def fit_calibration(
    val: pd.DataFrame,
    info: Mapping[str, Any],
    alpha: float = DEFAULT_ALPHA,
    method: str = DEFAULT_METHOD,
    sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES,
    fitted_on: str = "val",
) -> dict[str, Any]:
    """The ``calibration`` record of a run from its validation predictions (nothing is written).

    ``fitted_on`` names the predictions (``val``, or ``oof`` for a cross-validated run's out-of-fold ones).

    Raises:
        ValueError: empty validation predictions, bad ``alpha``/``method``.
    """
    class_names = [str(c) for c in info["class_names"]]
    labels = val["label"].to_numpy(dtype=np.int64)
    raw = unscaled_probabilities(val, class_names, "validation predictions")
    temperature = fit_temperature(labels, raw)
    scaled = apply_temperature(raw, temperature)
    record: dict[str, Any] = {
        "fitted_on": fitted_on,
        "n_val": int(labels.size),
        "temperature": temperature,
        "val_nll_before": nll(labels, raw),
        "val_nll_after": nll(labels, scaled),
        "conformal": {
            "method": method,
            "alpha": float(alpha),
            "q": conformal_quantile(labels, scaled, alpha, method),  # type: ignore[arg-type]
        },
        "questions": [],
    }
    if not np.isfinite(record["conformal"]["q"]):
        record["conformal"]["q"] = None  # too few validation images: every class in every set
    for question in run_questions(info):
        positive = np.isin(labels, [class_names.index(c) for c in question.positive_classes])
        entry: dict[str, Any] = {"name": question.name, "positive_classes": list(question.positive_classes)}
        try:
            points = choose_thresholds(positive, binary_scores(scaled, class_names, question.positive_classes), sensitivities)
            entry["operating_points"] = [asdict(p) for p in points]
        except ValueError as error:
            _logger.warning("question %r: no operating points (%s)", question.name, error)
            entry["operating_points"] = []
        record["questions"].append(entry)
    return record


def _ensure_val_predictions(run_dir: Path, device: str) -> Path:
    path = run_dir / predictions_filename("val")
    if not path.is_file():
        _logger.info("%s not found: predicting the validation split", path)
        evaluate_run(run_dir, split="val", device=device)
    return path


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.8g")
    atomic_write_text(path, buffer.getvalue())


def calibrate_run(
    run_dir: str | Path,
    alpha: float = DEFAULT_ALPHA,
    method: str = DEFAULT_METHOD,
    sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES,
    device: str = "auto",
) -> float:
    """Fit a run's calibration on its validation split, store it in ``model.json`` and return ``T``.

    ``predictions_val.csv`` is computed first (``medvit evaluate RUN --split val``) when missing.
    The run's prediction files (test, val, train) are rewritten with the scaled probabilities and
    the prediction sets; run ``medvit report RUN`` afterwards for the report.

    A cross-validated run (``model.json["cv"]``) is fitted on its out-of-fold predictions
    (``predictions_oof.csv``, every train+val image once) instead; for a fold ensemble the temperature is
    stored as ``member_temperature`` (applied inside the ensemble) and the run's own ``temperature`` is 1.

    Args:
        run_dir: a run directory (or an exported demo model with its config).
        alpha: conformal miscoverage (0.1: sets hold the true class for >= 90 % of images).
        method: conformal score, ``lac`` or ``aps``.
        sensitivities: target sensitivities of the operating points.
        device: for predicting the validation split when it is missing.

    Raises:
        FileNotFoundError: not a run directory, or no validation data to predict.
    """
    run_dir = Path(run_dir)
    info = read_model_info(run_dir)
    class_names = [str(c) for c in info["class_names"]]
    cv = info.get("cv") or {}
    if cv:
        val_path = run_dir / predictions_filename(OOF_SPLIT)
        fix = f"resume the run ('medvit train --resume {run_dir}') to write it again"
    else:
        val_path = _ensure_val_predictions(run_dir, device)
        fix = f"delete it and run 'medvit calibrate {run_dir}' again"
    val = read_predictions_file(val_path, class_names, fix=fix)
    frames = {
        path: read_predictions_file(path, class_names)
        for path in (run_dir / predictions_filename(split) for split in ("test", "val", "train"))
        if path.is_file()
    }  # every file checked before model.json or any file is rewritten
    record = fit_calibration(val, info, alpha, method, sensitivities, fitted_on=OOF_SPLIT if cv else "val")
    fitted = {"calibration": record}  # the fitted temperature, for the predictions it was fitted on
    if cv.get("final") == "ensemble":  # the temperature lives inside the ensemble (medvit.models.ensemble)
        record = {**record, "member_temperature": record["temperature"], "temperature": 1.0}
    info["calibration"] = record
    if "questions" not in info:
        info["questions"] = [{"name": q["name"], "positive_classes": q["positive_classes"]} for q in info["calibration"]["questions"]]
    write_model_info(run_dir, info)
    if cv:
        _write_frame(val_path, calibrate_frame(val, class_names, {**info, **fitted}))
    for path, frame in frames.items():
        _write_frame(path, calibrate_frame(frame, class_names, info))
    record = fitted["calibration"]
    _logger.info(
        "%s: T = %.4f (%s NLL %.4f -> %.4f), conformal q = %s", run_dir, record["temperature"], record["fitted_on"],
        record["val_nll_before"], record["val_nll_after"], record["conformal"]["q"],
    )
    return float(record["temperature"])

