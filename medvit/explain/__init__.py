"""Explanations: a class activation map at every pyramid stage, overlays, and scores users can rely on.

``explain``/``explain_tensor`` is the one pipeline (CLI, page, tables, benchmarks) and returns an
``Explanation`` with one ``to_json()``. Inside: ``compute_stage_cams`` runs one forward and one backward
pass for all four stages (pytorch-grad-cam methods by name, :data:`CAM_METHODS`); ``overlay_cam``/
``render_grid`` draw them; ``localization_scores`` measure how well each stage points at a lesion mask,
``stage_faithfulness`` how much the score depends on what it highlights (ROAD, deletion/insertion), and
``cascading_randomization`` whether it changes when the model's weights are destroyed; ``score_split``
gives all of them per stage over a manifest split.

The names below are loaded on first use (PEP 562), so that ``medvit.explain.options`` (method names and
defaults, used by the CLI's ``--help``) imports without torch and pytorch-grad-cam.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "CAM_METHODS": "cam",
    "StageCAM": "cam",
    "StageCams": "cam",
    "compute_stage_cams": "cam",
    "stage_cam_class": "cam",
    "CAM_METHOD_NAMES": "options",
    "DEFAULT_TOP_FRACTION": "options",
    "LocalizationScores": "localization",
    "localization_scores": "localization",
    "score_split": "split",
    "SplitScores": "split",
    "Explanation": "pipeline",
    "StageExplanation": "pipeline",
    "explain": "pipeline",
    "explain_tensor": "pipeline",
    "resize_mask": "pipeline",
    "resolve_class": "pipeline",
    "FaithfulnessConfig": "faithfulness",
    "StageFaithfulness": "faithfulness",
    "stage_faithfulness": "faithfulness",
    "StageSanity": "sanity",
    "cascading_randomization": "sanity",
    "render_curves": "overlay",
    "stage_localization_scores": "localization",
    "summarize_scores": "localization",
    "denormalize_image": "overlay",
    "figure_to_png": "overlay",
    "overlay_cam": "overlay",
    "render_grid": "overlay",
}

__all__ = sorted(_SOURCES)

if TYPE_CHECKING:
    from medvit.explain.cam import CAM_METHODS, StageCAM, StageCams, compute_stage_cams, stage_cam_class
    from medvit.explain.localization import (
        LocalizationScores,
        localization_scores,
        stage_localization_scores,
        summarize_scores,
    )
    from medvit.explain.options import CAM_METHOD_NAMES, DEFAULT_TOP_FRACTION
    from medvit.explain.faithfulness import FaithfulnessConfig, StageFaithfulness, stage_faithfulness
    from medvit.explain.overlay import denormalize_image, figure_to_png, overlay_cam, render_curves, render_grid
    from medvit.explain.pipeline import (
        Explanation,
        StageExplanation,
        explain,
        explain_tensor,
        resize_mask,
        resolve_class,
    )
    from medvit.explain.sanity import StageSanity, cascading_randomization
    from medvit.explain.split import SplitScores, score_split


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'medvit.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medvit.explain.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
