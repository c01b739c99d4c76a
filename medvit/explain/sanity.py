"""Model-randomisation sanity check of each stage's map (Adebayo et al., NeurIPS 2018, arXiv:1810.03292).

Cascading randomisation: the weights are destroyed from the head down, one block at a time
(:data:`CASCADE`: the head, then stage 4, 3, 2 and 1 with everything that runs before it), and after each
step the four stage maps are recomputed for the same target class and compared with the trained model's
maps by Spearman rank correlation (``scipy.stats.spearmanr``) and SSIM
(``skimage.metrics.structural_similarity``, data range 1).

"Destroyed" means each parameter tensor's values are permuted at random (seeded): the same magnitudes in
random places, for any architecture (the paper re-initialises). Which parameters belong to a step is read
from the order in which modules run in one forward pass: step ``head`` takes every module that first runs
after stage 4's output, step ``stage k`` every module that first runs after stage ``k - 1``'s output (for
stage 1: all of them, the stem included). Buffers (BatchNorm statistics) are kept.

Per stage the summary is the map after the step that destroyed the head and every later stage while the
stage's own features are intact (stage 4: ``head``; stage 1: ``stage2``): then only the model's decision
has gone. A map that still correlates with the trained one (Spearman >= :data:`SANITY_MAX_SPEARMAN`)
shows the image's structure rather than what the model uses, and is flagged.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from medvit.explain.cam import StageCams, compute_stage_cams
from medvit.models import pyramid_stages

__all__ = [
    "CASCADE",
    "SANITY_MAX_SPEARMAN",
    "SANITY_NAMES",
    "StageSanity",
    "cascade_groups",
    "cascading_randomization",
    "map_similarity",
]

CASCADE = ("head", "stage4", "stage3", "stage2", "stage1")
"""Randomisation steps, top down; each step keeps the previous ones."""

SANITY_MAX_SPEARMAN = 0.5
"""A stage whose map keeps at least this rank correlation once the head and later stages are destroyed is
flagged."""

SANITY_NAMES = ("spearman", "ssim", "spearman_all", "ssim_all")
"""Per-stage scores in table order: after the stage's own step (see the module docstring), and after the
whole cascade."""


@dataclass
class StageSanity:
    """One stage's similarity to the trained map after each :data:`CASCADE` step (NaN: a constant map)."""

    steps: list[str]
    spearman_steps: list[float]
    ssim_steps: list[float]
    own_step: int

    @property
    def spearman(self) -> float:
        return self.spearman_steps[self.own_step]

    @property
    def ssim(self) -> float:
        return self.ssim_steps[self.own_step]

    @property
    def spearman_all(self) -> float:
        return self.spearman_steps[-1]

    @property
    def ssim_all(self) -> float:
        return self.ssim_steps[-1]

    @property
    def is_flagged(self) -> bool:
        """The map barely changes when the model's decision is destroyed."""
        return bool(np.isfinite(self.spearman) and self.spearman >= SANITY_MAX_SPEARMAN)

    def scores(self) -> dict[str, float | None]:
        return {name: None if math.isnan(getattr(self, name)) else float(getattr(self, name)) for name in SANITY_NAMES}

    def to_json(self) -> dict:
        clean = lambda values: [None if math.isnan(v) else float(v) for v in values]  # noqa: E731
        return {
            **self.scores(),
            "flagged": self.is_flagged,
            "after_step": self.steps[self.own_step],
            "steps": list(self.steps),
            "spearman_steps": clean(self.spearman_steps),
            "ssim_steps": clean(self.ssim_steps),
        }


