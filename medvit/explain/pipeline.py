"""The one explanation pipeline: image + run + method + target (+ mask) -> :class:`Explanation`.

``medvit explain``, the demo page, the split tables and the benchmarks all call :func:`explain` (an RGB
image as read by :func:`medvit.data.images.read_image`) or :func:`explain_tensor` (an input already through
the eval pipeline, e.g. a manifest batch), and serialise with :meth:`Explanation.to_json`, so a given
image and mask give the same numbers everywhere. Steps:

1. ``preprocess_image`` (the eval pipeline's resize + normalisation); a mask goes through
   :func:`resize_mask` (the eval pipeline's nearest-exact resize) to the network input;
2. :func:`~medvit.explain.cam.compute_stage_cams`: prediction and four stage CAMs from one pass; the
   probabilities use the run's calibrated temperature when it has one;
3. with a non-empty mask, :func:`~medvit.explain.localization.localization_scores` per stage;
4. optionally :func:`~medvit.explain.faithfulness.stage_faithfulness` (ROAD, deletion/insertion) and
   :func:`~medvit.explain.sanity.cascading_randomization` (model-randomisation check) per stage.

Every model pass runs under ``lock`` when one is given (the page's shared model, see
:mod:`medvit.explain.cam`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ContextManager, Sequence

import numpy as np
import torch
from scipy.special import softmax

from medvit.data.transforms import Resize2d, preprocess_image
from medvit.explain.cam import StageCams, compute_stage_cams
from medvit.explain.faithfulness import FaithfulnessConfig, StageFaithfulness, stage_faithfulness
from medvit.explain.localization import SCORE_NAMES, LocalizationScores, localization_scores
from medvit.explain.options import DEFAULT_TOP_FRACTION
from medvit.explain.overlay import denormalize_image
from medvit.explain.sanity import CASCADE, SANITY_MAX_SPEARMAN, StageSanity, cascading_randomization
from medvit.models.ensemble import FoldEnsemble

__all__ = [
    "NOTICE",
    "Explanation",
    "StageExplanation",
    "explain",
    "explain_tensor",
    "resize_mask",
    "resolve_class",
]

_logger = logging.getLogger(__name__)

NOTICE = "research use only, not for diagnosis"


def resolve_class(target: str | int | None, class_names: Sequence[str]) -> int | None:
    """A class given by name or index (``"malignant"``, ``"2"``, ``2``) -> its index; None stays None.

    Raises:
        ValueError: Unknown name or index out of range (the message lists the classes).
    """
    if target is None:
        return None
    names = list(class_names)
    if isinstance(target, str) and target in names:
        return names.index(target)
    try:
        index = int(target)
    except (TypeError, ValueError):
        index = None
    choices = ", ".join(f"{k}={name}" for k, name in enumerate(names))
    if index is None:
        raise ValueError(f"unknown target class {target!r}; use a class name or index ({choices})")
    if not 0 <= index < len(names):
        raise ValueError(f"target class {index} is out of range for {len(names)} classes; use one of ({choices})")
    return index


def resize_mask(mask: np.ndarray | torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """A lesion mask (H, W) (bool, {0, 1} or {0, 255}) -> bool (h, w) at ``size``, as the eval pipeline does it
    (:class:`~medvit.data.transforms.Resize2d`, nearest-exact)."""
    binary = torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float32)
    if binary.ndim != 2:
        raise ValueError(f"a mask is one (H, W) array; got shape {tuple(binary.shape)}")
    return Resize2d(tuple(size), mode="nearest")(binary[None])[0].numpy() > 0.5


@dataclass
class StageExplanation:
    """One pyramid stage's map and scores.

    Attributes:
        index: 0..3 (strides 4, 8, 16, 32).
        name: The stage module's name.
        stride: The stage's reduction.
        num_chs: Channels of the stage map.
        grid_size: Feature grid (h, w) before upsampling.
        cam: The map at the network input size, float32 in [0, 1].
        localization: Scores against the mask, or None (no mask or an empty one).
        faithfulness: ROAD and deletion/insertion scores, or None (not asked).
        sanity: The model-randomisation check, or None (not asked).
    """

    index: int
    name: str
    stride: int
    num_chs: int
    grid_size: tuple[int, int]
    cam: np.ndarray
    localization: LocalizationScores | None = None
    faithfulness: StageFaithfulness | None = None
    sanity: StageSanity | None = None

    @property
    def caption(self) -> str:
        """``Stage 1 · stride 4 · 56×56``."""
        return f"Stage {self.index + 1} · stride {self.stride} · {self.grid_size[0]}×{self.grid_size[1]}"

    def localization_dict(self) -> dict[str, float | None] | None:
        """The localisation scores with NaN (a constant CAM) as None, or None without scores."""
        if self.localization is None:
            return None
        return {name: _finite_or_none(getattr(self.localization, name)) for name in SCORE_NAMES}

    def to_json(self) -> dict[str, Any]:
        peak_y, peak_x = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        record: dict[str, Any] = {
            "stage": self.index + 1,
            "module": self.name,
            "stride": self.stride,
            "shape": [self.num_chs, *self.grid_size],
            "resolution": list(self.grid_size),
            "max_location": [int(peak_y), int(peak_x)],
            "max_value": float(self.cam[peak_y, peak_x]),
            "mean_value": float(self.cam.mean()),
        }
        if self.localization is not None:
            record["localization"] = self.localization_dict()
        if self.faithfulness is not None:
            record["faithfulness"] = self.faithfulness.to_json()
        if self.sanity is not None:
            record["sanity"] = self.sanity.to_json()
        return record


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


@dataclass
class Explanation:
    """One image's prediction and per-stage explanation (the result of :func:`explain`).

    Attributes:
        run: The run directory.
        model_name: The backbone.
        class_names: The run's classes.
        input_size: Network input (H, W).
        method: CAM method name.
        probabilities: Softmax over the classes, (K,) float64 (calibrated when ``temperature`` is set).
        target: Index of the class the maps explain.
        stages: One :class:`StageExplanation` per stage.
        image: What the model saw, RGB float32 (H, W, 3) in [0, 1] at the input size.
        mask: The lesion mask at the input size (bool), or None.
        top_fraction: Share of CAM pixels kept for the IoU.
        temperature: The run's calibration temperature, or None (plain softmax).
        faithfulness: The settings of the faithfulness scores, or None (not asked).
        sanity_seed: Seed of the randomisation check, or None (not asked).
        source: Name of the image (path or upload name).
        mask_source: Name of the mask, or None.
        seconds: Wall time of the whole call.
    """

    run: str
    model_name: str
    class_names: list[str]
    input_size: tuple[int, int]
    method: str
    probabilities: np.ndarray
    target: int
    stages: list[StageExplanation]
    image: np.ndarray
    mask: np.ndarray | None = None
    top_fraction: float = DEFAULT_TOP_FRACTION
    temperature: float | None = None
    faithfulness: FaithfulnessConfig | None = None
    sanity_seed: int | None = None
    source: str = ""
    mask_source: str | None = None
    seconds: float = 0.0
    _stage_cams: StageCams | None = field(default=None, repr=False)

    @property
    def predicted(self) -> int:
        """Index of the most probable class."""
        return int(np.argmax(self.probabilities))

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """(class, probability) pairs, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    @property
    def stage_cams(self) -> StageCams:
        """The maps as :class:`~medvit.explain.cam.StageCams` (for :func:`~medvit.explain.render_grid`),
        without references to the model's modules."""
        return self._stage_cams

    def to_json(self) -> dict[str, Any]:
        """The one JSON layout of an explanation (CLI file, page download, reports)."""
        names = self.class_names
        record: dict[str, Any] = {
            "image": self.source,
            "run": self.run,
            "model": self.model_name,
            "method": self.method,
            "input_size": list(self.input_size),
            "probabilities": {name: float(p) for name, p in zip(names, self.probabilities)},
            "temperature": self.temperature,
            "predicted": names[self.predicted],
            "target": {
                "index": self.target,
                "name": names[self.target],
                "probability": float(self.probabilities[self.target]),
            },
            "stages": [stage.to_json() for stage in self.stages],
        }
        if self.mask is not None:
            record["mask"] = self.mask_source
            record["top_fraction"] = self.top_fraction
            record["mask_is_empty"] = not bool(self.mask.any())
        if self.faithfulness is not None:
            record["faithfulness"] = self.faithfulness.to_json()
        if self.sanity_seed is not None:
            record["sanity"] = {
                "cascade": list(CASCADE),
                "randomisation": "each parameter tensor's values permuted, head first",
                "flag_at_spearman": SANITY_MAX_SPEARMAN,
                "seed": self.sanity_seed,
            }
        record["seconds"] = self.seconds
        record["notice"] = NOTICE
        return record


