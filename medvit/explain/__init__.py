"""Explanations: a class activation map at every pyramid stage, overlays, and localisation scores.

``compute_stage_cams`` runs one forward and one backward pass for all four stages (pytorch-grad-cam
methods by name, :data:`CAM_METHODS`); ``overlay_cam``/``render_grid`` draw them; ``localization_scores``
and ``score_split`` measure how well each stage points at a lesion mask.
"""

from medvit.explain.cam import CAM_METHODS, StageCAM, StageCams, compute_stage_cams, stage_cam_class
from medvit.explain.localization import (
    DEFAULT_TOP_FRACTION,
    LocalizationScores,
    localization_scores,
    score_split,
    stage_localization_scores,
    summarize_scores,
)
from medvit.explain.overlay import denormalize_image, figure_to_png, overlay_cam, render_grid

__all__ = [
    "CAM_METHODS",
    "DEFAULT_TOP_FRACTION",
    "LocalizationScores",
    "StageCAM",
    "StageCams",
    "compute_stage_cams",
    "denormalize_image",
    "figure_to_png",
    "localization_scores",
    "overlay_cam",
    "render_grid",
    "score_split",
    "stage_cam_class",
    "stage_localization_scores",
    "summarize_scores",
]
