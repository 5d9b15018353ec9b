"""The SRCNN protocol for one-channel (Y-only) super-resolution networks on RGB images.

SRCNN, VDSR and their descendants are trained on the luma of MATLAB ``rgb2ycbcr`` (ITU-R
BT.601, studio range) and are applied the same way: the RGB input is converted to YCbCr, the
network upscales Y, Cb and Cr are upscaled with MATLAB bicubic, and the result is converted back
to RGB. Values stay unrounded floats in [0, 1] units (MATLAB rounds when its input is uint8), so
the path is differentiable and can be trained with any percepkit loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.images import mix_channels
from ..data.imresize import imresize

__all__ = ["PROTOCOL", "rgb_to_ycbcr", "y_channel_upscale", "ycbcr_to_rgb"]

PROTOCOL = ("one-channel model, SRCNN protocol: MATLAB rgb2ycbcr Y (unrounded) in, the model's Y "
            "out, Cb/Cr upscaled with MATLAB bicubic, converted back with ycbcr2rgb")

# MATLAB rgb2ycbcr for [0, 1] input: ycbcr = offset + M @ rgb (the same numbers as
# percepkit.metrics.rgb_to_y's luma row and scikit-image's rgb2ycbcr).
_M = torch.tensor([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]], dtype=torch.float64) / 255.0
_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0
_M_INV = torch.linalg.inv(_M)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` of (..., 3, H, W) RGB in [0, 1]; Y, Cb, Cr in [0, 1] units."""
    return mix_channels(_M, x) + _OFFSET.to(device=x.device, dtype=x.dtype).view(3, 1, 1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``ycbcr2rgb``: the inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    return mix_channels(_M_INV, x - _OFFSET.to(device=x.device, dtype=x.dtype).view(3, 1, 1))


def y_channel_upscale(upscale_y: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      scale: int) -> torch.Tensor:
    """Upscale (B, 3, H, W) RGB with a Y-only network: ``upscale_y`` maps (B, 1, H, W) luma to
    (B, 1, sH, sW); chroma is upscaled with MATLAB bicubic; returns RGB (not clamped)."""
    ycc = rgb_to_ycbcr(x)
    y = upscale_y(ycc[:, :1])
    cbcr = imresize(ycc[:, 1:], scale=scale)
    return ycbcr_to_rgb(torch.cat([y.to(cbcr.dtype), cbcr], dim=1))
