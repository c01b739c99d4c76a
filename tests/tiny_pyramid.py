"""Hand-made and fitted tiny pyramids for the explanation tests (strides 4, 8, 16, 32; CPU, seconds)."""

from __future__ import annotations

import torch
from torch import nn

from medvit.explain.cam import stage_grid_size
from medvit.models import to_nchw


class _TokenStage(nn.Module):
    """A conv stage whose output is tokens (B, N, C): exercises the NLC path."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)


class TinyPyramid(nn.Module):
    """Strides 4, 8, 16, 32; channel 0 carries the mean brightness, the head reads only channel 0.

    Class 1's logit is the mean of channel 0 of the last stage and class 0's its negative, so the
    evidence for class 1 sits where the image is bright, at every stage.
    """

    def __init__(self, tokens: bool = False, channels: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        convs = [nn.Conv2d(3, channels, 4, stride=4)] + [nn.Conv2d(channels, channels, 2, stride=2) for _ in range(3)]
        with torch.no_grad():
            for i, conv in enumerate(convs):
                conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=generator).abs())
                conv.bias.zero_()
                conv.weight[0].zero_()
                conv.weight[0, : (3 if i == 0 else 1)] = 1.0 / conv.weight[0, 0].numel() / (3 if i == 0 else 1)
        self.tokens = tokens
        self.output_fmt = "NLC" if tokens else "NCHW"
        self.stages = nn.ModuleList([_TokenStage(c) if tokens else c for c in convs])
        self.head = nn.Linear(channels, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[1, 0], self.head.weight[0, 0] = 1.0, -1.0
            self.head.bias.zero_()
        self.num_classes = 2
        self.feature_info = [
            dict(num_chs=channels, reduction=2 ** (i + 2), module=f"stages.{i}") for i in range(4)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        for i, stage in enumerate(self.stages):
            x = torch.relu(stage(x))
            if self.tokens:
                x = to_nchw(x, "NLC", stage_grid_size((height, width), 2 ** (i + 2)))
        return self.head(x.mean(dim=(2, 3)))


def quadrant_image(quadrant: int, size: tuple[int, int] = (64, 96)) -> torch.Tensor:
    height, width = size
    image = torch.zeros(1, 3, height, width)
    top, left = (quadrant // 2) * height // 2, (quadrant % 2) * width // 2
    image[:, :, top + 4 : top + height // 2 - 4, left + 4 : left + width // 2 - 4] = 1.0
    return image


_quadrant_image = quadrant_image


class FittablePyramid(nn.Module):
    """A small randomly initialised conv pyramid (strides 4, 8, 16, 32) to fit on synthetic data."""

    def __init__(self, channels: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Conv2d(3, channels, 4, stride=4)] + [nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(3)]
        )
        self.head = nn.Linear(channels, num_classes)
        self.num_classes = num_classes
        self.feature_info = [dict(num_chs=channels, reduction=2 ** (i + 2), module=f"stages.{i}") for i in range(4)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = torch.relu(stage(x))
        return self.head(x.mean(dim=(2, 3)))


def half_images(count: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright square; the label says whether it lies in the left (0) or right (1) half."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(count, 3, size, size, generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    side = size // 4
    for k in range(count):
        top = int(torch.randint(0, size - side, (1,), generator=generator))
        left = int(torch.randint(0, size // 2 - side, (1,), generator=generator)) + int(labels[k]) * size // 2
        images[k, :, top : top + side, left : left + side] += 2.0
    return images, labels


def fit_pyramid(steps: int = 40, size: int = 64, seed: int = 0) -> FittablePyramid:
    """A :class:`FittablePyramid` fitted on :func:`half_images` (held-out accuracy 1.0 after 40 steps)."""
    torch.manual_seed(seed)
    model = FittablePyramid()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = half_images(512, size=size, seed=seed)
    for step in range(steps):
        batch = torch.arange(step * 32, step * 32 + 32) % len(images)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
