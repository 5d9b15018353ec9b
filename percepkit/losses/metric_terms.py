"""Loss terms built on image-quality metrics: ``ssim``, ``ms_ssim``, ``lpips`` and ``dists``.

Every term compares the output with the target, both RGB in [0, 1] shaped (B, 3, H, W), and is
differentiable with respect to the output; the value is averaged over the batch.

* ``ssim``:    1 - SSIM, the metric's SSIM map (:func:`percepkit.metrics.fidelity.ssim_terms`,
  11x11 Gaussian, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering) on each RGB channel with
  data range L = 1, averaged over channels and pixels;
* ``ms_ssim``: 1 - MS-SSIM (:func:`percepkit.metrics.fidelity.ms_ssim_values`, 5 scales) per
  RGB channel with L = 1, averaged over channels; images need at least 161 px per side;
* ``lpips``:   LPIPS v0.1 (the ``lpips`` wheel's linear heads, real ImageNet backbone);
  ``features: loss_network`` reads VGG16 relu1_2 ... relu5_3 from the recipe's ``vgg16`` loss
  network, so one backbone pass per batch serves it and the other feature terms;
* ``dists``:   DISTS (:class:`percepkit.metrics.dists.DISTSNetwork`), its own VGG16 trunk;
* ``grid``:    the ``grid`` artifact metric of the output (levels; no target), above ``margin``.

The SSIM terms run in float32 with autocast off. The network terms run their backbone at the
precision they are called with (a composite loss that turns autocast off gives float32) and
compute their statistics and distances in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import PercepkitError
from ..metrics.artifacts import Grid, grid_phase_means
from ..metrics.dists import DISTSNetwork
from ..metrics.fidelity import (
    GRADIENT_FLOOR,
    gaussian_window,
    ms_ssim_min_size,
    ms_ssim_values,
    ssim_terms,
)
from ..metrics.lpips import LPIPS_VGG_LAYERS, build_lpips, lpips_distance, lpips_heads
from ..registry import LOSSES
from . import LossInputs, LossTerm
from .base import full_precision

__all__ = ["DISTSLoss", "GridLoss", "LPIPSLoss", "MSSSIMLoss", "SSIMLoss"]


def _pair(inputs: LossInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and target of a term that needs both, in float32 (shapes checked): under bf16/fp16
    autocast the transform's output arrives in that dtype, and the terms run with autocast off."""
    if inputs.target is None:
        raise PercepkitError(f"the {name} loss compares the output with a target image, but "
                             f"this task gives none")
    if inputs.output.shape != inputs.target.shape or inputs.output.shape[1] != 3:
        raise PercepkitError(f"the {name} loss needs output and target of the same (B, 3, H, W) "
                             f"shape, got {tuple(inputs.output.shape)} and "
                             f"{tuple(inputs.target.shape)}")
    return inputs.output.float(), inputs.target.float()


def _check_side(x: torch.Tensor, minimum: int, name: str, reason: str) -> None:
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < minimum or w < minimum:
        raise PercepkitError(f"the {name} loss got {w}x{h} images but needs at least "
                             f"{minimum}x{minimum} {reason}; train on larger patches.")


