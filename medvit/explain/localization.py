"""How well each stage's CAM points at the lesion: pointing game, energy inside the mask, top-k IoU.

Definitions (one CAM ``c`` in [0, 1] and one binary lesion mask ``m`` of the same (H, W)):

* **pointing game**: 1 if the CAM's maximum lies inside the lesion, else 0 (Zhang et al., "Top-down
  neural attention by excitation backprop", ECCV 2016, without the 15-pixel tolerance). With several
  pixels at the maximum, the hit is the share of them inside the lesion.
* **energy inside the mask**: ``sum(c * m) / sum(c)``, the share of the CAM's mass on the lesion
  (the "energy-based pointing game" of Score-CAM, Wang et al., CVPR-W 2020, arXiv:1910.01279).
  A uniform CAM scores the lesion's area fraction.
* **IoU**: the CAM is binarised at its top ``top_fraction`` of pixels (threshold = the value of the
  ``ceil(top_fraction * H * W)``-th largest pixel; ties at the threshold are kept, zero pixels never are)
  and compared with the mask: ``|T ∩ m| / |T ∪ m|``.

A CAM that is constant (no location at all, e.g. Grad-CAM when every weight is negative) scores NaN on
all three; :func:`summarize_scores` counts only the finite values. Images with an empty mask (BUSI's
"normal" class) are skipped at dataset level.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from medvit.explain.cam import StageCams
from medvit.metrics.bootstrap import bootstrap_estimate
from medvit.explain.options import DEFAULT_TOP_FRACTION

__all__ = [
    "DEFAULT_TOP_FRACTION",
    "LocalizationScores",
    "SCORE_NAMES",
    "localization_scores",
    "stage_localization_scores",
    "summarize_scores",
]

_logger = logging.getLogger(__name__)

SCORE_NAMES = ("pointing", "energy", "iou")


@dataclass(frozen=True)
class LocalizationScores:
    """Localisation of one CAM against one lesion mask (definitions in the module docstring)."""

    pointing: float
    energy: float
    iou: float


def _check_pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if cam.ndim != 2 or cam.shape != mask.shape:
        raise ValueError(
            f"CAM of shape {cam.shape} and mask of shape {mask.shape} must both be (H, W) of one size; "
            "resize the mask to the model's input size (nearest) first"
        )
    if np.any(cam < 0) or not np.all(np.isfinite(cam)):
        raise ValueError("the CAM must be finite and non-negative (compute_stage_cams returns maps in [0, 1])")
    return cam, mask > 0.5 if mask.dtype.kind == "f" else mask.astype(bool)


def localization_scores(
    cam: np.ndarray, mask: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION
) -> LocalizationScores:
    """Pointing game, energy inside the mask and top-``top_fraction`` IoU of one CAM.

    Args:
        cam: CAM (H, W), non-negative (e.g. one map of :class:`StageCams`).
        mask: Lesion mask (H, W) or (1, H, W): bool, {0, 1} integers or floats (> 0.5 is lesion).
        top_fraction: Share of the pixels kept when binarising the CAM for the IoU, in (0, 1].

    Returns:
        :class:`LocalizationScores`; all NaN for a constant CAM.

    Raises:
        ValueError: Shapes differ, the mask is empty, the CAM is negative, or ``top_fraction`` is out of range.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1]; got {top_fraction}")
    cam, lesion = _check_pair(cam, mask)
    if not lesion.any():
        raise ValueError("the mask is empty: there is no lesion to localise (skip images without one)")
    peak = cam.max()
    if peak <= cam.min():
        return LocalizationScores(math.nan, math.nan, math.nan)
    pointing = float(lesion[cam == peak].mean())
    energy = float((cam * lesion).sum() / cam.sum())
    keep = max(1, math.ceil(top_fraction * cam.size))
    threshold = np.partition(cam.ravel(), cam.size - keep)[cam.size - keep]
    top = (cam >= threshold) & (cam > 0)
    iou = float((top & lesion).sum() / (top | lesion).sum())
    return LocalizationScores(pointing, energy, iou)


def stage_localization_scores(
    stage_cams: StageCams, mask: np.ndarray | torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION
) -> list[LocalizationScores]:
    """:func:`localization_scores` of each stage's CAM against one mask at the input size."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return [localization_scores(cam, mask, top_fraction) for cam in stage_cams.cams]


def _mean_ci(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float, float, float]:
    """Mean, standard deviation and percentile-bootstrap CI of the finite values (NaN when none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan,) * 4
    mean, std = float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan
    if values.size < 2 or np.all(values == values[0]):
        return mean, std, mean, mean
    # the project's one bootstrap (medvit.metrics.bootstrap), over images (one stratum), as the reports' CIs
    interval = bootstrap_estimate(
        lambda idx: values[idx].mean(axis=-1), np.zeros(values.size, dtype=np.int64),
        n_bootstrap=n_resamples, seed=seed, confidence=confidence, vectorised=True,
    )
    return mean, std, interval.low, interval.high


def summarize_scores(
    per_image: Sequence[Sequence[LocalizationScores]],
    stages: Sequence[object],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-stage table over images: mean, std and bootstrap CI of each score.

    Args:
        per_image: For each image, the four stages' :class:`LocalizationScores`.
        stages: The four :class:`~medvit.models.StageInfo` (for names and strides).
        confidence: Level of the percentile-bootstrap interval of the mean.
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        One row per stage: ``stage``, ``module``, ``stride``, ``n`` and for each score ``<score>``,
        ``<score>_std``, ``<score>_ci_low``, ``<score>_ci_high`` (``n_<score>`` counts finite values).
    """
    rows = []
    for index, stage in enumerate(stages):
        row: dict[str, object] = {
            "stage": index + 1,
            "module": getattr(stage, "name", str(stage)),
            "stride": getattr(stage, "reduction", 2 ** (index + 2)),
            "n": len(per_image),
        }
        for name in SCORE_NAMES:
            values = np.array([getattr(scores[index], name) for scores in per_image], dtype=np.float64)
            mean, std, low, high = _mean_ci(values, confidence, n_resamples, seed)
            row.update({name: mean, f"{name}_std": std, f"{name}_ci_low": low, f"{name}_ci_high": high})
            row[f"n_{name}"] = int(np.isfinite(values).sum())
        rows.append(row)
    return pd.DataFrame(rows)
