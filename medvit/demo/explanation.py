"""One image's explanation as the page shows it (``explain_image``), and its downloads.

:class:`DemoModel` holds a loaded run and the lock that serialises its explanations;
:func:`explain_image` calls the one explanation pipeline (:func:`medvit.explain.pipeline.explain`, the
same numbers as ``medvit explain``) under that lock and adds only what the page draws: the image at
display size and each stage's map and overlay on it. :func:`explanation_to_json` (the pipeline's
:meth:`~medvit.explain.pipeline.Explanation.to_json`) and :func:`render_explanation_png` are the downloads.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit.explain import figure_to_png, overlay_cam, render_grid
from medvit.explain.faithfulness import FaithfulnessConfig
from medvit.explain.pipeline import explain, resize_mask
from medvit.run_dir import Run, load_run

__all__ = [
    "DemoModel",
    "StageView",
    "Explanation",
    "load_demo_model",
    "explain_image",
    "overlay_stages",
    "explanation_to_json",
    "render_explanation_png",
]

_DISPLAY_MAX_SIDE = 320
_DEFAULT_OVERLAY_ALPHA = 0.5


@dataclass
class DemoModel:
    """A loaded run plus the lock that serialises its explanations.

    One instance is shared by every session of the page (``st.cache_resource``). Grad-CAM hooks on the
    shared model would see every thread's forward pass, so :func:`explain_image` holds ``lock`` for the
    whole call; no hook stays on the model between calls.
    """

    run: Run
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def load_demo_model(path: str | Path, device: str = "cpu") -> DemoModel:
    """Load a run directory for the page.

    Raises:
        FileNotFoundError / ValueError: as :func:`medvit.run_dir.load_run` for a missing or corrupt run.
    """
    return DemoModel(run=load_run(path, device=device))


@dataclass
class StageView:
    """One pyramid stage's explanation as the page shows it (``cam`` and ``overlay`` at display size)."""

    index: int
    name: str
    stride: int
    grid_size: tuple[int, int]
    cam: np.ndarray
    overlay: np.ndarray
    localization: dict[str, float | None] | None = None
    faithfulness: dict[str, float | None] | None = None

    @property
    def caption(self) -> str:
        """``Stage 1 · stride 4 · 56×56``."""
        return f"Stage {self.index + 1} · stride {self.stride} · {self.grid_size[0]}×{self.grid_size[1]}"


@dataclass
class Explanation:
    """One image's prediction and per-stage CAMs, for display.

    Attributes:
        result: the pipeline's :class:`medvit.explain.pipeline.Explanation` (maps and scores at the
            network input; its ``to_json()`` is the download).
        image: the displayed image, (h, w, 3) ``uint8`` (the input, at most ``_DISPLAY_MAX_SIDE`` px).
        stages: one :class:`StageView` per pyramid stage (strides 4, 8, 16, 32).
        mask: the lesion mask at the display size, (h, w) {0, 1}, or ``None``.
    """

    result: Any
    image: np.ndarray
    stages: list[StageView]
    mask: np.ndarray | None

    class_names = property(lambda self: self.result.class_names)
    probabilities = property(lambda self: self.result.probabilities)
    predicted = property(lambda self: self.result.predicted)
    target = property(lambda self: self.result.target)
    method = property(lambda self: self.result.method)
    input_size = property(lambda self: self.result.input_size)
    seconds = property(lambda self: self.result.seconds)
    run = property(lambda self: self.result.run)
    model_name = property(lambda self: self.result.model_name)
    stage_cams = property(lambda self: self.result.stage_cams)
    ranking = property(lambda self: self.result.ranking)
    has_faithfulness = property(lambda self: self.result.faithfulness is not None)


def _display_image(rgb: np.ndarray, max_side: int = _DISPLAY_MAX_SIDE) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side``, keeping the aspect ratio."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _display_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A CAM at the network input resized (bilinear) to the displayed image, clipped to [0, 1]."""
    import cv2

    if cam.shape == tuple(shape):
        return cam
    return np.clip(cv2.resize(cam, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def overlay_stages(explanation: Explanation, alpha: float) -> list[np.ndarray]:
    """The four overlays of an explanation redrawn at another opacity (no new forward pass)."""
    return [overlay_cam(explanation.image, stage.cam, alpha=alpha) for stage in explanation.stages]


PAGE_FAITHFULNESS_CURVE_STEPS = 5
"""Deletion/insertion points on the page (the CLI's default is 10): fewer extra passes per click."""


def explain_image(
    model: DemoModel,
    rgb: np.ndarray,
    method: str = "gradcam",
    target: int | None = None,
    mask: np.ndarray | None = None,
    alpha: float = _DEFAULT_OVERLAY_ALPHA,
    faithfulness: bool = False,
) -> Explanation:
    """Predict one image and explain it at every pyramid stage, for the page.

    :func:`medvit.explain.pipeline.explain` under the model's lock (localisation scores with a mask,
    ROAD and deletion/insertion scores with ``faithfulness``), then each stage's map resized to the
    displayed image and overlaid.

    Args:
        model: the loaded run (:func:`load_demo_model`).
        rgb: (H, W, 3) ``uint8`` RGB image (as :func:`read_upload` returns).
        method: a :data:`medvit.explain.CAM_METHODS` name.
        target: class index to explain; ``None`` explains the predicted class.
        mask: (H, W) lesion mask of the image ({0, 1} or bool), or ``None``.
        alpha: overlay opacity of the heat map, in [0, 1].
        faithfulness: add the per-stage faithfulness scores (extra model passes).

    Raises:
        ValueError: a bad image or mask shape, an unknown method or an out-of-range target.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay opacity must be in [0, 1], got {alpha}")
    config = FaithfulnessConfig(curve_steps=PAGE_FAITHFULNESS_CURVE_STEPS) if faithfulness else None
    result = explain(model.run, rgb, method=method, target=target, mask=mask, faithfulness=config, lock=model.lock)
    image = _display_image(rgb)
    views = []
    for stage in result.stages:
        cam = _display_map(stage.cam, image.shape[:2])
        views.append(
            StageView(
                index=stage.index,
                name=stage.name,
                stride=stage.stride,
                grid_size=stage.grid_size,
                cam=cam,
                overlay=overlay_cam(image, cam, alpha=alpha),
                localization=stage.localization_dict(),
                faithfulness=stage.faithfulness.scores() if stage.faithfulness is not None else None,
            )
        )
    display_mask = resize_mask(mask, image.shape[:2]).astype(np.uint8) if mask is not None else None
    return Explanation(result=result, image=image, stages=views, mask=display_mask)


def explanation_to_json(explanation: Explanation, source: str = "", mask_source: str | None = None) -> dict[str, Any]:
    """The page's JSON download: :meth:`medvit.explain.pipeline.Explanation.to_json`, the layout of
    ``medvit explain``'s ``explanation.json`` (``source``/``mask_source``: the names it records)."""
    return dataclasses.replace(explanation.result, source=source, mask_source=mask_source).to_json()


def render_explanation_png(explanation: Explanation, alpha: float = _DEFAULT_OVERLAY_ALPHA) -> bytes:
    """The page's grid download: the image and the four stage overlays in one PNG
    (:func:`medvit.explain.render_grid`)."""
    figure = render_grid(explanation.image, explanation.stage_cams, explanation.class_names, alpha=alpha)
    return figure_to_png(figure)