@LOSSES.register("ssim")
class SSIMLoss(LossTerm):
    """1 - SSIM (11x11 Gaussian window, sigma 1.5) on RGB in [0, 1], mean over channels."""

    def __init__(self, weight: float = 1.0, window: int = 11, sigma: float = 1.5,
                 k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__(weight)
        self.window, self.sigma, self.k1, self.k2 = int(window), float(sigma), k1, k2

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        output, target = _pair(inputs, "ssim")
        _check_side(output, self.window, "ssim", f"(the {self.window}x{self.window} window)")
        with full_precision(output.device):
            ssim_map, _ = ssim_terms(output.float(), target.float(),
                                     gaussian_window(self.window, self.sigma),
                                     self.k1**2, self.k2**2)
            return 1.0 - ssim_map.mean()


@LOSSES.register("ms_ssim", aliases=("msssim",))
class MSSSIMLoss(LossTerm):
    """1 - MS-SSIM (Wang et al. 2003, 5 scales) on RGB in [0, 1], mean over channels."""

    #: per-scale means are floored here before the power so that gradients stay finite
    floor = GRADIENT_FLOOR

    def __init__(self, weight: float = 1.0, window: int = 11, sigma: float = 1.5,
                 k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__(weight)
        self.window, self.sigma, self.k1, self.k2 = int(window), float(sigma), k1, k2

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        output, target = _pair(inputs, "ms_ssim")
        _check_side(output, ms_ssim_min_size(self.window), "ms_ssim",
                    f"for 5 scales with the {self.window}x{self.window} window")
        with full_precision(output.device):
            values = ms_ssim_values(output.float(), target.float(),
                                    gaussian_window(self.window, self.sigma),
                                    self.k1**2, self.k2**2, floor=self.floor)
            return 1.0 - values.mean()


@LOSSES.register("lpips")
class LPIPSLoss(LossTerm):
    """LPIPS v0.1 (Zhang et al. 2018) between output and target; real ImageNet backbone only.

    ``net: vgg`` (default; the lpips authors' choice for optimisation) or ``alex``.
    ``features: own`` runs the term's own frozen backbone; ``features: loss_network`` (vgg only)
    reads relu1_2 ... relu5_3 from the recipe's loss network, which must be ``vgg16`` with
    ImageNet weights: LPIPS's input scaling on [-1, 1] is ImageNet mean/std normalisation on
    [0, 1], so its VGG16 features are the loss network's. The first batch checks this.
    """

    def __init__(self, weight: float = 1.0, net: Literal["alex", "vgg"] = "vgg",
                 features: Literal["own", "loss_network"] = "own",
                 weights: str = "imagenet") -> None:
        super().__init__(weight)
        if features == "loss_network" and net != "vgg":
            raise PercepkitError("lpips: 'features: loss_network' needs 'net: vgg' (the recipe's "
                                 "vgg16 loss network); use 'features: own' for alex")
        self.net_name, self.features = net, features
        if features == "own":
            self.network = build_lpips(net, weights)  # holds the heads
        else:
            for k, head in enumerate(lpips_heads(net)):
                self.register_buffer(f"head{k}", head, persistent=False)
            self.output_layers = self.target_layers = LPIPS_VGG_LAYERS
            self._register_probe(weights)

    @classmethod
    def reads_layers(cls, spec: Mapping[str, Any]) -> tuple[str, ...]:
        """relu1_2 ... relu5_3 of the loss network with ``features: loss_network``, else none."""
        return LPIPS_VGG_LAYERS if spec.get("features") == "loss_network" else ()

    @property
    def heads(self) -> list[torch.Tensor]:
        if self.features == "own":
            return self.network.heads
        return [getattr(self, f"head{k}") for k in range(5)]

    def _register_probe(self, weights: str) -> None:
        """VGG16's first two convolutions, to check once that the loss network is VGG16."""
        from ..models.weights import torchvision_features_state

        state = torchvision_features_state("vgg16", weights)
        for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
            self.register_buffer(f"probe{key.replace('.', '_')}", state[f"features.{key}"],
                                 persistent=False)
        self._checked = False

    def _check_loss_network(self, inputs: LossInputs) -> None:
        from ..nets.lossnets import IMAGENET_MEAN, IMAGENET_STD

        x = inputs.output[:1].detach().float()
        with torch.no_grad(), full_precision(x.device):
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            h = F.relu(F.conv2d((x - mean) / std, self.probe0_weight, self.probe0_bias,
                                padding=1))
            h = F.relu(F.conv2d(h, self.probe2_weight, self.probe2_bias, padding=1))
            got = inputs.output_features["relu1_2"][:1].detach().float()
            error = float((got - h).norm() / h.norm().clamp_min(1e-12))
        if error > 0.05:
            raise PercepkitError(
                f"lpips with 'features: loss_network' reads VGG16 features, but the recipe's loss "
                f"network gives other relu1_2 values (relative difference {error:.2f}); use "
                f"'loss_network: {{name: vgg16, weights: imagenet}}' or 'features: own'.")
        self._checked = True

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        output, target = _pair(inputs, "lpips")
        if self.features == "own":
            fa = self.network.features(output * 2 - 1)
            with torch.no_grad():
                fb = self.network.features(target * 2 - 1)
        else:
            if not self._checked:
                self._check_loss_network(inputs)
            fa = [inputs.output_features[k] for k in LPIPS_VGG_LAYERS]
            fb = [inputs.target_features[k] for k in LPIPS_VGG_LAYERS]
        with full_precision(output.device):
            return lpips_distance(list(fa), list(fb), self.heads).mean()


@LOSSES.register("dists")
class DISTSLoss(LossTerm):
    """DISTS (Ding et al. 2020) between output and target: VGG16 with L2 pooling, own trunk."""

    def __init__(self, weight: float = 1.0, weights: str = "imagenet") -> None:
        super().__init__(weight)
        self.net = DISTSNetwork(weights)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        output, target = _pair(inputs, "dists")
        return self.net(output, target).mean()


@LOSSES.register("grid")
class GridLoss(LossTerm):
    """Penalty on a periodic pattern of the output: the grid metric (levels) above a margin.

    The value is ``max(0, grid(output) - margin)`` averaged over the batch, with ``grid`` the
    metric of :mod:`percepkit.metrics.artifacts` (the spread of the ``period x period`` phase
    means of the high-passed luma, 0..255 levels; computed in float64). ``margin`` leaves a
    photo's own periodic content alone (Set5/Set14 HR images: 0.04-0.52 levels at period 4).
    The target is not used, so it also serves tasks without one.
    """

    def __init__(self, weight: float = 1.0, period: int = 4, margin: float = 0.0) -> None:
        super().__init__(weight)
        self.grid = Grid(period=period)
        self.margin = float(margin)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        output = inputs.output
        _check_side(output, 2 * self.grid.period, "grid", f"(two periods of {self.grid.period})")
        with full_precision(output.device):
            means = grid_phase_means(output.float(), self.grid.period).flatten(1)
            # the metric's population std, kept differentiable where the output has no pattern
            values = (means.var(dim=1, unbiased=False) + 1e-12).sqrt()
            return (values - self.margin).clamp(min=0).mean().float()
