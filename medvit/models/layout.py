"""Stage layouts of pyramid backbones: which four modules give the stage maps and how to read them.

Every backbone in the zoo exposes four stages (strides 4, 8, 16, 32). Their outputs come in the
layout of the family: Swin keeps its stages channels-last (B, H, W, C), token models give (B, N, C),
and the others NCHW. :func:`to_nchw` is the one converter; it is told the layout (timm's
:class:`~timm.layers.Format` names), never guesses it from the shape, since (B, H, W, C) and
(B, C, H, W) are both 4-D.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from einops import rearrange
from timm.layers import Format
from torch import nn

__all__ = ["PYRAMID_REDUCTIONS", "StageInfo", "pyramid_stages", "stage_modules", "stage_fmt", "to_nchw"]

_logger = logging.getLogger(__name__)

PYRAMID_REDUCTIONS = (4, 8, 16, 32)
"""The strides of the four pyramid stages, in order."""

# Stage output layout per model family, keyed by the module that defines the model class.
# Families not listed fall back to the layout the model declares (timm's `model.output_fmt`),
# and to NCHW when it declares none, exactly as timm's feature extractors do (`_builder.py`).
_FAMILY_STAGE_FMT: Mapping[str, str] = {
    "timm.models.swin_transformer": Format.NHWC.value,
    "timm.models.convnext": Format.NCHW.value,
    "timm.models.maxxvit": Format.NCHW.value,
    "timm.models.pvt_v2": Format.NCHW.value,
    "timm.models.efficientnet": Format.NCHW.value,
    "medvit.models.vvt": Format.NCHW.value,
    "medvit.models.acc_vit": Format.NCHW.value,
}


@dataclass
class StageInfo:
    """One pyramid stage of a backbone.

    Attributes:
        name: Module path of the stage inside the model (``model.get_submodule(name)``).
        module: The stage module; its output is the stage map.
        fmt: Layout of ``module``'s output: ``'NCHW'``, ``'NHWC'`` or ``'NLC'``.
        reduction: Stride of the stage map relative to the input (4, 8, 16 or 32).
        num_chs: Channels of the stage map.
        feature_index: Position of the stage in ``model.feature_info``; pass it as
            ``forward_intermediates(x, indices=[...])`` to get this stage's map.
    """

    name: str
    module: nn.Module
    fmt: str
    reduction: int
    num_chs: int
    feature_index: int = -1


def to_nchw(x: torch.Tensor, fmt: str | Format, hw: Sequence[int] | None = None) -> torch.Tensor:
    """Convert a stage output to (B, C, H, W).

    Args:
        x: Stage output in layout ``fmt``: (B, C, H, W), (B, H, W, C), (B, N, C) or (B, C, N).
        fmt: The layout of ``x`` in timm's :class:`~timm.layers.Format` names.
        hw: ``(H, W)`` of the token grid; required for the token layouts ``'NLC'`` and ``'NCL'``
            (take it from the input size and the stage's reduction), ignored otherwise.

    Returns:
        ``x`` as (B, C, H, W); a view where possible (NCHW input is returned as is).

    Raises:
        ValueError: ``fmt`` is unknown, ``x`` has the wrong number of dimensions for ``fmt``, or
            ``hw`` is missing or does not match the number of tokens.
    """
    try:
        fmt = Format(fmt)
    except ValueError:
        raise ValueError(
            f"unknown layout {fmt!r}; use one of {[f.value for f in Format]}"
        ) from None
    expected_ndim = 4 if fmt in (Format.NCHW, Format.NHWC) else 3
    if x.ndim != expected_ndim:
        raise ValueError(
            f"a {fmt.value} tensor has {expected_ndim} dimensions, got shape {tuple(x.shape)}; "
            "check the layout recorded for this stage"
        )
    if fmt is Format.NCHW:
        return x
    if fmt is Format.NHWC:
        return rearrange(x, "b h w c -> b c h w")
    if hw is None:
        raise ValueError(
            f"to_nchw needs hw=(H, W) for {fmt.value} tokens of shape {tuple(x.shape)}; "
            "use the input size divided by the stage's reduction"
        )
    height, width = (int(v) for v in hw)
    num_tokens = x.shape[1] if fmt is Format.NLC else x.shape[2]
    if height * width != num_tokens:
        raise ValueError(
            f"hw={height}x{width} gives {height * width} tokens but the {fmt.value} tensor of shape "
            f"{tuple(x.shape)} holds {num_tokens}"
        )
    if fmt is Format.NLC:
        return rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
    return rearrange(x, "b c (h w) -> b c h w", h=height, w=width)


def stage_fmt(model: nn.Module) -> str:
    """The layout of ``model``'s stage outputs, recorded per family (see the module docstring)."""
    family_fmt = _FAMILY_STAGE_FMT.get(type(model).__module__)
    if family_fmt is not None:
        return family_fmt
    return Format(getattr(model, "output_fmt", Format.NCHW)).value


def _feature_info_dicts(model: nn.Module) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(
            f"{type(model).__name__} has no feature_info; pyramid stages need a timm-style backbone "
            "(see medvit.models.list_models())"
        )
    if hasattr(info, "get_dicts"):  # timm FeatureInfo (features_only models)
        return list(info.get_dicts())
    return [dict(entry) for entry in info]


def pyramid_stages(model: nn.Module) -> list[StageInfo]:
    """The four pyramid stages of ``model`` (strides 4, 8, 16, 32), resolved from ``feature_info``.

    Stages are chosen by reduction, not by position: MaxViT lists its stride-2 stem first and
    EfficientNet a stride-2 block; where a reduction appears more than once the deepest entry wins.

    Args:
        model: A timm-style backbone with ``feature_info`` entries holding ``module``,
            ``reduction`` and ``num_chs``.

    Returns:
        Four :class:`StageInfo`, strides 4, 8, 16, 32 in that order.

    Raises:
        ValueError: The model has no ``feature_info`` or lacks one of the four strides.
    """
    entries = _feature_info_dicts(model)
    fmt = stage_fmt(model)
    by_reduction: dict[int, tuple[int, dict[str, Any]]] = {}
    for index, entry in enumerate(entries):
        by_reduction[int(entry["reduction"])] = (index, entry)  # later (deeper) entries win
    missing = [r for r in PYRAMID_REDUCTIONS if r not in by_reduction]
    if missing:
        found = sorted(by_reduction)
        raise ValueError(
            f"{type(model).__name__} has no feature level at stride(s) {missing} (feature_info strides: "
            f"{found}); medvit needs a 4-stage pyramid backbone with strides {list(PYRAMID_REDUCTIONS)}"
        )
    stages = []
    for reduction in PYRAMID_REDUCTIONS:
        index, entry = by_reduction[reduction]
        name = str(entry["module"])
        stages.append(
            StageInfo(
                name=name,
                module=model.get_submodule(name),
                fmt=fmt,
                reduction=reduction,
                num_chs=int(entry["num_chs"]),
                feature_index=index,
            )
        )
    return stages


def stage_modules(model: nn.Module) -> list[nn.Module]:
    """The four modules whose outputs are the stage maps (``[s.module for s in pyramid_stages(model)]``)."""
    return [stage.module for stage in pyramid_stages(model)]
