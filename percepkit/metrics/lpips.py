"""LPIPS v0.1 (Zhang et al. 2018) with real ImageNet backbones, as a metric.

The linear heads ship in the ``lpips`` wheel; the backbone (AlexNet or VGG16 ``features``) comes
from :func:`percepkit.weights.torchvision_features_state` (``PERCEPKIT_WEIGHTS``, the torch cache
or torchvision's download). If it cannot be found that raises
:class:`~percepkit.errors.MissingWeightsError`: LPIPS is never computed with random weights.
:func:`build_lpips`, :func:`lpips_heads` and :func:`lpips_distance` also serve the ``lpips``
loss term (:mod:`percepkit.metric_losses`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import MissingWeightsError, PercepkitError
from ..registry import METRICS
from .base import Metric, rgb_pair

__all__ = ["LPIPS", "LPIPS_ARCH", "LPIPS_VGG_LAYERS", "build_lpips", "load_backbone",
           "lpips_distance", "lpips_heads"]

LPIPS_ARCH = {"alex": "alexnet", "vgg": "vgg16"}
#: the VGG16 layers LPIPS-vgg reads, in percepkit's loss-network names (torchvision 3, 8, ...)
LPIPS_VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def _lpips_package():
    try:
        import lpips
    except ImportError as e:  # pragma: no cover - lpips is a dependency
        raise MissingWeightsError(f"the lpips package is not installed ({e}); "
                                  f"pip install lpips") from None
    return lpips


def build_lpips(net: Literal["alex", "vgg"] = "alex", weights: str = "imagenet") -> nn.Module:
    """A frozen ``lpips.LPIPS`` v0.1 in eval mode whose backbone holds real ImageNet weights."""
    from ..weights import torchvision_features_state

    if net not in LPIPS_ARCH:
        raise PercepkitError(f"lpips: net must be 'alex' or 'vgg', got {net!r}")
    state = torchvision_features_state(LPIPS_ARCH[net], weights)  # raises MissingWeightsError
    lpips = _lpips_package()
    with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, inside lpips
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    load_backbone(model.net, state, LPIPS_ARCH[net])
    return model.eval().requires_grad_(False)


def lpips_heads(net: Literal["alex", "vgg"]) -> list[torch.Tensor]:
    """The five linear-head weights (1, C, 1, 1) of LPIPS v0.1 from the ``lpips`` wheel."""
    from ..foreign import read_state_dict

    path = Path(_lpips_package().__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    state = read_state_dict(path)
    return [state[f"lin{k}.model.1.weight"].float() for k in range(5)]


def lpips_distance(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor],
                   heads: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS from backbone features of both images, one value per image (float32, shape (B,)).

    As ``lpips.LPIPS.forward``: unit-normalise each feature vector over channels, square the
    difference, weight the channels with the head, average over space, sum over layers.
    """
    from lpips import normalize_tensor

    total = 0.0
    for fa, fb, w in zip(feats_a, feats_b, heads, strict=True):
        diff = (normalize_tensor(fa.float()) - normalize_tensor(fb.float())) ** 2
        total = total + (diff * w.to(diff.device)).sum(dim=1).mean(dim=(1, 2))
    return total


class LPIPS(Metric):
    """LPIPS v0.1 (Zhang et al. 2018) via the ``lpips`` package, with real ImageNet backbones."""

    higher_is_better = False
    fmt = ".4f"
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
        self.model = build_lpips(net, weights)

    @property
    def convention(self) -> str:
        return (f"{self.name}: LPIPS v0.1, {LPIPS_ARCH[self.net_name]} ImageNet backbone with the "
                f"lpips package's linear heads, on RGB in [-1, 1] (1-channel images repeated to "
                f"RGB); " + (f"{self.crop_border} px border cropped" if self.crop_border
                             else "whole image (no border cropped)"))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = rgb_pair(output, target, self.crop_border, 16, self.name)
        dtype = next(self.model.parameters()).dtype
        value = self.model(output.to(dtype) * 2 - 1, target.to(dtype) * 2 - 1)
        return value.reshape(-1).to(torch.float64)


def load_backbone(net: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Copy torchvision ``features.N.*`` tensors into an lpips backbone (``sliceK.N.*``).

    lpips keeps torchvision's layer index ``N`` as the module name inside each slice, so the
    mapping is by that index; every backbone parameter must be found with the right shape.
    """
    own = net.state_dict()
    new = {}
    for key, value in own.items():
        slice_name, rest = key.split(".", 1)  # "slice2.3.weight" -> "3.weight"
        source = f"features.{rest}"
        if source not in state or tuple(state[source].shape) != tuple(value.shape):
            found = tuple(state[source].shape) if source in state else "missing"
            raise MissingWeightsError(
                f"the {arch} ImageNet weights do not fit the LPIPS backbone ({source}: expected "
                f"{tuple(value.shape)}, found {found}); provide torchvision's {arch} weights.")
        new[key] = state[source].to(value.dtype)
    net.load_state_dict(new, strict=True)


@METRICS.register("lpips")
def lpips_metric(net: Literal["alex", "vgg"] = "alex", crop_border: int = 0,
                 weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 (lower is better); AlexNet backbone by default, 'vgg' as an option."""
    return LPIPS(net=net, crop_border=crop_border, weights=weights)


@METRICS.register("lpips_vgg")
def lpips_vgg(crop_border: int = 0, weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 with the VGG16 backbone (lower is better)."""
    return LPIPS(net="vgg", crop_border=crop_border, weights=weights)
