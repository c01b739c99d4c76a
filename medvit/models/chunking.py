"""Cache blocking on the CPU, shared by our model families: a batch goes through a few whole images at a time.

Large per-image activations (VVT's stage-1 MLP, ACC-ViT's MBConv expansion and stacked attention
partitions) would otherwise stream through main memory, and be page-faulted in afresh, on every call.
Every image goes through the same operations, so only float rounding can differ from the whole batch.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["CPU_CHUNK_BYTES", "cpu_images_per_chunk", "map_image_chunks"]

CPU_CHUNK_BYTES = 16 * 2 ** 20
"""Default activation budget per chunk: a fraction of a server CPU's last-level cache."""


def cpu_images_per_chunk(x: Tensor, per_image_elements: int, budget_bytes: int) -> int:
    """Images of ``x`` (batch first) per chunk so that ``per_image_elements`` each fit in ``budget_bytes``.

    The whole batch off the CPU, when ``budget_bytes <= 0`` or while ``torch.compile`` traces (the compiled
    graph would hold one copy of the block per chunk, and inductor fuses what chunking tried to keep in cache);
    otherwise at least one image.
    """
    batch = x.shape[0]
    if x.device.type != "cpu" or budget_bytes <= 0 or torch.compiler.is_compiling():
        return batch
    return max(1, min(batch, budget_bytes // (per_image_elements * x.element_size())))


def map_image_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, images_per_chunk: int) -> Tensor:
    """``fn(x)``, computed ``images_per_chunk`` images at a time and concatenated along the batch."""
    if images_per_chunk >= x.shape[0]:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in x.split(images_per_chunk)])
