"""Losses of stage-wise feature distillation plus KL on the teacher's ImageNet logits.

Feature loss: MSE between the adapted student map and the teacher's map, both standardised per
channel over the batch and the positions (the student side by its adapter's ``BatchNorm2d``, the
teacher side by :func:`standardize_channels`). Why this and not cosine: EfficientNet's stage outputs
(linear projections after BatchNorm, summed with residuals) differ in scale by orders of magnitude
between channels and stages; standardising makes every channel count alike and puts every stage's
loss on the same scale (about 2 for an unrelated student, 0 for a perfect one, since MSE of two
standardised signals is ``2 (1 - correlation)``), so the stage weights mean what they say. MSE keeps
*where* a channel fires strongly, which a per-position cosine over channels would normalise away.

KL: ``T^2 KL(softmax(t / T) || softmax(s / T))`` on the 1000 ImageNet classes (Hinton et al. 2015,
https://arxiv.org/abs/1503.02531, section 2: the ``T^2`` keeps gradients comparable across ``T``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PretrainLoss", "kl_to_teacher", "standardize_channels"]


def standardize_channels(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) standardised per channel over batch and positions (BatchNorm without affine)."""
    return F.batch_norm(x.float(), None, None, training=True, eps=eps)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(teacher || student)`` of the softened distributions, averaged over the batch."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


class PretrainLoss(nn.Module):
    """Weighted sum of the four stage losses and the KL term.

    Args:
        stage_weights: weights of the stage losses (strides 4, 8, 16, 32).
        kl_weight: weight of the KL term.
        temperature: KL temperature.
    """

    def __init__(self, stage_weights: Sequence[float], kl_weight: float, temperature: float) -> None:
        super().__init__()
        self.stage_weights = [float(w) for w in stage_weights]
        self.kl_weight = float(kl_weight)
        self.temperature = float(temperature)

    def forward(
        self,
        student_logits: torch.Tensor,
        student_maps: Sequence[torch.Tensor],
        teacher_logits: torch.Tensor,
        teacher_maps: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts ``stage1..stage4`` (unweighted) and ``kl``."""
        parts: dict[str, torch.Tensor] = {}
        total = student_logits.new_zeros((), dtype=torch.float32)
        for index, (weight, s, t) in enumerate(zip(self.stage_weights, student_maps, teacher_maps)):
            loss = F.mse_loss(s.float(), standardize_channels(t))
            parts[f"stage{index + 1}"] = loss
            total = total + weight * loss
        parts["kl"] = kl_to_teacher(student_logits, teacher_logits, self.temperature)
        total = total + self.kl_weight * parts["kl"]
        return total, parts
