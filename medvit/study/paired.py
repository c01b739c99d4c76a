"""Paired comparisons of backbones on the same test images, through shared bootstrap resamples.

Every backbone's predictions of one dataset are aligned on the image path; the same stratified
resamples (:func:`medvit.metrics.bootstrap.stratified_bootstrap_indices`) are applied to all of them, so
a difference's interval accounts for the images being shared (a paired bootstrap). Localisation
scores are paired per image in the same way, resampling the scored images.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.metrics import Estimate
from medvit.metrics.bootstrap import percentile_interval, stratified_bootstrap_indices

__all__ = ["align_predictions", "paired_difference", "resampled_scores", "score_keys"]


def align_predictions(frames: Mapping[str, pd.DataFrame], where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """True labels and each backbone's predicted class on the same images, in one row order.

    Raises:
        ValueError: the backbones predicted different image sets or disagree on a label.
    """
    names = list(frames)
    first = frames[names[0]].set_index("image")
    predictions = {}
    for name in names:
        frame = frames[name].set_index("image")
        if set(frame.index) != set(first.index) or frame.index.has_duplicates:
            raise ValueError(f"{where}: {name} predicted other test images than {names[0]}; rerun its evaluation")
        frame = frame.loc[first.index]
        if not np.array_equal(frame["label"].to_numpy(), first["label"].to_numpy()):
            raise ValueError(f"{where}: {name} and {names[0]} disagree on the labels of the same images")
        predictions[name] = frame["prediction"].to_numpy(dtype=np.int64)
    return first["label"].to_numpy(dtype=np.int64), predictions


def score_keys(class_names: Sequence[str]) -> list[str]:
    """The statistics :func:`resampled_scores` returns, in table order."""
    keys = ["balanced_accuracy", "macro_precision", "macro_recall", "accuracy"]
    for name in class_names:
        keys += [f"precision:{name}", f"recall:{name}"]
    return keys


def resampled_scores(labels: np.ndarray, predictions: np.ndarray, idx: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-class precision/recall, macro precision/recall, balanced accuracy and accuracy on each resample.

    Args:
        labels, predictions: (N,) class indices.
        idx: (R, N) resample indices (a row ``arange(N)`` gives the point estimate).
        class_names: the K classes.

    Returns:
        ``{key: (R,) values}`` for every key of :func:`score_keys`; a precision with no predicted image
        of its class is NaN on that resample (left out of the interval), and 0 in the macro mean.
    """
    k = len(class_names)
    y, p = labels[idx], predictions[idx]
    out: dict[str, np.ndarray] = {}
    precisions, recalls = [], []
    for c, name in enumerate(class_names):
        tp = ((p == c) & (y == c)).sum(axis=1).astype(np.float64)
        predicted = (p == c).sum(axis=1).astype(np.float64)
        actual = (y == c).sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.nan)
            recall = np.where(actual > 0, tp / np.maximum(actual, 1), np.nan)
        out[f"precision:{name}"], out[f"recall:{name}"] = precision, recall
        precisions.append(np.nan_to_num(precision, nan=0.0))
        recalls.append(recall)
    out["macro_precision"] = np.mean(precisions, axis=0)
    out["macro_recall"] = np.nanmean(np.stack(recalls), axis=0) if k else np.zeros(len(idx))
    out["balanced_accuracy"] = out["macro_recall"]
    out["accuracy"] = (y == p).mean(axis=1)
    return {key: out[key] for key in score_keys(class_names)}


def paired_difference(point: float, samples_a: np.ndarray, samples_b: np.ndarray, confidence: float = 0.95) -> Estimate:
    """``a - b`` with the percentile interval of the per-resample differences (the same resamples)."""
    return Estimate(point, *percentile_interval(np.asarray(samples_a) - np.asarray(samples_b), confidence))


def shared_resamples(labels: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(R, N) stratified resamples shared by every backbone of a dataset."""
    return stratified_bootstrap_indices(labels, n_bootstrap, seed)


def paired_image_means(values: Mapping[str, np.ndarray], n_bootstrap: int, seed: int, confidence: float = 0.95) -> dict[str, tuple[float, np.ndarray]]:
    """Each backbone's mean over the same images (NaN = not scorable, dropped pairwise later) on shared resamples.

    Returns:
        ``{backbone: (mean, (R,) resampled means)}``.
    """
    n = len(next(iter(values.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    return {name: (float(np.nanmean(v)), np.nanmean(v[idx], axis=1)) for name, v in values.items()}
