"""Weight initialisation shared by our model families (VVT's official scheme, reused by ACC-ViT)."""

from __future__ import annotations

import math

from timm.layers import trunc_normal_
from torch import nn

__all__ = ["init_linear_and_conv"]


def init_linear_and_conv(module: nn.Module) -> None:
    """Initialise one module in place: Linear trunc_normal(std 0.02) and zero bias; Conv2d
    normal(0, sqrt(2 / fan_out)) with fan_out = kh * kw * out_channels / groups, and zero bias.

    Other modules are left alone; apply it with ``model.apply`` or over ``named_modules()``.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
