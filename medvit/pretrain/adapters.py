"""The student side of stage-wise distillation: the backbone plus one adapter per pyramid stage.

Each of the student's four stage maps (strides 4, 8, 16, 32, read through the pyramid contract:
:func:`medvit.models.pyramid_stages` and ``forward_intermediates``) goes through a 1x1 convolution
to the teacher's stage width and a ``BatchNorm2d``, so it is compared with the teacher's map in the
same standardised units (:mod:`medvit.pretrain.losses`). The student keeps its own head (1000 classes for an ImageNet teacher)
for the KL term. Only the backbone is kept after pretraining: adapters and head are dropped
(:func:`backbone_state_dict`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvit.models.layout import pyramid_stages

__all__ = ["PyramidStudent", "StageAdapter", "backbone_state_dict", "pyramid_forward"]


def pyramid_forward(model: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the four NCHW stage maps of ``model`` from one forward pass.

    Args:
        model: a zoo backbone with a classifier (timm's ``forward_intermediates`` / ``forward_head``).
        x: images (B, 3, H, W).
        indices: ``feature_info`` positions of the four stages (``StageInfo.feature_index``).
    """
    final, maps = model.forward_intermediates(x, indices=list(indices), output_fmt="NCHW")
    return model.forward_head(final), list(maps)


class StageAdapter(nn.Sequential):
    """1x1 convolution from the student's stage width to the teacher's, then ``BatchNorm2d``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False), nn.BatchNorm2d(out_chs))


class PyramidStudent(nn.Module):
    """A student backbone with adapters to the teacher's stage widths.

    Args:
        student: the backbone, created with the teacher's number of classes (its head learns the
            teacher's logits: 1000 for an ImageNet teacher).
        teacher_chs: channels of the teacher's four stage maps.
        num_classes: the teacher's number of logits.

    Raises:
        ValueError: the student's head does not match the teacher's logits, or no four-stage pyramid.
    """

    def __init__(self, student: nn.Module, teacher_chs: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        if getattr(student, "num_classes", None) != num_classes:
            raise ValueError(
                f"the student needs a {num_classes}-class head for the KL term on the teacher's logits; create it "
                f"with num_classes={num_classes} (got {getattr(student, 'num_classes', None)})"
            )
        stages = pyramid_stages(student)
        if len(teacher_chs) != len(stages):
            raise ValueError(f"{len(teacher_chs)} teacher stages for {len(stages)} student stages; need four each")
        self.student = student
        self.indices = [stage.feature_index for stage in stages]
        self.adapters = nn.ModuleList(StageAdapter(stage.num_chs, chs) for stage, chs in zip(stages, teacher_chs))

    def forward(
        self, x: torch.Tensor, sizes: Sequence[Sequence[int]] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Student logits and adapted stage maps, resized to ``sizes`` (the teacher's) when given."""
        logits, maps = pyramid_forward(self.student, x, self.indices)
        adapted = []
        for index, (adapter, stage_map) in enumerate(zip(self.adapters, maps)):
            out = adapter(stage_map)
            if sizes is not None and tuple(out.shape[-2:]) != tuple(sizes[index]):
                out = F.interpolate(out, size=tuple(sizes[index]), mode="bilinear", align_corners=False)
            adapted.append(out)
        return logits, adapted


def backbone_state_dict(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's weights without its classifier (``pretrained_cfg['classifier']``), for any head size."""
    classifier = getattr(student, "pretrained_cfg", {}).get("classifier", "")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    prefixes = tuple(f"{name}." for name in names if name)
    return {k: v for k, v in student.state_dict().items() if not (prefixes and k.startswith(prefixes))}
