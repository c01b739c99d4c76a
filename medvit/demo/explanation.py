"""One image's prediction and four stage CAMs as the page shows them (``explain_image``), and its downloads.

:class:`DemoModel` holds a loaded run and the lock that serialises its explanations;
:func:`explain_image` is one prediction plus the four stage CAMs, their overlays and, with a mask,
the per-stage localisation scores; :func:`explanation_to_json` and :func:`render_explanation_png`
are the page's downloads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

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
    """One pyramid stage's explanation as the page shows it."""

    index: int
    name: str
    stride: int
    grid_size: tuple[int, int]
    cam: np.ndarray
    overlay: np.ndarray
    localization: dict[str, float] | None = None

    @property
    def caption(self) -> str:
        """``Stage 1 · stride 4 · 56×56``."""
        return f"Stage {self.index + 1} · stride {self.stride} · {self.grid_size[0]}×{self.grid_size[1]}"


@dataclass
class Explanation:
    """One image's prediction and per-stage CAMs.

    Attributes:
        class_names: the run's classes.
        probabilities: softmax over the classes, (K,).
        predicted: index of the top class.
        target: index of the class the CAMs explain.
        method: CAM method name.
        image: the displayed image, (h, w, 3) ``uint8`` (the input, at most ``_DISPLAY_MAX_SIDE`` px).
        input_size: the network input (H, W).
        stages: one :class:`StageView` per pyramid stage (strides 4, 8, 16, 32).
        mask: the lesion mask at the display size, (h, w) {0, 1}, or ``None``.
        seconds: time from image to probabilities and overlays.
        run: the run directory.
        model_name: the backbone.
        stage_cams: the :class:`~medvit.explain.StageCams` result (maps at the network input size),
            detached from the model (its ``stages`` hold no module references).
    """

    class_names: list[str]
    probabilities: np.ndarray
    predicted: int
    target: int
    method: str
    image: np.ndarray
    input_size: tuple[int, int]
    stages: list[StageView]
    mask: np.ndarray | None
    seconds: float
    run: str
    model_name: str
    stage_cams: Any = None

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """(class, probability) pairs, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]


def _display_image(rgb: np.ndarray, max_side: int = _DISPLAY_MAX_SIDE) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side``, keeping the aspect ratio."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _resize_map(values: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D float or {0, 1} map to ``shape`` (H, W)."""
    if values.shape == tuple(shape):
        return values
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    mode = "nearest" if nearest else "bilinear"
    kwargs = {} if nearest else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def overlay_stages(explanation: Explanation, alpha: float) -> list[np.ndarray]:
    """The four overlays of an explanation redrawn at another opacity (no new forward pass)."""
    from medvit.explain import overlay_cam

    return [overlay_cam(explanation.image, stage.cam, alpha=alpha) for stage in explanation.stages]


def explain_image(
    model: DemoModel,
    rgb: np.ndarray,
    method: str = "gradcam",
    target: int | None = None,
    mask: np.ndarray | None = None,
    alpha: float = _DEFAULT_OVERLAY_ALPHA,
) -> Explanation:
    """Predict one image and explain it at every pyramid stage.

    ``preprocess_image`` (the eval pipeline's resize + normalisation), then
    :func:`medvit.explain.compute_stage_cams` under the model's lock, then each CAM resized to the
    displayed image and overlaid; with a mask, each stage's CAM is scored against it
    (:func:`medvit.explain.localization_scores`).

    Args:
        model: the loaded run (:func:`load_demo_model`).
        rgb: (H, W, 3) ``uint8`` RGB image (as :func:`read_upload` returns).
        method: a :data:`medvit.explain.CAM_METHODS` name.
        target: class index to explain; ``None`` explains the predicted class.
        mask: (H, W) lesion mask of the image ({0, 1} or bool), or ``None``.
        alpha: overlay opacity of the heat map, in [0, 1].

    Raises:
        ValueError: a bad image or mask shape, an unknown method or an out-of-range target.
    """
    from medvit.data.transforms import preprocess_image
    from medvit.explain import compute_stage_cams, localization_scores, overlay_cam

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {tuple(rgb.shape)}")
    if mask is not None and tuple(mask.shape[:2]) != tuple(rgb.shape[:2]):
        raise ValueError(
            f"the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is {rgb.shape[1]}x{rgb.shape[0]}; "
            "use the image's own mask"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay opacity must be in [0, 1], got {alpha}")
    run = model.run
    start = time.perf_counter()
    tensor = preprocess_image(rgb, run.image_size, run.mean, run.std)
    with model.lock:
        cams = compute_stage_cams(run.model, tensor, target=target, method=method)
    image = _display_image(rgb)
    display_mask = input_mask = None
    if mask is not None:
        binary = (np.asarray(mask) > 0).astype(np.float32)
        display_mask = (_resize_map(binary, image.shape[:2], nearest=True) > 0.5).astype(np.uint8)
        input_mask = _resize_map(binary, tuple(run.image_size), nearest=True) > 0.5
    views = []
    for index, (cam, stage, grid) in enumerate(zip(cams.cams, cams.stages, cams.grid_sizes)):
        scores = None
        if input_mask is not None and input_mask.any():  # scored at the network input, as medvit explain does
            scores = dataclasses.asdict(localization_scores(cam, input_mask))
        cam_display = np.clip(_resize_map(cam, image.shape[:2]), 0.0, 1.0)
        views.append(
            StageView(
                index=index,
                name=stage.name,
                stride=int(stage.reduction),
                grid_size=tuple(int(g) for g in grid),
                cam=cam_display,
                overlay=overlay_cam(image, cam_display, alpha=alpha),
                localization=scores,
            )
        )
    probabilities = np.asarray(cams.probabilities, dtype=np.float64)
    # keep the result without references to the shared model's modules (it may be cached and pickled)
    detached = dataclasses.replace(cams, stages=[dataclasses.replace(s, module=None) for s in cams.stages])
    return Explanation(
        class_names=list(run.class_names),
        probabilities=probabilities,
        predicted=int(probabilities.argmax()),
        target=int(cams.target),
        method=method,
        image=image,
        input_size=tuple(run.image_size),
        stages=views,
        mask=display_mask,
        seconds=time.perf_counter() - start,
        run=str(run.path),
        model_name=run.model_name,
        stage_cams=detached,
    )


def explanation_to_json(explanation: Explanation, source: str = "") -> dict[str, Any]:
    """The page's JSON download: prediction, probabilities, stages and localisation scores."""
    names = explanation.class_names
    return {
        "source": source,
        "run": explanation.run,
        "model": explanation.model_name,
        "input_size": list(explanation.input_size),
        "method": explanation.method,
        "predicted": names[explanation.predicted],
        "target": names[explanation.target],
        "probabilities": {names[i]: float(p) for i, p in enumerate(explanation.probabilities)},
        "stages": [
            {
                "stage": view.index + 1,
                "module": view.name,
                "stride": view.stride,
                "grid_size": list(view.grid_size),
                **({"localization": view.localization} if view.localization is not None else {}),
            }
            for view in explanation.stages
        ],
        "seconds": explanation.seconds,
        "notice": "research use only, not for diagnosis",
    }


def render_explanation_png(explanation: Explanation, alpha: float = _DEFAULT_OVERLAY_ALPHA) -> bytes:
    """The page's grid download: the image and the four stage overlays in one PNG
    (:func:`medvit.explain.render_grid`)."""
    from medvit.explain import figure_to_png, render_grid

    figure = render_grid(explanation.image, explanation.stage_cams, explanation.class_names, alpha=alpha)
    return figure_to_png(figure)
