"""Overlays of stage CAMs on the image: one colour-mapped overlay, and the 1×5 stage grid figure."""

from __future__ import annotations

import io
import logging
from typing import Sequence

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import show_cam_on_image

from medvit.explain.cam import StageCams

__all__ = ["denormalize_image", "figure_to_png", "overlay_cam", "render_curves", "render_grid", "stage_title"]

_logger = logging.getLogger(__name__)


def denormalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the model's normalisation: what the model saw, as RGB float32 (H, W, 3) in [0, 1].

    Args:
        image: Normalised image, (3, H, W) or (1, 3, H, W).
        mean: Per-channel mean used to normalise it.
        std: Per-channel standard deviation used to normalise it.
    """
    if image.ndim == 4:
        image = image[0]
    x = image.detach().float().cpu()
    x = x * torch.as_tensor(std, dtype=x.dtype)[:, None, None] + torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def _as_float_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 or float in [0, 1], (H, W, 3) -> float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3); got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    if image.min() < 0 or image.max() > 1:
        raise ValueError(
            f"a float image must lie in [0, 1] (got {image.min():.3g}..{image.max():.3g}); "
            "pass uint8 or undo the normalisation first (denormalize_image)"
        )
    return image


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A JET colour map of ``cam`` over ``image`` (pytorch-grad-cam's ``show_cam_on_image``).

    Args:
        image: RGB image, (H, W, 3), uint8 or float in [0, 1].
        cam: Map in [0, 1]; resized bilinearly to the image when the sizes differ.
        alpha: Weight of the heat map (``1 - image_weight``), in [0, 1].

    Returns:
        RGB uint8 (H, W, 3).

    Raises:
        ValueError: Not an RGB image, a float image outside [0, 1], or alpha outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    rgb = _as_float_rgb(image)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if cam.shape != rgb.shape[:2]:
        cam = cv2.resize(cam, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1.0 - alpha)


def stage_title(stage_cams: StageCams, index: int) -> str:
    """``"stage 2 · stride 8 · 28×28"``: the stage, its stride and its feature-grid resolution."""
    stage = stage_cams.stages[index]
    title = f"stage {index + 1} · stride {stage.reduction}"
    if index < len(stage_cams.grid_sizes):
        height, width = stage_cams.grid_sizes[index]
        title += f" · {height}×{width}"
    return title


def render_grid(
    image: np.ndarray,
    stage_cams: StageCams,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    panel_size: float = 2.6,
) -> Figure:
    """A 1×5 figure: the image, then each stage's overlay titled with stage, stride and resolution.

    The figure title names the explained class with its probability and the method. The figure is a
    plain ``matplotlib.figure.Figure`` (no pyplot state); save it with :func:`figure_to_png`.

    Args:
        image: The image the model saw, RGB (H, W, 3), uint8 or float in [0, 1].
        stage_cams: Result of :func:`~medvit.explain.compute_stage_cams`.
        class_names: Names of the model's classes; default ``class 0``, ``class 1``, ...
        alpha: Heat-map weight of each overlay.
        panel_size: Width of one panel in inches.
    """
    num_classes = len(stage_cams.probabilities)
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} outputs; pass one name per class")
    target_name = names[stage_cams.target]
    probability = float(stage_cams.probabilities[stage_cams.target])
    rgb = _as_float_rgb(image)
    height, width = rgb.shape[:2]
    figure = Figure(figsize=(panel_size * 5, panel_size * height / width + 0.9), layout="constrained")
    axes = figure.subplots(1, 5)
    axes[0].imshow(rgb)
    axes[0].set_title(f"input · {height}×{width}\n{target_name}: p={probability:.3f}", fontsize=9)
    for index, cam in enumerate(stage_cams.cams):
        axes[index + 1].imshow(overlay_cam(rgb, cam, alpha))
        axes[index + 1].set_title(f"{stage_title(stage_cams, index)}\n{target_name}: p={probability:.3f}", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(f"{stage_cams.method} for class '{target_name}' (p={probability:.3f})", fontsize=11)
    return figure


def figure_to_png(figure: Figure, dpi: int = 100) -> bytes:
    """Encode a figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render_curves(
    fractions: Sequence[float],
    deletion: Sequence[Sequence[float]],
    insertion: Sequence[Sequence[float]],
    labels: Sequence[str],
    target_name: str = "target",
) -> Figure:
    """Deletion and insertion curves of each stage side by side (a plain ``Figure``).

    Args:
        fractions: Share of the pixels removed (deletion) or kept (insertion), the x axis.
        deletion: Per stage, the target probability at each fraction, most relevant pixels removed first.
        insertion: Per stage, the target probability at each fraction, most relevant pixels kept first.
        labels: One legend entry per stage.
        target_name: The explained class, for the y label.
    """
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, curves, title in ((axes[0], deletion, "deletion (lower area = faithful)"),
                                (axes[1], insertion, "insertion (higher area = faithful)")):
        for curve, label in zip(curves, labels):
            if len(curve):
                axis.plot(fractions, curve, marker="o", markersize=3, label=label)
        axis.set_title(title, fontsize=10)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].set_xlabel("share of pixels removed, most relevant first")
    axes[1].set_xlabel("share of pixels kept, most relevant first")
    axes[0].set_ylabel(f"p({target_name})")
    axes[1].legend(fontsize=8)
    return figure
