"""A fold ensemble: the mean of its members' temperature-scaled probabilities, as one classifier.

The K models of a cross-validated run (:mod:`medvit.workflows.cv`) predict together as
``p(x) = mean_k softmax(z_k(x) / T)``, with ``T`` the temperature fitted on their out-of-fold
predictions. :meth:`FoldEnsemble.forward` returns ``log p(x)``, so ``softmax(forward(x)) == p(x)``:
everything that turns a classifier's outputs into probabilities (prediction files, explanations,
the page) reads an ensemble unchanged, with no second temperature on top.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["FoldEnsemble"]


class FoldEnsemble(nn.Module):
    """Mean of the members' calibrated probabilities; outputs are its log, (B, K).

    Args:
        members: the fold models (same classes, same input).
        temperature: the members' shared calibration temperature (> 0).
    """

    def __init__(self, members: Sequence[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        if not members:
            raise ValueError("a FoldEnsemble needs at least one member")
        if not temperature > 0:
            raise ValueError(f"the ensemble's temperature must be > 0, got {temperature}")
        self.members = nn.ModuleList(members)
        self.temperature = float(temperature)
        self.num_classes = getattr(members[0], "num_classes", None)

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's calibrated probabilities, (M, B, K), float32."""
        return torch.stack([torch.softmax(m(x).float() / self.temperature, dim=-1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log(mean_k softmax(z_k / T))`` of a normalised batch (B, 3, H, W)."""
        return torch.log(self.member_probabilities(x).mean(dim=0).clamp_min(torch.finfo(torch.float32).tiny))
