"""torchvision's ImageNet feature extractors (VGG16/19, AlexNet ``features``), built here.

The ``nn.Sequential`` returned by :func:`features` has torchvision's module indices, types and
parameter names, so ``features.N.*`` tensors of a torchvision checkpoint load as they are
(:func:`load_features`). Building them here costs ~0.1 s. ``torchvision.models.vgg16()`` took
~3.5 s on our 2-core CPU: importing torchvision (which imports ``torch._dynamo``) and
initialising the 124M-parameter classifier that a loss network never uses. ReLUs are out of
place, so a captured convolution output is not overwritten by the ReLU after it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MissingWeightsError

__all__ = ["VGG_BLOCKS", "features", "init_like_torchvision", "load_features"]

#: convolutions per block of torchvision's VGG configurations "D" (vgg16) and "E" (vgg19)
VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_VGG_WIDTHS = (64, 128, 256, 512, 512)
#: torchvision ``alexnet().features``: (out channels, kernel, stride, padding, pool after)
_ALEXNET = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
            (256, 3, 1, 1, False), (256, 3, 1, 1, True))


def features(arch: str) -> nn.Sequential:
    """torchvision's ``<arch>().features`` layout with default-initialised parameters."""
    layers: list[nn.Module] = []
    channels = 3
    if arch in VGG_BLOCKS:
        for n, width in zip(VGG_BLOCKS[arch], _VGG_WIDTHS):
            for _ in range(n):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
    elif arch == "alexnet":
        for width, kernel, stride, padding, pool in _ALEXNET:
            layers += [nn.Conv2d(channels, width, kernel, stride, padding), nn.ReLU()]
            layers += [nn.MaxPool2d(3, 2)] if pool else []
            channels = width
    else:
        raise ValueError(f"unknown backbone {arch!r}; expected one of "
                         f"{', '.join([*VGG_BLOCKS, 'alexnet'])}")
    return nn.Sequential(*layers)


def init_like_torchvision(net: nn.Sequential) -> nn.Sequential:
    """Random weights as torchvision's VGG initialises them (Kaiming normal, fan-out, zero
    bias): for ``weights: random`` loss networks (timing and plumbing tests only)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def load_features(net: nn.Sequential, state: dict[str, torch.Tensor], arch: str) -> None:
    """Copy torchvision ``features.N.*`` tensors into ``net`` (a prefix of :func:`features`).

    Every parameter of ``net`` must be found with its shape, else one sentence naming the
    first that is not; tensors beyond ``net``'s depth are ignored.
    """
    new = {}
    for key, value in net.state_dict().items():
        source = f"features.{key}"
        found = state.get(source)
        if found is None or tuple(found.shape) != tuple(value.shape):
            what = "missing" if found is None else f"of shape {tuple(found.shape)}"
            raise MissingWeightsError(
                f"the {arch} weights do not fit its torchvision layout ({source} is {what}, "
                f"expected {tuple(value.shape)}); provide torchvision's {arch} ImageNet weights.")
        new[key] = found.to(value.dtype)
    net.load_state_dict(new, strict=True)
