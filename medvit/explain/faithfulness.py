"""How much the model's score depends on what each stage's map highlights: ROAD and deletion/insertion.

Built on pytorch-grad-cam's metrics (``pytorch_grad_cam.metrics``); only the batching is written here:

* **ROAD** (Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449): ``RemoveMostRelevantFirst`` /
  ``RemoveLeastRelevantFirst`` with the ``NoisyLinearImputer`` of ``pytorch_grad_cam.metrics.road``, at a few
  percentiles. ``road_morf``: change of the target's softmax probability when the most relevant pixels are
  imputed (keep the ``p`` % least relevant; more negative is more faithful), ``road_lerf``: the same when
  the least relevant are imputed (keep the ``p`` % most relevant; near 0 is faithful), ``road_combined =
  (road_lerf - road_morf) / 2`` in [-0.5, 0.5] (higher is more faithful), exactly ``ROADCombined``.
* **Deletion / insertion curves** (Petsiuk et al., RISE, BMVC 2018): the target probability as a growing
  share of the pixels, most relevant first, is zeroed in the normalised input (deleted) or kept with the
  rest zeroed (inserted): ``RemoveMostRelevantFirst``/``RemoveLeastRelevantFirst`` with ``cam_mult_image``'s
  ``multiply_tensor_with_cam``. ``deletion_auc`` (lower is more faithful) and ``insertion_auc`` (higher) are
  the trapezoid areas over the removed/kept share in [0, 1].

pytorch-grad-cam's ``PerturbationConfidenceMetric`` runs one forward pass per percentile and metric, each on
the unperturbed batch too; here every perturbed image of the four stages, all percentiles and both curves
goes through the model in one batched pass (chunks of ``batch_size``), and the unperturbed score once. The
imputations are made in ``ROADCombined``'s order (LeRF then MoRF, percentile by percentile, stage by stage)
under a seeded RNG, so the ROAD numbers equal the library's for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import multiply_tensor_with_cam
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from torch import nn

from medvit.explain.cam import _eval_mode
from medvit.explain.options import DEFAULT_CURVE_STEPS, DEFAULT_ROAD_PERCENTILES

__all__ = [
    "DEFAULT_PERCENTILES",
    "FAITHFULNESS_NAMES",
    "FaithfulnessConfig",
    "StageFaithfulness",
    "stage_faithfulness",
]

DEFAULT_PERCENTILES = DEFAULT_ROAD_PERCENTILES

FAITHFULNESS_NAMES = ("road_combined", "road_morf", "road_lerf", "deletion_auc", "insertion_auc")
"""Per-stage scores in table order."""


@dataclass(frozen=True)
class FaithfulnessConfig:
    """What to measure.

    Args:
        percentiles: ROAD percentiles (each in (0, 100)); empty skips ROAD.
        curve_steps: Points of the deletion/insertion curves beyond 0 (shares 0, 1/steps, ..., 1); 0 skips them.
        batch_size: Perturbed images per forward pass.
        seed: Seed of the ROAD imputer's noise.
    """

    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    curve_steps: int = DEFAULT_CURVE_STEPS
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if any(not 0 < p < 100 for p in self.percentiles):
            raise ValueError(f"ROAD percentiles must lie in (0, 100); got {list(self.percentiles)}")
        if self.curve_steps < 0 or self.curve_steps == 1:
            raise ValueError(f"curve_steps must be 0 (no curves) or at least 2; got {self.curve_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {self.batch_size}")

    @property
    def fractions(self) -> list[float]:
        """Shares of the pixels removed (deletion) or kept (insertion) along the curves."""
        return [k / self.curve_steps for k in range(self.curve_steps + 1)] if self.curve_steps else []

    def to_json(self) -> dict:
        return {
            "score": "softmax probability of the target class (calibrated when the run has a temperature)",
            "road_percentiles": list(self.percentiles),
            "road_imputer": "NoisyLinearImputer (pytorch-grad-cam)",
            "curve_fractions": self.fractions,
            "curve_baseline": "zero in the normalised input (the normalisation mean)",
            "seed": self.seed,
        }


@dataclass
class StageFaithfulness:
    """One stage's scores (NaN when the map is constant: it ranks no pixel above another)."""

    road_combined: float = math.nan
    road_morf: float = math.nan
    road_lerf: float = math.nan
    deletion_auc: float = math.nan
    insertion_auc: float = math.nan
    deletion: list[float] = field(default_factory=list)
    insertion: list[float] = field(default_factory=list)

    def scores(self) -> dict[str, float | None]:
        """The five scores, NaN as None (JSON)."""
        return {name: None if math.isnan(getattr(self, name)) else float(getattr(self, name)) for name in FAITHFULNESS_NAMES}

    def to_json(self) -> dict:
        return {**self.scores(), "deletion_curve": self.deletion, "insertion_curve": self.insertion}


