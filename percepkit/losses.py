"""Loss terms and the composite loss that sums them.

Every term is registered in :data:`percepkit.registry.LOSSES`; its constructor arguments are the
recipe keys (``weight`` included). Definitions (Johnson et al. 2016, Sec. 3):

* ``pixel``:   mean over pixels of (ŷ - y)² (``l2``, as SRCNN) or |ŷ - y| (``l1``).
* ``feature``: ℓ_feat = ‖φ_j(ŷ) - φ_j(y)‖²₂ / (C_j H_j W_j), summed over layers j with
  ``layer_weights``, averaged over the batch.
* ``style``:   G_j(x) = ψψᵀ / (C_j H_j W_j) with ψ = φ_j(x) reshaped to C_j x H_j W_j;
  ℓ_style = ‖G_j(ŷ) - G_j(y_s)‖²_F (a sum over the C_j² entries; ``reduction='mean'`` averages
  them instead, as pytorch/examples and jcjohnson/fast-neural-style do), summed over layers,
  averaged over the batch. The style image may have any size.
* ``tv``:      Σ (ŷ_{i,j+1} - ŷ_{i,j})² + (ŷ_{i+1,j} - ŷ_{i,j})², divided by C·H·W when
  ``reduction='mean'`` (default), averaged over the batch.

Weights refer to images in [0, 1] RGB and a loss network that normalises with ImageNet mean/std
(torchvision VGG); they are not portable to other preprocessing conventions (Caffe VGG, [0, 255]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RecipeError
from .lossnets import LossNetwork
from .registry import LOSSES


@dataclass
class LossInputs:
    """What a term sees: the output, its target, and loss-network features of both."""

    output: torch.Tensor
    target: torch.Tensor | None
    output_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    target_features: Mapping[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base class of loss terms. Subclasses implement ``forward(inputs) -> scalar``.

    ``output_layers`` / ``target_layers`` / ``style_layers`` name the loss-network layers the
    term needs for the output, the target and the style image.
    """

    output_layers: tuple[str, ...] = ()
    target_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def set_style(self, features: Mapping[str, torch.Tensor]) -> None:
        """Receive the style image's features (terms with ``style_layers`` only)."""


def _layer_weights(layers: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"layer_weights has {len(weights)} entries for {len(layers)} layers")
    return [float(w) for w in weights]


@LOSSES.register("pixel")
class PixelLoss(LossTerm):
    """Per-pixel loss between output and target: mean squared (l2) or absolute (l1) error."""

    def __init__(self, weight: float = 1.0, kind: Literal["l2", "l1"] = "l2") -> None:
        super().__init__(weight)
        self.kind = kind

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        fn = F.mse_loss if self.kind == "l2" else F.l1_loss
        return fn(inputs.output.float(), inputs.target.float())


@LOSSES.register("feature", aliases=("content", "perceptual"))
class FeatureLoss(LossTerm):
    """Feature reconstruction loss ℓ_feat: squared distance of features over C·H·W, per layer."""

    def __init__(self, layers: list[str] = ("relu2_2",), weight: float = 1.0,
                 layer_weights: list[float] | None = None) -> None:
        super().__init__(weight)
        self.output_layers = self.target_layers = tuple(layers)
        self.layer_weights = _layer_weights(layers, layer_weights)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return sum(w * F.mse_loss(inputs.output_features[k].float(),
                                  inputs.target_features[k].float())
                   for k, w in zip(self.output_layers, self.layer_weights))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G = ψψᵀ / (C·H·W) for features (B, C, H, W), computed in float32."""
    b, c, h, w = features.shape
    psi = features.float().reshape(b, c, h * w)
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
        self.layer_weights = _layer_weights(layers, layer_weights)
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


class CompositeLoss(nn.Module):
    """Weighted sum of loss terms; runs the loss network once per batch for all terms.

    ``forward(output, target)`` returns ``(total, {label: weighted value})``.
    """

    def __init__(self, terms: Mapping[str, LossTerm], loss_network: LossNetwork | None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.loss_network = loss_network
        self.output_layers = self._union("output_layers")
        self.target_layers = self._union("target_layers")
        self.style_layers = self._union("style_layers")
        needed = {*self.output_layers, *self.target_layers, *self.style_layers}
        if needed and loss_network is None:
            raise RecipeError("losses: these terms need a loss network (layers "
                              f"{sorted(needed)}), but the recipe has no 'loss_network'")
        if needed:
            loss_network.truncate(needed)

    def _union(self, attr: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x for t in self.terms.values() for x in getattr(t, attr)))

    def features(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Loss-network features of ``image`` at ``layers`` ({} when none are needed)."""
        return self.loss_network(image, layers) if layers else {}

    @torch.no_grad()
    def set_style(self, style: torch.Tensor) -> None:
        """Compute the style targets (Gram matrices) once from a style image (1, 3, H, W)."""
        feats = self.features(style, self.style_layers)
        for term in self.terms.values():
            if term.style_layers:
                term.set_style(feats)

    def forward(self, output: torch.Tensor, target: torch.Tensor | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            target_feats = self.features(target, self.target_layers) if target is not None else {}
        inputs = LossInputs(output, target, self.features(output, self.output_layers),
                            target_feats)
        parts = {label: term.weight * term(inputs) for label, term in self.terms.items()}
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}


def build_loss(specs: Sequence[Mapping[str, Any]], loss_network: LossNetwork | None,
               where: str = "losses") -> CompositeLoss:
    """Build the composite loss from recipe entries ``[{name, weight, ...}, ...]``."""
    if not specs:
        raise RecipeError(f"{where}: expected a non-empty list of loss terms")
    terms: dict[str, LossTerm] = {}
    for i, spec in enumerate(specs):
        name, _ = LOSSES.resolve(spec, where=f"{where}[{i}]")
        try:
            term = LOSSES.build(spec, where=f"{where}[{i}]")
        except ValueError as e:
            raise RecipeError(f"{where}[{i}]: {e}") from None
        label = LOSSES.entry(name).name
        n = 2
        while label in terms:
            label, n = f"{LOSSES.entry(name).name}_{n}", n + 1
        terms[label] = term
    if loss_network is not None:
        for label, term in terms.items():
            layers = {*term.output_layers, *term.target_layers, *term.style_layers}
            try:
                loss_network.check_layers(layers)
            except Exception as e:
                raise RecipeError(f"{where} ({label}): {e}") from None
    return CompositeLoss(terms, loss_network)
