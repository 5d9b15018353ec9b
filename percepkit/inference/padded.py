"""``PaddedNet``: a transform that takes images of any size, padded and cropped exactly as the
:class:`~percepkit.inference.predictor.Predictor` (and so ``percepkit stylize`` / ``upscale``)
pads and crops them; what :func:`percepkit.load` returns."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .geometry import min_side, stride
from .tiles import pad_for_net, pad_to_multiple_traced


class PaddedNet(nn.Module):
    """``net`` for inputs of any size: ``(B, C, H, W)`` -> ``(B, C, scale H, scale W)``.

    The input is reflection-padded at the bottom and right to a multiple of the net's stride
    (:func:`~percepkit.inference.tiles.pad_for_net`), and the output is cropped back. One
    untiled pass, differentiable, in the caller's precision and device; for large images within
    a memory budget, use :class:`~percepkit.inference.Predictor`. Traced for export (ONNX,
    TorchScript), the same padding is written with size tensors, so that the exported graph
    takes any size too (:func:`~percepkit.inference.tiles.pad_to_multiple_traced`). The network
    is :attr:`net` (its weights: ``.net.state_dict()``); its other attributes read through.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.stride = stride(net)
        self.min_side = min_side(net)
        self.task: str | None = getattr(net, "task", None)
        self.scale = int(getattr(net, "scale", 1))

    def __getattr__(self, name: str) -> Any:
        """Attributes of the network itself (``architecture``, ``channels``, ...) read through."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None:
                raise
            return getattr(net, name)

    def blend(self, mix: str) -> PaddedNet:
        """A multi-style network's style or blend (``"candy:0.5,mosaic:0.5"``), for any size as
        this one (:meth:`~percepkit.nets.transforms.JohnsonStyle.blend`)."""
        return PaddedNet(self.net.blend(mix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # an export: the graph must pad every size, not this one
            padded, h, w = pad_to_multiple_traced(x, self.stride, self.min_side)
        else:
            padded, h, w = pad_for_net(x, self.stride, self.min_side)
        y = self.net(padded)
        s = y.shape[-1] // padded.shape[-1]
        return y[..., : h * s, : w * s]
