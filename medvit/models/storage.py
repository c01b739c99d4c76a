"""Compact weight storage for shipped models: per-output-channel int8, dequantized at load.

A weight matrix or convolution kernel ``W`` (``ndim >= 2``, at least ``MIN_INT8_VALUES`` values) is
stored as ``round(W / s)`` in int8 with one fp32 scale ``s = max|W[c]| / 127`` per output channel ``c``
(symmetric, so zero stays exact), under ``NAME`` and ``NAME + SCALE_SUFFIX``. Vectors (biases, norm
parameters, BatchNorm statistics), smaller tensors and integer buffers are kept in fp16 / as they
are: they are a small share of the bytes and the most sensitive to rounding. A file says how it was
written in its safetensors metadata (``medvit_storage``), so :func:`dequantize` is a no-op for
ordinary checkpoints.

Why 16,384: in an EfficientNet-Lite the rounding error that moves the output comes from the small
early layers (the stem, the first depthwise and pointwise kernels: a few hundred to a few thousand
values each, whose error every later layer carries). On the EyePACS lite0, int8 for every kernel of
256+ values changed 10 % of the validation predictions (mean |Δlogit| 0.14); keeping kernels under
16,384 values in fp16 cut that to 0.03 for 0.08 MB more (3.67 vs 3.59 MB). The pyramid ViTs were
already within 0.006 either way.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["INT8", "MIN_INT8_VALUES", "SCALE_SUFFIX", "STORAGE_KEY", "dequantize", "quantize"]

INT8 = "int8-per-channel"
STORAGE_KEY = "medvit_storage"
SCALE_SUFFIX = ".__int8_scale"
MIN_INT8_VALUES = 16384


def quantize(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` as int8 matrices/kernels + fp32 per-channel scales + fp16 vectors, and the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if not tensor.is_floating_point():
            tensors[name] = tensor.clone().contiguous()
        elif tensor.ndim >= 2 and tensor.numel() >= MIN_INT8_VALUES:
            flat = tensor.float().reshape(tensor.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            tensors[name] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(tensor.shape)
            tensors[name + SCALE_SUFFIX] = scale.contiguous()
        else:
            tensors[name] = tensor.to(torch.float16).clone().contiguous()
    return tensors, {"format": "pt", STORAGE_KEY: INT8}


def dequantize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """The float ``state_dict`` of a file written by :func:`quantize` (other files pass through)."""
    if not metadata or metadata.get(STORAGE_KEY) != INT8:
        return dict(tensors)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            shape = (-1,) + (1,) * (tensor.ndim - 1)
            tensor = tensor.float() * scale.float().reshape(shape)
        state[name] = tensor
    return state