def _calibrated(cams: StageCams, temperature: float | None) -> np.ndarray:
    if temperature is None or float(temperature) == 1.0 or cams.logits is None:  # T = 1: today's softmax, bit for bit
        return np.asarray(cams.probabilities, dtype=np.float64)
    return softmax(np.asarray(cams.logits, dtype=np.float64) / float(temperature), axis=-1)


def _run_temperature(run: Any) -> float | None:
    temperature = getattr(run, "temperature", None)
    return float(temperature) if temperature is not None else None


def explain_tensor(
    run: Any,
    tensor: torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    method: str = "gradcam",
    target: str | int | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    faithfulness: FaithfulnessConfig | bool | None = None,
    sanity: bool | int = False,
    lock: ContextManager | None = None,
    source: str = "",
    mask_source: str | None = None,
) -> Explanation:
    """Explain one input that already went through the eval pipeline (see the module docstring).

    Args:
        run: A loaded run (:func:`medvit.run_dir.load_run`): its model, class names and normalisation.
        tensor: The normalised input, (3, H, W) or (1, 3, H, W), at the run's input size.
        mask: Lesion mask at the input size, (H, W) (bool, {0, 1} or floats > 0.5), or None.
        method: A :data:`~medvit.explain.CAM_METHODS` name.
        target: Class to explain, by name or index; None: the predicted class.
        top_fraction: Share of CAM pixels kept for the IoU.
        faithfulness: True (default settings) or a :class:`FaithfulnessConfig` to add ROAD and
            deletion/insertion scores per stage.
        sanity: True (seed 0) or a seed to add the cascading-randomisation check per stage.
        lock: Held around every model pass (a ``threading.Lock`` for a shared model).
        source: Name of the image, for the JSON.
        mask_source: Name of the mask, for the JSON.

    Raises:
        ValueError: A bad shape, an unknown method or class, a mask of another size.
    """
    start = time.perf_counter()
    image = tensor if tensor.ndim == 4 else tensor[None]
    size = tuple(image.shape[-2:])
    input_mask = None
    if mask is not None:
        input_mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        input_mask = input_mask[0] if input_mask.ndim == 3 and input_mask.shape[0] == 1 else input_mask
        if tuple(input_mask.shape) != size:
            raise ValueError(
                f"the mask is {input_mask.shape[-1]}x{input_mask.shape[0]} (WxH) but the network input is "
                f"{size[1]}x{size[0]}; resize it with resize_mask (or pass the image's own mask to explain)"
            )
        input_mask = input_mask > 0.5 if input_mask.dtype.kind == "f" else input_mask.astype(bool)
    target_index = resolve_class(target, run.class_names)
    config = FaithfulnessConfig() if faithfulness is True else (faithfulness or None)
    sanity_seed = None if sanity is False or sanity is None else (0 if sanity is True else int(sanity))
    temperature = _run_temperature(run)
    if sanity_seed is not None and isinstance(run.model, FoldEnsemble):
        raise ValueError(
            "the model-randomisation check perturbs one network; run it on a fold member (RUN/fold_0) of this "
            "cross-validated run instead of its ensemble"
        )
    with lock if lock is not None else contextlib.nullcontext():
        cams = compute_stage_cams(run.model, image, target=target_index, method=method)
        faithful = stage_faithfulness(run.model, image, cams.cams, cams.target, config, temperature) if config else None
        checks = cascading_randomization(run.model, [image], [cams], method, seed=sanity_seed)[0] if sanity_seed is not None else None
    has_lesion = input_mask is not None and bool(input_mask.any())
    if input_mask is not None and not has_lesion:
        _logger.warning("%s: the mask is empty; no localisation scores", mask_source or source or "image")
    stages = []
    for index, (info, cam, grid) in enumerate(zip(cams.stages, cams.cams, cams.grid_sizes)):
        stages.append(
            StageExplanation(
                index=index,
                name=info.name,
                stride=int(info.reduction),
                num_chs=int(info.num_chs),
                grid_size=tuple(int(g) for g in grid),
                cam=cam,
                localization=localization_scores(cam, input_mask, top_fraction) if has_lesion else None,
                faithfulness=faithful[index] if faithful else None,
                sanity=checks[index] if checks else None,
            )
        )
    detached = dataclasses.replace(cams, stages=[dataclasses.replace(s, module=None) for s in cams.stages])
    return Explanation(
        run=str(run.path),
        model_name=run.model_name,
        class_names=list(run.class_names),
        input_size=size,
        method=method,
        probabilities=_calibrated(cams, temperature),
        target=int(cams.target),
        stages=stages,
        image=denormalize_image(image, run.mean, run.std),
        mask=input_mask,
        top_fraction=top_fraction,
        temperature=temperature,
        faithfulness=config,
        sanity_seed=sanity_seed,
        source=source,
        mask_source=mask_source,
        seconds=time.perf_counter() - start,
        _stage_cams=detached,
    )


