"""Class activation maps at every pyramid stage from one forward and one backward pass.

Built on pytorch-grad-cam: each method here is that library's class (``GradCAM``, ``GradCAMPlusPlus``,
...) with :class:`StageCAM` in front of it, so the per-layer maths (``get_cam_weights`` /
``get_cam_image``) is pytorch-grad-cam's own. :class:`StageCAM` changes only how the activations and
gradients are collected and what is returned:

* the four stage modules of :func:`medvit.models.pyramid_stages` are the target layers of **one** CAM
  object; one forward pass records their outputs and one ``torch.autograd.grad`` call returns the class
  score's gradient at all four (no parameter gradients are computed, no ``.grad`` field is touched);
* each stage output is converted with :func:`medvit.models.to_nchw` using that stage's own layout
  (``NCHW``/``NHWC``/``NLC``) and grid ``(H // reduction, W // reduction)`` from the input size —
  pytorch-grad-cam's single ``reshape_transform`` cannot tell the stages apart;
* the per-layer maps of ``compute_cam_per_layer`` are kept (``aggregate_multi_layers`` would average
  them) and upsampled with ``torch.nn.functional.interpolate`` (bilinear, half-pixel centres: the same
  numbers as pytorch-grad-cam's ``cv2.resize``, to ~1e-7).

Thread safety: the hooks live on the caller's model while :func:`compute_stage_cams` runs and see every
forward pass through it, from any thread. Calls on a shared model (the app's cached run) must be
serialised; the app holds a lock around each call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from medvit.explain.options import CAM_METHOD_NAMES
from medvit.models import StageInfo, pyramid_stages, to_nchw
from medvit.models.ensemble import FoldEnsemble

__all__ = [
    "ensemble_stage_cams",
    "CAM_METHODS",
    "StageCAM",
    "StageCams",
    "StageActivations",
    "compute_stage_cams",
    "stage_cam_class",
    "stage_grid_size",
    "stage_reshape_transform",
]

_logger = logging.getLogger(__name__)

@dataclass
class StageCams:
    """Prediction and one class activation map per pyramid stage for one image.

    Attributes:
        probabilities: Softmax over the model's classes, (K,).
        target: The class the maps explain.
        cams: Four (H, W) float32 maps in [0, 1] at the input size, strides 4, 8, 16, 32.
        stages: The :class:`~medvit.models.StageInfo` of each map.
        method: The :data:`CAM_METHODS` name used.
        grid_sizes: Each stage's feature grid ``(h, w)`` before upsampling.
        logits: The model's raw outputs, (K,) (for calibrated probabilities).
    """

    probabilities: np.ndarray
    target: int
    cams: list[np.ndarray]
    stages: list[StageInfo]
    method: str = "gradcam"
    grid_sizes: list[tuple[int, int]] = field(default_factory=list)
    logits: np.ndarray | None = None


def stage_grid_size(input_size: Sequence[int], reduction: int) -> tuple[int, int] | None:
    """Feature grid ``(H // reduction, W // reduction)`` of a stage, or None when it does not divide.

    Args:
        input_size: Input ``(H, W)``.
        reduction: The stage's stride (``StageInfo.reduction``).
    """
    height, width = int(input_size[0]), int(input_size[1])
    if height % reduction or width % reduction:
        return None
    return height // reduction, width // reduction


def _stage_to_nchw(x: torch.Tensor, stage: StageInfo, input_size: Sequence[int]) -> torch.Tensor:
    """Convert one stage output (or its gradient) to (B, C, h, w) with the stage's layout."""
    grid = stage_grid_size(input_size, stage.reduction)
    if grid is None and stage.fmt == "NLC":
        raise ValueError(
            f"stage {stage.name!r} outputs tokens (NLC) at stride {stage.reduction}, but the input size "
            f"{tuple(input_size)} is not a multiple of it; resize the image to a multiple of {stage.reduction}"
        )
    return to_nchw(x, stage.fmt, grid)


def stage_reshape_transform(stage: StageInfo, input_size: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam ``reshape_transform`` for one stage alone: its output to (B, C, h, w).

    Args:
        stage: The stage whose module is the CAM object's single target layer.
        input_size: Input ``(H, W)``; token (NLC) stages take their grid from it and the stride.
    """
    return functools.partial(_stage_to_nchw, stage=stage, input_size=tuple(input_size))


class StageActivations(ActivationsAndGradients):
    """Forward hooks that keep each stage's output, graph attached, until the gradients are taken.

    pytorch-grad-cam's parent class registers its hooks when it is built and applies one
    ``reshape_transform`` to every layer; here hooks exist only between :meth:`register` and
    :meth:`release` (see :class:`StageCAM`'s ``with`` block) and the layout is converted later, per stage.
    ``activations`` and ``gradients`` hold the (B, C, h, w) tensors of the last call.
    """

    def __init__(self, model: nn.Module, stages: Sequence[StageInfo]) -> None:
        # The parent's __init__ is not called: it would register two hooks per layer right away.
        self.model = model
        self.stages = list(stages)
        self.reshape_transform = None
        self.detach = True
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.activations: list[torch.Tensor] = []
        self.gradients: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor | None] = [None] * len(self.stages)

    def register(self) -> None:
        """Add one forward hook per stage module."""
        if self.handles:
            return
        for index, stage in enumerate(self.stages):
            hook = functools.partial(self._save_output, index)
            self.handles.append(stage.module.register_forward_hook(hook))

    def _save_output(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"stage {self.stages[index].name!r} returned {type(output).__name__}, not a tensor; "
                "pyramid_stages must name modules whose output is the stage's feature map"
            )
        self.outputs[index] = output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.clear()
        return self.model(x)

    def clear(self) -> None:
        """Forget the last call's tensors (they hold no graph: activations and gradients are detached)."""
        self.activations = []
        self.gradients = []
        self.outputs = [None] * len(self.stages)

    def release(self) -> None:
        """Remove every hook, then forget the last call's tensors."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()


class StageCAM(BaseCAM):
    """One CAM object for all four pyramid stages; put it in front of a pytorch-grad-cam method class.

    ``StageCAM`` replaces ``BaseCAM``'s collection of activations and gradients and keeps its per-layer
    maps; the method class behind it in the MRO provides ``get_cam_weights``/``get_cam_image``. Use it as
    a context manager: hooks are added on ``__enter__`` and removed on ``__exit__``, also after an error
    (which is re-raised, unlike ``BaseCAM.__exit__``). Unlike ``BaseCAM`` it does not call
    ``model.eval()``; :func:`compute_stage_cams` sets and restores the mode.

    Calling it returns one (B, H, W) float32 map in [0, 1] per stage; the logits are kept in ``outputs``.
    """

    uses_gradients = True

    def __init__(self, model: nn.Module, stages: Sequence[StageInfo]) -> None:
        # BaseCAM.__init__ is not called: it puts the caller's model in eval mode and registers hooks.
        self.model = model
        self.stages = list(stages)
        self.target_layers = [stage.module for stage in self.stages]
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.reshape_transform = None
        self.compute_input_gradient = False
        self.detach = True
        self.outputs: torch.Tensor | None = None
        self.activations_and_grads = StageActivations(model, self.stages)

    def __enter__(self) -> StageCAM:
        self.activations_and_grads.register()
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.activations_and_grads.release()

    def __del__(self) -> None:
        activations = getattr(self, "activations_and_grads", None)
        if activations is not None:
            activations.release()

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None,
        eigen_smooth: bool = False,
    ) -> list[np.ndarray]:
        """One forward and (for gradient methods) one backward pass; returns the four stage maps.

        Args:
            input_tensor: Normalised images, (B, 3, H, W).
            targets: One pytorch-grad-cam target per image (e.g. ``ClassifierOutputTarget(k)``);
                None explains each image's top class.
            eigen_smooth: Project the weighted activations on their first principal component.

        Returns:
            Per stage, a (B, H, W) float32 map in [0, 1] at the input size.

        Raises:
            RuntimeError: A stage module did not run, or the score does not depend on its output.
        """
        if not self.activations_and_grads.handles:
            raise RuntimeError(f"{type(self).__name__} has no hooks; call it inside its `with` block")
        x = input_tensor.detach().to(self.device)
        if x.is_inference():
            x = x.clone()
        input_size = tuple(x.shape[-2:])
        with torch.inference_mode(False), torch.set_grad_enabled(self.uses_gradients):
            # The input requires grad so that the stage outputs join the graph even when every
            # parameter is frozen; only the input's detached alias is flagged, never the caller's tensor.
            x.requires_grad_(self.uses_gradients)
            self.outputs = logits = self.activations_and_grads(x)
            outputs = self.activations_and_grads.outputs
            for stage, output in zip(self.stages, outputs):
                if output is None:
                    raise RuntimeError(
                        f"stage {stage.name!r} did not run in the forward pass; check pyramid_stages(model)"
                    )
            if targets is None:
                targets = [ClassifierOutputTarget(int(k)) for k in logits.argmax(dim=-1).tolist()]
            if self.uses_gradients:
                score = sum(target(output) for target, output in zip(targets, logits))
                grads = torch.autograd.grad(score, outputs, allow_unused=True)
                for stage, grad in zip(self.stages, grads):
                    if grad is None:
                        raise RuntimeError(
                            f"the class score does not depend on stage {stage.name!r}; "
                            "pyramid_stages(model) must name modules on the path to the logits"
                        )
                self.activations_and_grads.gradients = [
                    _stage_to_nchw(grad, stage, input_size) for stage, grad in zip(self.stages, grads)
                ]
            self.activations_and_grads.activations = [
                _stage_to_nchw(output.detach(), stage, input_size) for stage, output in zip(self.stages, outputs)
            ]
            self.activations_and_grads.outputs = [None] * len(self.stages)  # drop the graph
        return [cam[:, 0] for cam in self.compute_cam_per_layer(x.detach(), targets, eigen_smooth)]

    def compute_cam_per_layer(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Callable[[torch.Tensor], torch.Tensor]],
        eigen_smooth: bool,
    ) -> list[np.ndarray]:
        """``BaseCAM.compute_cam_per_layer`` with one torch upsampling per stage instead of cv2 per image.

        Each map is what ``BaseCAM`` returns for that layer alone: ReLU, min-max scaling, bilinear
        upsampling to the input size, then ``aggregate_multi_layers`` over the one layer (min-max again).

        Returns:
            Per stage, a (B, 1, H, W) float32 map in [0, 1].
        """
        activations = [a.float().cpu().numpy() for a in self.activations_and_grads.activations]
        if self.uses_gradients:
            grads = [g.float().cpu().numpy() for g in self.activations_and_grads.gradients]
        else:
            grads = [None] * len(activations)
        height, width = input_tensor.shape[-2:]
        cam_per_layer = []
        for layer, layer_activations, layer_grads in zip(self.target_layers, activations, grads):
            cam = self.get_cam_image(input_tensor, layer, targets, layer_activations, layer_grads, eigen_smooth)
            cam = scale_cam_image(np.maximum(cam, 0))  # min-max per image, as BaseCAM does before resizing
            upsampled = F.interpolate(
                torch.from_numpy(cam)[:, None], size=(height, width), mode="bilinear", align_corners=False
            )
            # What BaseCAM returns for this layer alone: its single-layer "aggregate" rescales to [0, 1].
            cam_per_layer.append(self.aggregate_multi_layers([upsampled.numpy()])[:, None])
        return cam_per_layer


class StageGradCAM(StageCAM, GradCAM):
    """Grad-CAM (https://arxiv.org/abs/1610.02391) at every stage."""


class StageGradCAMPlusPlus(StageCAM, GradCAMPlusPlus):
    """Grad-CAM++ (https://arxiv.org/abs/1710.11063) at every stage."""


class StageXGradCAM(StageCAM, XGradCAM):
    """XGrad-CAM (https://arxiv.org/abs/2008.02312) at every stage."""


class StageHiResCAM(StageCAM, HiResCAM):
    """HiResCAM (https://arxiv.org/abs/2011.08891) at every stage."""


class StageLayerCAM(StageCAM, LayerCAM):
    """LayerCAM (https://ieeexplore.ieee.org/document/9462463) at every stage."""


class StageEigenCAM(StageCAM, EigenCAM):
    """Eigen-CAM (https://arxiv.org/abs/2008.00299) at every stage: no gradients, no target class."""

    uses_gradients = False


_STAGE_CLASSES: Mapping[str, type[StageCAM]] = MappingProxyType(
    dict(
        zip(
            CAM_METHOD_NAMES,
            (StageGradCAM, StageGradCAMPlusPlus, StageXGradCAM, StageHiResCAM, StageLayerCAM, StageEigenCAM),
            strict=True,
        )
    )
)
"""The one method table: name (:data:`medvit.explain.options.CAM_METHOD_NAMES`, menu order) -> its
:class:`StageCAM` class."""

CAM_METHODS: Mapping[str, type[BaseCAM]] = MappingProxyType(
    {name: stage_class.__bases__[-1] for name, stage_class in _STAGE_CLASSES.items()}
)
"""Method name -> the pytorch-grad-cam class whose per-layer maths it uses (each :class:`StageCAM`
subclass's last base, e.g. ``"gradcam"`` -> ``GradCAM``)."""


def stage_cam_class(method: str) -> type[StageCAM]:
    """The :class:`StageCAM` class for a :data:`CAM_METHODS` name.

    Raises:
        ValueError: Unknown method.
    """
    try:
        return _STAGE_CLASSES[method]
    except KeyError:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}") from None


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def compute_stage_cams(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    method: str = "gradcam",
    stages: Sequence[StageInfo] | None = None,
) -> StageCams:
    """Predict one image and compute a CAM at each of the model's four pyramid stages in one pass.

    The model runs in eval mode (restored per module afterwards); its parameters, ``requires_grad``
    flags and ``.grad`` fields are not touched, so a frozen backbone (linear probe) works. Not
    thread-safe on a shared model: serialise calls (see the module docstring).

    Args:
        model: A classifier of the zoo (any model :func:`medvit.models.pyramid_stages` accepts).
        image: One normalised image, (3, H, W) or (1, 3, H, W), at a size the model accepts.
        target: Class index to explain; None explains the predicted class.
        method: A :data:`CAM_METHODS` name.
        stages: The four stages to hook; default ``pyramid_stages(model)``.

    Returns:
        :class:`StageCams` with the probabilities, the target and four maps at the input size.

    Raises:
        ValueError: Bad image shape, unknown method or target out of range.
    """
    if isinstance(model, FoldEnsemble):
        if stages is not None:
            raise ValueError("a fold ensemble has no single set of stages to hook; explain a member to pass stages")
        return ensemble_stage_cams(model, image, target=target, method=method)
    cam_class = stage_cam_class(method)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(
            f"compute_stage_cams takes one image, (3, H, W) or (1, 3, H, W); got shape {tuple(image.shape)}"
        )
    stages = list(pyramid_stages(model) if stages is None else stages)
    targets = None
    if target is not None:
        num_classes = _num_classes(model)
        target = int(target)
        if num_classes is not None and not 0 <= target < num_classes:
            raise ValueError(
                f"target class {target} is out of range for a model with {num_classes} classes; "
                f"pick 0..{num_classes - 1}"
            )
        targets = [ClassifierOutputTarget(target)]
    with _eval_mode(model), cam_class(model, stages) as cam:
        maps = cam(image, targets)
        logits = cam.outputs.detach().float().cpu()
        grid_sizes = [tuple(a.shape[-2:]) for a in cam.activations_and_grads.activations]
    probabilities = torch.softmax(logits[0], dim=-1).numpy()
    if target is None:
        target = int(probabilities.argmax())
    elif target >= probabilities.shape[0]:
        raise ValueError(f"target class {target} is out of range for {probabilities.shape[0]} model outputs")
    return StageCams(
        probabilities=probabilities,
        target=target,
        cams=[m[0] for m in maps],
        stages=stages,
        method=method,
        grid_sizes=grid_sizes,
        logits=logits[0].numpy(),
    )


def ensemble_stage_cams(
    ensemble: FoldEnsemble, image: torch.Tensor, target: int | None = None, method: str = "gradcam"
) -> StageCams:
    """Stage CAMs of a fold ensemble: each member's four maps for the ensemble's target, averaged per stage.

    The prediction is the ensemble's (mean of the members' calibrated probabilities); each member's map is
    :func:`compute_stage_cams` for that same class, so every member explains the one decision shown.

    Args:
        ensemble: the fold models (:class:`~medvit.models.ensemble.FoldEnsemble`).
        image: One normalised image, (3, H, W) or (1, 3, H, W).
        target: Class index to explain; None explains the ensemble's predicted class.
        method: A :data:`CAM_METHODS` name.
    """
    batch = image[None] if image.ndim == 3 else image
    with torch.no_grad(), _eval_mode(ensemble):
        logits = ensemble(batch).detach().float().cpu()[0]
    probabilities = torch.softmax(logits, dim=-1).numpy()
    target = int(probabilities.argmax()) if target is None else int(target)
    members = [compute_stage_cams(member, batch, target=target, method=method) for member in ensemble.members]
    cams = [np.mean([m.cams[i] for m in members], axis=0).astype(np.float32) for i in range(len(members[0].cams))]
    return StageCams(
        probabilities=probabilities,
        target=target,
        cams=cams,
        stages=members[0].stages,
        method=method,
        grid_sizes=members[0].grid_sizes,
        logits=logits.numpy(),
    )


def _num_classes(model: nn.Module) -> int | None:
    """The model's number of classes, when it says (timm's ``num_classes`` attribute)."""
    num_classes = getattr(model, "num_classes", None)
    return int(num_classes) if isinstance(num_classes, int) and num_classes > 0 else None
