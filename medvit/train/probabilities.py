"""A run's calibration applied to probabilities and prediction files (no fitting, no model).

The ``calibration`` record of ``model.json`` (written by :func:`medvit.clinical.calibrate.calibrate_run`)
holds the temperature and the conformal threshold; these helpers apply them. A predictions file
records the temperature its ``prob_*`` columns carry (column ``temperature``, absent = 1), so the
unscaled probabilities can always be recovered for "before" figures. ``T = 1`` leaves
probabilities bit for bit as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import softmax
import pandas as pd

from medvit.metrics.calibration import apply_temperature, log_probabilities
from medvit.metrics.conformal import format_set, prediction_sets

__all__ = [
    "SET_COLUMN",
    "TEMPERATURE_COLUMN",
    "calibrate_frame",
    "calibrated_probabilities",
    "prediction_set_names",
    "probability_columns",
    "run_temperature",
    "unscaled_probabilities",
]

DEFAULT_METHOD = "lac"
TEMPERATURE_COLUMN = "temperature"
SET_COLUMN = "prediction_set"


def probability_columns(frame: pd.DataFrame, class_names: Sequence[str], where: str | Path = "predictions") -> np.ndarray:
    """The (N, K) ``prob_<class>`` columns of a predictions frame.

    Raises:
        ValueError: a class column is missing (the file belongs to another run).
    """
    columns = [f"prob_{name}" for name in class_names]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; re-run 'medvit evaluate' with this run")
    return frame[columns].to_numpy(dtype=np.float64)


def unscaled_probabilities(frame: pd.DataFrame, class_names: Sequence[str], where: str | Path = "predictions") -> np.ndarray:
    """The model's own (``T = 1``) probabilities of a predictions frame, undoing its ``temperature`` column."""
    probs = probability_columns(frame, class_names, where)
    if TEMPERATURE_COLUMN not in frame.columns:
        return probs
    file_t = frame[TEMPERATURE_COLUMN].to_numpy(dtype=np.float64)
    if np.all(file_t == 1.0):
        return probs
    return softmax(log_probabilities(probs) * file_t[:, None], axis=1)


def run_temperature(info: Mapping[str, Any]) -> float:
    """The temperature stored in ``model.json`` (1.0 when the run was never calibrated)."""
    return float((info.get("calibration") or {}).get("temperature", 1.0))


def calibrated_probabilities(probabilities: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    """Apply a run's temperature to its model's probabilities (unchanged for ``T = 1``)."""
    return apply_temperature(probabilities, run_temperature(info))


def prediction_set_names(probabilities: np.ndarray, class_names: Sequence[str], info: Mapping[str, Any]) -> list[str] | None:
    """``benign|malignant`` per image from the run's conformal record (``None`` if it has none).

    ``probabilities`` must already be temperature-scaled (the record was fitted on those).
    """
    conformal = (info.get("calibration") or {}).get("conformal")
    if not conformal:
        return None
    q = float("inf") if conformal.get("q") is None else float(conformal["q"])
    member = prediction_sets(probabilities, q, conformal.get("method", DEFAULT_METHOD))
    return [format_set(row, class_names) for row in member]


def calibrate_frame(frame: pd.DataFrame, class_names: Sequence[str], info: Mapping[str, Any]) -> pd.DataFrame:
    """A predictions frame with the run's calibration applied: ``prob_*`` scaled by its temperature,
    a ``temperature`` column (only when ``T != 1``) and ``prediction_set`` (when the run has a
    conformal record). Without a ``calibration`` record the frame is returned unchanged."""
    if not info.get("calibration"):
        return frame
    out = frame.copy()
    raw = unscaled_probabilities(frame, class_names)
    temperature = run_temperature(info)
    probs = apply_temperature(raw, temperature)
    for c, name in enumerate(class_names):
        out[f"prob_{name}"] = probs[:, c]
    out = out.drop(columns=[TEMPERATURE_COLUMN, SET_COLUMN], errors="ignore")
    if temperature != 1.0:
        out[TEMPERATURE_COLUMN] = temperature
    sets = prediction_set_names(probs, class_names, info)
    if sets is not None:
        out[SET_COLUMN] = sets
    return out