def explain(
    run: Any,
    rgb: np.ndarray,
    method: str = "gradcam",
    target: str | int | None = None,
    mask: np.ndarray | None = None,
    **kwargs: Any,
) -> Explanation:
    """Explain one RGB image with a run's model: the pipeline of the module docstring.

    Args:
        run: A loaded run (:func:`medvit.run_dir.load_run`).
        rgb: (H, W, 3) ``uint8`` RGB image (:func:`medvit.data.images.read_image`).
        method: A :data:`~medvit.explain.CAM_METHODS` name.
        target: Class to explain, by name or index; None: the predicted class.
        mask: The image's lesion mask, (H, W) at the image's size (:func:`medvit.data.images.read_mask`).
        **kwargs: As :func:`explain_tensor` (``top_fraction``, ``faithfulness``, ``sanity``, ``lock``,
            ``source``, ``mask_source``).

    Raises:
        ValueError: Not an (H, W, 3) uint8 image, a mask of another size, an unknown method or class.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {tuple(rgb.shape)}")
    if mask is not None and tuple(np.shape(mask)[:2]) != tuple(rgb.shape[:2]):
        raise ValueError(
            f"the mask is {np.shape(mask)[1]}x{np.shape(mask)[0]} (WxH) but the image is {rgb.shape[1]}x{rgb.shape[0]}; "
            "use the image's own mask"
        )
    start = time.perf_counter()
    tensor = preprocess_image(rgb, run.image_size, run.mean, run.std)
    input_mask = resize_mask(mask, run.image_size) if mask is not None else None
    explanation = explain_tensor(run, tensor, input_mask, method=method, target=target, **kwargs)
    explanation.seconds = time.perf_counter() - start
    return explanation