def map_similarity(trained: np.ndarray, randomized: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and SSIM of two (H, W) maps in [0, 1].

    A constant trained map has nothing to compare (NaN, NaN); a constant randomised map shares no ranking
    with a trained one (Spearman 0 by convention; SSIM as computed).
    """
    a = np.asarray(trained, dtype=np.float64)
    b = np.asarray(randomized, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape}; compare maps of one size")
    if np.ptp(a) == 0:
        return math.nan, math.nan
    rho = 0.0 if np.ptp(b) == 0 else float(spearmanr(a.ravel(), b.ravel()).statistic)
    side = min(a.shape)
    window = min(7, side if side % 2 else side - 1)  # skimage's default 7, or the largest odd size that fits
    return rho, float(structural_similarity(a, b, data_range=1.0, win_size=window))


def cascade_groups(model: nn.Module, image: torch.Tensor) -> list[list[nn.Parameter]]:
    """The parameters each :data:`CASCADE` step destroys (not counting earlier steps), from one forward pass.

    Args:
        model: The classifier (in the mode it should run in).
        image: One input it accepts, (1, 3, H, W).
    """
    stages = pyramid_stages(model)
    order: dict[nn.Module, int] = {}
    stage_ends: dict[int, int] = {}
    handles = []

    def first_call(module: nn.Module, args: tuple) -> None:
        order.setdefault(module, len(order))

    def stage_end(index: int, module: nn.Module, args: tuple, output: object) -> None:
        stage_ends.setdefault(index, len(order))

    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        for module in owners:
            handles.append(module.register_forward_pre_hook(first_call))
        for index, stage in enumerate(stages):
            handles.append(stage.module.register_forward_hook(functools.partial(stage_end, index)))
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    if len(stage_ends) != len(stages):
        raise RuntimeError("a stage module did not run in the forward pass; check pyramid_stages(model)")
    # step 0 (head): after stage 4; step j: after stage 4 - j; the last step: everything
    bounds = [stage_ends[3], stage_ends[2], stage_ends[1], stage_ends[0], -1]
    groups: list[list[nn.Parameter]] = []
    seen: set[int] = set()
    for bound in bounds:
        group = []
        for module in owners:
            if order.get(module, math.inf) >= bound or bound < 0:
                for parameter in module.parameters(recurse=False):
                    if id(parameter) not in seen:
                        seen.add(id(parameter))
                        group.append(parameter)
        groups.append(group)
    return groups


def _permute_(parameters: Sequence[nn.Parameter], generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in parameters:
            flat = parameter.data.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)])


def cascading_randomization(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    trained: Sequence[StageCams],
    method: str = "gradcam",
    seed: int = 0,
) -> list[list[StageSanity]]:
    """Cascading randomisation of a copy of ``model``: per image and stage, similarity after each step.

    Steps run on one copy, each adding to the previous, and every image is explained at every step, so
    the randomised models are built once for all images. The caller's model is not changed.

    Args:
        model: The trained classifier.
        images: Normalised inputs, each (3, H, W) or (1, 3, H, W).
        trained: The trained model's :class:`StageCams` of each image (their targets are kept).
        method: The CAM method of ``trained``.
        seed: Seed of the permutations.

    Returns:
        Per image, one :class:`StageSanity` per stage.
    """
    if len(images) != len(trained):
        raise ValueError(f"{len(images)} images for {len(trained)} trained maps; pass one StageCams per image")
    if not images:
        return []
    first = images[0] if images[0].ndim == 4 else images[0][None]
    randomized = copy.deepcopy(model).eval()
    groups = cascade_groups(randomized, first.detach().float().to(next(model.parameters()).device))
    generator = torch.Generator().manual_seed(seed)
    similarities = np.full((len(images), len(CASCADE), 4, 2), np.nan)
    for step, group in enumerate(groups):
        _permute_(group, generator)
        for k, (image, cams) in enumerate(zip(images, trained)):
            after = compute_stage_cams(randomized, image, target=cams.target, method=method)
            for s, (a, b) in enumerate(zip(cams.cams, after.cams)):
                similarities[k, step, s] = map_similarity(a, b)
    results = []
    for k in range(len(images)):
        results.append(
            [
                StageSanity(
                    steps=list(CASCADE),
                    spearman_steps=similarities[k, :, s, 0].tolist(),
                    ssim_steps=similarities[k, :, s, 1].tolist(),
                    own_step=3 - s,
                )
                for s in range(4)
            ]
        )
    return results
