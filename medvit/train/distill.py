"""DeiT-style soft-target knowledge distillation from a trained run directory.

Loss (Hinton et al. 2015; DeiT "soft distillation", Touvron et al. 2021, Eq. 2,
https://arxiv.org/abs/2012.12877):
``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvit.run_dir import Run, load_run

__all__ = ["DistillationLoss", "load_teacher"]

_logger = logging.getLogger(__name__)


def load_teacher(run_dir: str | Path, class_names: Sequence[str], device: torch.device) -> Run:
    """Load a teacher run (frozen, eval mode) and check it predicts the same classes.

    Raises:
        ValueError: the teacher's class names differ from the student's.
    """
    teacher = load_run(run_dir, device=device)
    if list(teacher.class_names) != list(class_names):
        raise ValueError(
            f"distill.teacher {run_dir}: its classes {teacher.class_names} differ from the student's "
            f"{list(class_names)}; distil from a run trained on the same dataset"
        )
    for param in teacher.model.parameters():
        param.requires_grad_(False)
    return teacher


class DistillationLoss(nn.Module):
    """Cross-entropy plus soft-target KL divergence to a frozen teacher.

    The teacher sees the student's batch, re-normalised and resized to the teacher's own input
    size and normalisation when they differ.

    Args:
        base_criterion: the supervised loss (e.g. ``CrossEntropyLoss`` with label smoothing).
        teacher: the loaded teacher run.
        temperature: softmax temperature ``T``.
        alpha: weight of the distillation term (``1 - alpha`` for the supervised term).
        student_mean, student_std: the student's input normalisation.
    """

    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: Run,
        temperature: float,
        alpha: float,
        student_mean: Sequence[float],
        student_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.base_criterion = base_criterion
        self.teacher = teacher.model
        self.teacher_size = tuple(teacher.image_size)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        shape = (1, -1, 1, 1)
        self.register_buffer("student_mean", torch.tensor(student_mean).view(shape), persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std).view(shape), persistent=False)
        self.register_buffer("teacher_mean", torch.tensor(teacher.mean).view(shape), persistent=False)
        self.register_buffer("teacher_std", torch.tensor(teacher.std).view(shape), persistent=False)

    def teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """The student's batch (B, 3, H, W) in the teacher's size and normalisation."""
        x = images * self.student_std + self.student_mean
        x = (x - self.teacher_mean) / self.teacher_std
        if tuple(x.shape[-2:]) != self.teacher_size:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of student ``logits`` (B, K) on ``images`` (B, 3, H, W) with ``labels`` (B,)."""
        base = self.base_criterion(logits, labels)
        if self.alpha == 0:
            return base
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher_input(images)).float()
        T = self.temperature
        kd = F.kl_div(
            F.log_softmax(logits.float() / T, dim=1),
            F.log_softmax(teacher_logits / T, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (T * T)
        return (1 - self.alpha) * base + self.alpha * kd
