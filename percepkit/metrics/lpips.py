"""LPIPS v0.1 (Zhang et al. 2018) with real ImageNet backbones, as a metric.

The linear heads ship in the ``lpips`` wheel (read from its files, not imported); the backbone
(AlexNet or VGG16 ``features``, :mod:`percepkit.nets.backbones`) comes from
:func:`percepkit.models.weights.torchvision_features_state` (``PERCEPKIT_WEIGHTS``, the torch cache
or torchvision's download); if it cannot be found that raises
:class:`~percepkit.errors.MissingWeightsError`: LPIPS is never computed with random weights.
The network equals ``lpips.LPIPS`` to float round-off (tested).
:func:`build_lpips`, :func:`lpips_heads` and :func:`lpips_distance` also serve the ``lpips``
loss term (:mod:`percepkit.losses.metric_terms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import MissingWeightsError, PercepkitError
from ..registry import METRICS
from .base import Metric, rgb_pair

__all__ = ["LPIPS", "LPIPS_ARCH", "LPIPS_VGG_LAYERS", "LPIPSNetwork", "build_lpips",
           "lpips_distance", "lpips_heads", "unit_normalize"]

LPIPS_ARCH = {"alex": "alexnet", "vgg": "vgg16"}
#: the VGG16 layers LPIPS-vgg reads, in percepkit's loss-network names (torchvision 3, 8, ...)
LPIPS_VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


#: each backbone's five LPIPS slices, as end indices into torchvision's ``features``
_SLICE_ENDS = {"alexnet": (2, 5, 8, 10, 12), "vgg16": (4, 9, 16, 23, 30)}
#: lpips' ScalingLayer (v0.1): (x - shift) / scale on RGB in [-1, 1]
_SHIFT, _SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)


def _lpips_weights_dir() -> Path:
    """The ``weights/v0.1`` folder of the installed ``lpips`` wheel, found without importing it
    (its import pulls in torchvision and ``torch._dynamo``: ~2 s here)."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise MissingWeightsError("the lpips package is not installed, and its linear-head "
                                  "weights come with it: pip install lpips")
    return Path(spec.origin).parent / "weights" / "v0.1"


class LPIPSNetwork(nn.Module):
    """LPIPS v0.1 as ``lpips.LPIPS(net=...)`` computes it: the ScalingLayer, five slices of the
    ImageNet backbone, unit-normalised features, the wheel's linear heads, spatial mean, sum
    over layers (:func:`lpips_distance`). Frozen; gradients reach the inputs."""

    def __init__(self, net: Literal["alex", "vgg"], state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from ..nets import backbones

        arch = LPIPS_ARCH[net]
        ends = _SLICE_ENDS[arch]
        trunk = backbones.features(arch)[:ends[-1]]
        backbones.load_features(trunk, state, arch)
        self.slices = nn.ModuleList(trunk[a:b] for a, b in zip((0, *ends[:-1]), ends))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        for k, head in enumerate(lpips_heads(net)):
            self.register_buffer(f"head{k}", head, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSNetwork:
        return super().train(False)  # frozen: always in eval mode

    @property
    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"head{k}") for k in range(len(self.slices))]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five compared feature maps of RGB images in [-1, 1]."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for piece in self.slices:
            h = piece(h)
            out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS of each pair of RGB images in [-1, 1], shape (B,)."""
        return lpips_distance(self.features(a), self.features(b), self.heads)


def build_lpips(net: Literal["alex", "vgg"] = "alex", weights: str = "imagenet") -> LPIPSNetwork:
    """A frozen LPIPS v0.1 network whose backbone holds real ImageNet weights."""
    from ..models.weights import torchvision_features_state

    if net not in LPIPS_ARCH:
        raise PercepkitError(f"lpips: net must be 'alex' or 'vgg', got {net!r}")
    state = torchvision_features_state(LPIPS_ARCH[net], weights)  # raises MissingWeightsError
    return LPIPSNetwork(net, state)


def lpips_heads(net: Literal["alex", "vgg"]) -> list[torch.Tensor]:
    """The five linear-head weights (1, C, 1, 1) of LPIPS v0.1 from the ``lpips`` wheel."""
    from ..models.foreign import read_state_dict

    state = read_state_dict(_lpips_weights_dir() / f"{net}.pth")
    return [state[f"lin{k}.model.1.weight"].float() for k in range(5)]


def unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each feature vector divided by its L2 norm over channels (``lpips.normalize_tensor``)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_distance(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor],
                   heads: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS from backbone features of both images, one value per image (float32, shape (B,)).

    As ``lpips.LPIPS.forward``: unit-normalise each feature vector over channels, square the
    difference, weight the channels with the head, average over space, sum over layers.
    """
    total = 0.0
    for fa, fb, w in zip(feats_a, feats_b, heads, strict=True):
        diff = (unit_normalize(fa.float()) - unit_normalize(fb.float())) ** 2
        total = total + (diff * w.to(diff.device)).sum(dim=1).mean(dim=(1, 2))
    return total


class LPIPS(Metric):
    """LPIPS v0.1 (Zhang et al. 2018) with the ``lpips`` wheel's heads and real ImageNet
    backbones."""

    higher_is_better = False
    fmt = ".4f"
    runs_network = True
    #: published SR tables (SPSR, ESRGAN, ...) score perceptual metrics on the whole image
    whole_image = True

    def __init__(self, net: Literal["alex", "vgg"] = "alex", crop_border: int = 0,
                 weights: str = "imagenet") -> None:
        super().__init__()
        if net not in LPIPS_ARCH:
            raise PercepkitError(f"lpips: net must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        self.crop_border = int(crop_border)
        self.name = "lpips" if net == "alex" else "lpips_vgg"
        # channels_last: 13% (alex) / 22% (vgg) faster on our CPU for BSD100-sized images
        self.model = build_lpips(net, weights).to(memory_format=torch.channels_last)

    @property
    def convention(self) -> str:
        return (f"{self.name}: LPIPS v0.1, {LPIPS_ARCH[self.net_name]} ImageNet backbone with the "
                f"lpips package's linear heads, on RGB in [-1, 1] (1-channel images repeated to "
                f"RGB); " + (f"{self.crop_border} px border cropped" if self.crop_border
                             else "whole image (no border cropped)"))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = rgb_pair(output, target, self.crop_border, 16, self.name)
        dtype, fmt = next(self.model.parameters()).dtype, torch.channels_last
        value = self.model((output.to(dtype) * 2 - 1).contiguous(memory_format=fmt),
                           (target.to(dtype) * 2 - 1).contiguous(memory_format=fmt))
        return value.reshape(-1).to(torch.float64)


@METRICS.register("lpips")
def lpips_metric(net: Literal["alex", "vgg"] = "alex", crop_border: int = 0,
                 weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 (lower is better); AlexNet backbone by default, 'vgg' as an option."""
    return LPIPS(net=net, crop_border=crop_border, weights=weights)


@METRICS.register("lpips_vgg")
def lpips_vgg(crop_border: int = 0, weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 with the VGG16 backbone (lower is better)."""
    return LPIPS(net="vgg", crop_border=crop_border, weights=weights)
