"""Example percepkit plugin: a Charbonnier loss, registered as ``example_charbonnier``.

percepkit has a built-in ``charbonnier`` term; a plugin may not take a built-in name (unless it
passes ``override=True``), so this example registers under its own prefixed name. Loss labels
become ``nn.ModuleDict`` keys and column names in training logs, so names use ``_``, not ``.``
(and never ``:``, which passes an argument, as in ``timm:resnet50``).
"""

from __future__ import annotations

import torch

from percepkit.losses import LossInputs, LossTerm
from percepkit.registry import LOSSES


@LOSSES.register("example_charbonnier")
class CharbonnierLoss(LossTerm):
    """Example plugin's Charbonnier (smooth L1) loss: mean of sqrt((ŷ - y)² + eps²)."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(weight)
        self.eps = eps

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        diff = inputs.output.float() - inputs.target.float()
        return torch.sqrt(diff * diff + self.eps**2).mean()
