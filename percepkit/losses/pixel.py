"""Per-pixel terms: ``pixel`` (L2/L1), ``charbonnier``, and the ``tv`` regulariser.

* ``pixel``:       mean over pixels of (ŷ - y)² (``l2``, as SRCNN) or |ŷ - y| (``l1``).
* ``charbonnier``: mean over pixels of sqrt((ŷ - y)² + eps²), eps = 1e-3 (Lai et al. 2017,
  LapSRN; BasicSR's ``CharbonnierLoss(eps=1e-12)`` computes sqrt(d² + 1e-12), i.e. eps = 1e-6
  here). Its minimum, on identical inputs, is eps, not 0.
* ``tv``:          Σ (ŷ_{i,j+1} - ŷ_{i,j})² + (ŷ_{i+1,j} - ŷ_{i,j})², divided by C·H·W when
  ``reduction='mean'`` (default), averaged over the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LossInputs, LossTerm

Criterion = Literal["l2", "l1", "charbonnier"]


def mean_error(a: torch.Tensor, b: torch.Tensor, criterion: Criterion = "l2",
               eps: float = 1e-3) -> torch.Tensor:
    """Mean over all elements of (a - b)², |a - b| or sqrt((a - b)² + eps²), in float32."""
    a, b = a.float(), b.float()
    if criterion == "l2":
        return F.mse_loss(a, b)
    if criterion == "l1":
        return F.l1_loss(a, b)
    if criterion == "charbonnier":
        diff = a - b
        return torch.sqrt(diff * diff + eps * eps).mean()
    raise ValueError(f"criterion must be 'l2', 'l1' or 'charbonnier', got {criterion!r}")


@LOSSES.register("pixel")
class PixelLoss(LossTerm):
    """Per-pixel loss between output and target: mean squared (l2) or absolute (l1) error."""

    def __init__(self, weight: float = 1.0, kind: Literal["l2", "l1"] = "l2") -> None:
        super().__init__(weight)
        self.kind = kind

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return mean_error(inputs.output, inputs.target, self.kind)


@LOSSES.register("charbonnier")
class CharbonnierLoss(LossTerm):
    """Charbonnier (smooth L1) per-pixel loss: mean of sqrt((ŷ - y)² + eps²); minimum eps."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(weight)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return mean_error(inputs.output, inputs.target, "charbonnier", self.eps)


@LOSSES.register("tv", aliases=("total_variation",))
class TVLoss(LossTerm):
    """Total-variation regulariser: squared differences of neighbouring pixels."""

    def __init__(self, weight: float = 1.0, reduction: Literal["mean", "sum"] = "mean") -> None:
        super().__init__(weight)
        self.reduction = reduction

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        y = inputs.output.float()
        tv = (y[..., :, 1:] - y[..., :, :-1]).pow(2).sum(dim=(1, 2, 3)) \
            + (y[..., 1:, :] - y[..., :-1, :]).pow(2).sum(dim=(1, 2, 3))
        if self.reduction == "mean":
            tv = tv / y[0].numel()
        return tv.mean()
