"""Prediction files (``predictions*.csv``): read once, checked, with the file, row and column named.

``report``, ``calibrate``, the clinical sections and the demo export read prediction files through
:func:`read_predictions_file`, so that a truncated, hand-edited or foreign file stops with a one-line
message instead of a wrong figure (probabilities of 7.0 or -3.0 fitted into a temperature) or a
traceback (``No columns to parse``, ``Input contains NaN``, ``KeyError: 'label'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["PROBABILITY_TOLERANCE", "read_predictions_file"]

PROBABILITY_TOLERANCE = 1e-4
"""How far a probability may stray outside [0, 1], and a row's sum from 1 (files store 8 digits)."""

_REQUIRED = ("image", "label")


def _rows(index: pd.Index, limit: int = 5) -> str:
    lines = [str(i + 2) for i in index[:limit]]  # CSV line numbers: the header is line 1
    return ", ".join(lines) + (f", ... ({len(index)} in all)" if len(index) > limit else "")


def read_predictions_file(path: str | Path, class_names: Sequence[str], fix: str | None = None) -> pd.DataFrame:
    """Read and check a predictions CSV of a run with classes ``class_names``.

    Checked: the file parses and has rows; columns ``image``, ``label`` and ``prob_<class>`` for each
    class exist; every label is an integer in ``0..K-1``; every probability is a finite number in
    [0, 1] and each row's probabilities sum to 1.

    Args:
        path: the CSV.
        class_names: the run's classes, in label order.
        fix: what to do about a bad file (default: predict it again with ``medvit evaluate``).

    Returns:
        The frame, ``label`` as ``int64`` and probabilities as ``float64``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file, the column and the first bad rows.
    """
    path = Path(path)
    fix = fix or "predict it again with 'medvit evaluate'"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {fix}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (no header, no rows); {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"{path}: not a readable CSV ({detail}); {fix}") from error
    probability_columns = [f"prob_{name}" for name in class_names]
    missing = [c for c in (*_REQUIRED, *probability_columns) if c not in frame.columns]
    if missing:
        others = [c for c in frame.columns if c.startswith("prob_") and c not in probability_columns]
        hint = f" (it has {others}: predictions of a run with other classes)" if others else ""
        raise ValueError(f"{path}: missing column(s) {missing}{hint}; {fix}")
    if frame.empty:
        raise ValueError(f"{path}: no rows (only a header); {fix}")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = labels.isna() | (labels != labels.round()) | ~labels.between(0, len(class_names) - 1)
    if bad.any():
        raise ValueError(
            f"{path}: column 'label', row(s) {_rows(frame.index[bad])}: not a class index 0..{len(class_names) - 1}; {fix}"
        )
    frame["label"] = labels.astype(np.int64)
    for column in probability_columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values) | (values < -PROBABILITY_TOLERANCE) | (values > 1 + PROBABILITY_TOLERANCE)
        if bad.any():
            first = frame[column][bad].iloc[0]
            raise ValueError(
                f"{path}: column {column!r}, row(s) {_rows(frame.index[bad])}: {first} is not a probability "
                f"in [0, 1] (empty, NaN or out of range: a truncated or hand-edited file); {fix}"
            )
        frame[column] = values.astype(np.float64)
    sums = frame[probability_columns].sum(axis=1)
    bad = (sums - 1.0).abs() > PROBABILITY_TOLERANCE * len(class_names)
    if bad.any():
        raise ValueError(
            f"{path}: columns {probability_columns}, row(s) {_rows(frame.index[bad])}: probabilities sum to "
            f"{float(sums[bad].iloc[0]):.6g}, not 1; {fix}"
        )
    return frame
