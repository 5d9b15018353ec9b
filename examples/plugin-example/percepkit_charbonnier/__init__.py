"""Charbonnier loss for percepkit: sqrt((y_hat - y)^2 + eps^2), a smooth L1 (Lai et al. 2017)."""

from __future__ import annotations

import torch

from percepkit.losses import LossInputs, LossTerm
from percepkit.registry import LOSSES


@LOSSES.register("charbonnier")
class CharbonnierLoss(LossTerm):
    """Charbonnier (smooth L1) per-pixel loss: mean of sqrt((ŷ - y)² + eps²)."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(weight)
        self.eps = eps

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        diff = inputs.output.float() - inputs.target.float()
        return torch.sqrt(diff * diff + self.eps**2).mean()
