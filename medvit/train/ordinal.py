"""Soft ordinal labels for graded classes (SORD, Díaz & Marathe, CVPR 2019, https://arxiv.org/abs/1904.02506).

For ordered grades (EyePACS DR 0-4) the one-hot target treats "grade 3 called 2" like "grade 3 called 0",
while quadratic weighted kappa, the grading metric, charges the second sixteen times more. SORD trains
against ``q_i(y) = softmax_i(-scale * (i - y)^2)``: most of the mass on the true grade, the rest on its
neighbours, almost none two grades away. It replaces label smoothing (which spreads mass uniformly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OrdinalSoftLabelLoss", "ordinal_soft_labels"]


def ordinal_soft_labels(num_classes: int, scale: float) -> torch.Tensor:
    """``(K, K)`` matrix whose row ``y`` is the soft target of grade ``y``.

    Raises:
        ValueError: fewer than two classes or a non-positive ``scale``.
    """
    if num_classes < 2 or not scale > 0:
        raise ValueError(f"ordinal soft labels need >= 2 classes and scale > 0, got {num_classes} and {scale}")
    grades = torch.arange(num_classes, dtype=torch.float32)
    return torch.softmax(-scale * (grades[None, :] - grades[:, None]) ** 2, dim=1)


class OrdinalSoftLabelLoss(nn.Module):
    """Cross-entropy against SORD soft targets, optionally class-weighted by the true grade.

    With ``weight``, the batch loss is ``sum_n w[y_n] l_n / sum_n w[y_n]``: the weighted mean that
    ``nn.CrossEntropyLoss(weight=...)`` takes for hard labels, so class weighting means the same here.

    Args:
        num_classes: number of ordered grades ``K``.
        scale: how sharply the target falls off with the squared grade distance.
        weight: optional ``(K,)`` class weights.
    """

    def __init__(self, num_classes: int, scale: float, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("targets", ordinal_soft_labels(num_classes, scale))
        self.register_buffer("weight", None if weight is None else weight.float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_image = -(self.targets[labels] * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        if self.weight is None:
            return per_image.mean()
        w = self.weight[labels]
        return (w * per_image).sum() / w.sum()