def _softmax_scores(
    model: nn.Module, images: torch.Tensor, target: int, batch_size: int, temperature: float = 1.0
) -> np.ndarray:
    """Target-class softmax probability (of ``logits / temperature``) of each image, in chunks, without gradients."""
    scores = []
    with torch.no_grad():
        for chunk in torch.split(images, batch_size):
            scores.append(torch.softmax(model(chunk).float() / temperature, dim=-1)[:, target].cpu())
    return torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0)


def _trapezoid(values: Sequence[float], fractions: Sequence[float]) -> float:
    return float(np.trapezoid(np.asarray(values, dtype=np.float64), np.asarray(fractions, dtype=np.float64)))


def stage_faithfulness(
    model: nn.Module,
    image: torch.Tensor,
    cams: Sequence[np.ndarray],
    target: int,
    config: FaithfulnessConfig | None = None,
    temperature: float | None = None,
) -> list[StageFaithfulness]:
    """ROAD and deletion/insertion scores of each stage's map for one image, in one batched pass.

    The model runs in eval mode (restored afterwards); the torch RNG outside is left as it was.

    Args:
        model: The classifier the maps explain.
        image: The normalised input, (3, H, W) or (1, 3, H, W).
        cams: One (H, W) map in [0, 1] per stage, at the input size.
        target: The class whose probability is perturbed.
        config: What to measure (default :class:`FaithfulnessConfig`).
        temperature: The run's calibration temperature: scores are ``softmax(logits / temperature)``, the
            probabilities the user sees (None: 1, the plain softmax, as pytorch-grad-cam's metrics).

    Returns:
        One :class:`StageFaithfulness` per map.

    Raises:
        ValueError: A map whose size differs from the image's.
    """
    config = config or FaithfulnessConfig()
    x = image.detach().float().cpu()
    x = x[0] if x.ndim == 4 else x
    x = x.clone()
    size = tuple(x.shape[-2:])
    maps = [torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32)) for cam in cams]
    for index, cam in enumerate(maps):
        if tuple(cam.shape) != size:
            raise ValueError(f"stage {index + 1}: map of shape {tuple(cam.shape)} for an input of {size}; upsample it first")
    usable = [bool(cam.max() > cam.min()) for cam in maps]
    # (kind, percentile or fraction, stage) -> row of the perturbed batch, in ROADCombined's order
    keys: list[tuple[str, float, int]] = []
    rows: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for kind, remover in (("lerf", RemoveLeastRelevantFirst), ("morf", RemoveMostRelevantFirst)):
            for percentile in config.percentiles:
                perturbation = remover(percentile, NoisyLinearImputer())
                for index, cam in enumerate(maps):
                    if usable[index]:
                        keys.append((kind, percentile, index))
                        rows.append(perturbation(x, cam))
    for fraction in config.fractions[1:-1]:
        delete = RemoveMostRelevantFirst(100 * (1 - fraction), multiply_tensor_with_cam)
        insert = RemoveLeastRelevantFirst(100 * fraction, multiply_tensor_with_cam)
        for index, cam in enumerate(maps):
            if usable[index]:
                keys += [("deletion", fraction, index), ("insertion", fraction, index)]
                rows += [delete(x, cam), insert(x, cam)]
    batch = torch.stack([x, torch.zeros_like(x)] + rows).to(next(model.parameters()).device)
    with _eval_mode(model):
        scores = _softmax_scores(model, batch, int(target), config.batch_size, float(temperature or 1.0))
    base, empty, perturbed = scores[0], scores[1], dict(zip(keys, scores[2:]))
    results = []
    for index in range(len(maps)):
        result = StageFaithfulness()
        if usable[index]:
            if config.percentiles:
                result.road_lerf = float(np.mean([perturbed["lerf", p, index] for p in config.percentiles]) - base)
                result.road_morf = float(np.mean([perturbed["morf", p, index] for p in config.percentiles]) - base)
                result.road_combined = (result.road_lerf - result.road_morf) / 2
            if config.fractions:
                inner = config.fractions[1:-1]
                result.deletion = [float(base)] + [float(perturbed["deletion", f, index]) for f in inner] + [float(empty)]
                result.insertion = [float(empty)] + [float(perturbed["insertion", f, index]) for f in inner] + [float(base)]
                result.deletion_auc = _trapezoid(result.deletion, config.fractions)
                result.insertion_auc = _trapezoid(result.insertion, config.fractions)
        results.append(result)
    return results
