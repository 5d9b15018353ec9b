"""DISTS (Ding, Ma, Wang & Simoncelli 2020, "Image Quality Assessment: Unifying Structure and
Texture Similarity") as a metric; :class:`DISTSNetwork` also serves the ``dists`` loss term.

The network is the authors' ``DISTS_pytorch.DISTS`` (PyPI ``dists-pytorch`` 0.1): torchvision's
VGG16 ImageNet trunk up to relu5_3, each max pooling replaced by "L2 pooling" (the square root of
a 3x3 Hann-weighted mean of squares, stride 2), on RGB in [0, 1] normalised with ImageNet
mean/std. For the six stages (the input itself, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
and each channel it compares global means (texture, ``S1``) and variances/covariance
(structure, ``S2``) with c1 = c2 = 1e-6, weights them with the learned ``alpha``/``beta``
(normalised to sum to 1) and returns ``1 - sum``: 0 for identical images, lower is better.

``alpha``/``beta`` ship in ``percepkit/assets/dists`` (converted from the wheel's
``weights.pt``; MIT licence and SHA-256 in the ``PROVENANCE.md`` there). The VGG16 weights come
from :func:`percepkit.models.weights.torchvision_features_state`; missing weights raise
:class:`~percepkit.errors.MissingWeightsError`, never a random network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError
from ..registry import METRICS
from ..runtime.files import asset_path
from .base import Metric, rgb_pair

__all__ = ["DISTS", "DISTSNetwork", "L2Pool", "dists_alpha_beta"]

#: SHA-256 of percepkit/assets/dists/dists_alpha_beta.safetensors
ALPHA_BETA_SHA256 = "d2aff22e1712104fd29767530c97b8df3241b4c66a85f49f761e1774bad71387"
STAGE_CHANNELS = (3, 64, 128, 256, 512, 512)
_POOLS = {4: 64, 9: 128, 16: 256, 23: 512}  # torchvision vgg16.features max-pool index: channels
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_C1 = _C2 = 1e-6


def dists_alpha_beta() -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' ``alpha`` and ``beta`` (each 1x1475x1x1 float32), checked by SHA-256."""
    from safetensors.torch import load_file

    from ..runtime.files import sha256_file

    path = asset_path("dists", "dists_alpha_beta.safetensors")
    if not path.is_file() or sha256_file(path) != ALPHA_BETA_SHA256:
        raise MissingWeightsError(f"the DISTS parameters shipped in {path} are missing or damaged "
                                  f"(SHA-256 check failed); reinstall percepkit.")
    state = load_file(str(path))
    return state["alpha"], state["beta"]


class L2Pool(nn.Module):
    """DISTS's L2 pooling: sqrt(3x3 Hann-weighted mean of x^2 + 1e-12), stride 2, padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]  # 0.5, 1, 0.5
        g = a[:, None] * a[None, :]
        g = (g / g.sum()).float()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: in float16 the 1e-12 vanishes and sqrt'(0) is infinite
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
            return (out + 1e-12).sqrt()


class DISTSNetwork(nn.Module):
    """The frozen DISTS network: ``net(x, y)`` gives one distance per image, shape (B,).

    Inputs are RGB in [0, 1]. Gradients flow to the inputs (the weights are frozen), so the
    same module is the metric and the loss. Statistics are computed in float32.
    """

    def __init__(self, weights: str = "imagenet") -> None:
        super().__init__()
        from ..models.weights import torchvision_features_state
        from ..nets import backbones
        from ..nets.lossnets import IMAGENET_MEAN, IMAGENET_STD

        state = torchvision_features_state("vgg16", weights)  # raises MissingWeightsError
        features = backbones.features("vgg16")[:30]  # up to relu5_3
        backbones.load_features(features, state, "vgg16")
        for index, channels in _POOLS.items():
            features[index] = L2Pool(channels)
        self.features = features
        alpha, beta = dists_alpha_beta()
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DISTSNetwork:
        return super().train(False)  # frozen: always in eval mode

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six compared stages: the input, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
        out = [x]
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, STAGE_CHANNELS, dim=1)
        betas = torch.split(self.beta / total, STAGE_CHANNELS, dim=1)
        texture = structure = 0.0
        for fx, fy, a, b in zip(self.stages(x), self.stages(y), alphas, betas, strict=True):
            fx, fy = fx.float(), fy.float()
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            vx = ((fx - mx) ** 2).mean(dim=(2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + _C1) / (mx * mx + my * my + _C1)
            s2 = (2 * cov + _C2) / (vx + vy + _C2)
            texture = texture + (a * s1).sum(dim=1)
            structure = structure + (b * s2).sum(dim=1)
        return 1 - (texture + structure).reshape(-1)


class DISTS(Metric):
    """DISTS (Ding et al. 2020): VGG16 structure and texture similarity; lower is better."""

    higher_is_better = False
    fmt = ".4f"
    runs_network = True
    #: like LPIPS, perceptual metrics are scored on the whole image by default
    whole_image = True

    def __init__(self, crop_border: int = 0, weights: str = "imagenet") -> None:
        super().__init__()
        self.name = "dists"
        self.crop_border = int(crop_border)
        self.net = DISTSNetwork(weights).to(memory_format=torch.channels_last)

    @property
    def convention(self) -> str:
        return ("dists: DISTS (Ding et al. 2020) as DISTS_pytorch 0.1, torchvision VGG16 ImageNet "
                "trunk with L2 pooling and the authors' alpha/beta, float32, on RGB in [0, 1] "
                "(1-channel images repeated to RGB); "
                + (f"{self.crop_border} px border cropped" if self.crop_border
                   else "whole image (no border cropped)"))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = rgb_pair(output, target, self.crop_border, 1, self.name)
        fmt = torch.channels_last  # 4-10% faster on our CPU
        return self.net(output.float().contiguous(memory_format=fmt),
                        target.float().contiguous(memory_format=fmt)).to(torch.float64)


@METRICS.register("dists")
def dists_metric(crop_border: int = 0, weights: str = "imagenet") -> DISTS:
    """DISTS (Ding et al. 2020): VGG16 ImageNet trunk, the authors' alpha/beta (lower is better)."""
    return DISTS(crop_border=crop_border, weights=weights)
