"""Loss-network terms of Johnson et al. 2016 (Sec. 3): ``feature`` and ``style``.

* ``feature``: ℓ_feat = ‖φ_j(ŷ) - φ_j(y)‖²₂ / (C_j H_j W_j) (``criterion='l2'``, the paper's),
  or the mean of |·| (``l1``) or of sqrt(·² + eps²) (``charbonnier``) over the C_j H_j W_j
  feature values; summed over layers j with ``layer_weights``, averaged over the batch. Layers
  may be post-ReLU (``relu3_3``) or pre-activation (``conv3_3``, as ESRGAN/BasicSR use).
* ``style``:   G_j(x) = ψψᵀ / (C_j H_j W_j) with ψ = φ_j(x) reshaped to C_j x H_j W_j;
  ℓ_style = ‖G_j(ŷ) - G_j(y_s)‖²_F (a sum over the C_j² entries; ``reduction='mean'`` averages
  them instead, as pytorch/examples and jcjohnson/fast-neural-style do), summed over layers,
  averaged over the batch. The style image may have any size.

Weights refer to images in [0, 1] RGB and a loss network that normalises with ImageNet mean/std
(torchvision VGG); they are not portable to other preprocessing conventions (Caffe VGG, [0, 255]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from ..registry import LOSSES
from .base import LossInputs, LossTerm, full_precision, layer_weight_list
from .pixel import Criterion, mean_error


@LOSSES.register("feature", aliases=("content", "perceptual"))
class FeatureLoss(LossTerm):
    """Feature reconstruction loss ℓ_feat: squared (or l1/charbonnier) feature distance / C·H·W."""

    def __init__(self, layers: list[str] = ("relu2_2",), weight: float = 1.0,
                 layer_weights: list[float] | None = None, criterion: Criterion = "l2",
                 eps: float = 1e-3) -> None:
        super().__init__(weight)
        self.output_layers = self.target_layers = tuple(layers)
        self.layer_weights = layer_weight_list(layers, layer_weights)
        if criterion not in ("l2", "l1", "charbonnier"):
            raise ValueError(f"criterion must be 'l2', 'l1' or 'charbonnier', got {criterion!r}")
        self.criterion = criterion
        self.eps = float(eps)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return sum(w * mean_error(inputs.output_features[k], inputs.target_features[k],
                                  self.criterion, self.eps)
                   for k, w in zip(self.output_layers, self.layer_weights))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G = ψψᵀ / (C·H·W) for features (B, C, H, W), computed in float32 (autocast off)."""
    b, c, h, w = features.shape
    psi = features.float().reshape(b, c, h * w)
    with full_precision(features.device):
        return torch.bmm(psi, psi.transpose(1, 2)) / (c * h * w)


@LOSSES.register("style", aliases=("gram",))
class StyleLoss(LossTerm):
    """Style reconstruction loss ℓ_style: squared Frobenius distance of Gram matrices.

    ``reduction='sum'`` is the paper's ‖·‖²_F; ``'mean'`` divides layer j by C_j² (the mean
    squared error of the Gram matrices), so weights carry over from pytorch/examples (style
    1e10 / content 1e5 there is style 1e5 with feature 1 here).
    """

    def __init__(self, layers: list[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                 weight: float = 1.0, layer_weights: list[float] | None = None,
                 reduction: Literal["sum", "mean"] = "sum") -> None:
        super().__init__(weight)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.output_layers = self.style_layers = tuple(layers)
        self.layer_weights = layer_weight_list(layers, layer_weights)
        self.targets: dict[str, torch.Tensor] = {}

    def set_style(self, features: Mapping[str, torch.Tensor]) -> None:
        self.targets = {k: gram_matrix(features[k]).mean(0, keepdim=True).detach()
                        for k in self.style_layers}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if not self.targets:
            raise RuntimeError("style loss has no style image: call CompositeLoss.set_style")
        total = 0.0
        for k, w in zip(self.style_layers, self.layer_weights):
            diff = gram_matrix(inputs.output_features[k]) - self.targets[k].to(inputs.output.device)
            err = diff.pow(2).sum(dim=(1, 2)) if self.reduction == "sum" \
                else diff.pow(2).mean(dim=(1, 2))
            total = total + w * err.mean()
        return total
