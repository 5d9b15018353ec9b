"""What a network needs to be tiled: scale, stride, receptive field and activation memory.

Works on any ``nn.Module`` by walking its layers. Layers it does not know may describe
themselves (the fused layers of the fast path do): ``stride``, ``radius_at(factor)`` (their
receptive-field radius in network-input pixels when each of their input pixels spans
``factor`` network-input pixels) and ``factor_after(factor)`` (the same for their output).
Whole networks may declare ``size_multiple`` (inputs must be multiples of it) and
``tile_margin`` (context pixels a tile needs, when the walk cannot know it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PercepkitError
from .normstats import is_global_norm
from .tiles import net_min_side


@dataclass
class NetInfo:
    """Geometry of a transform: output ``scale``, total stride ``align`` (inputs and tile
    offsets must be multiples of it), ``margin`` (context pixels a tile needs on each side, at
    least the receptive-field radius), activation ``bytes_per_pixel`` of input at peak,
    whether it has globally normalised layers (instance norm), and the ``min_side`` inputs are
    padded to (:func:`min_side`)."""

    scale: int
    align: int
    margin: int
    bytes_per_pixel: float
    global_norm: bool
    min_side: int


def _pair(v: int | tuple[int, ...]) -> int:
    return int(v[0] if isinstance(v, tuple) else v)


def geometry(model: nn.Module) -> tuple[int, float]:
    """(total stride, receptive-field radius in input pixels), by walking the layers in order.

    Over-estimates are safe (a larger tile margin); networks that resample inside ``forward``
    (bicubic skips) get a small allowance for the bicubic kernel.
    """
    factor = 1.0  # input pixels per activation pixel
    radius = 2.0  # bicubic taps of imresize-based nets
    stride = 1
    for m in model.modules():
        if callable(getattr(m, "radius_at", None)):  # a layer that describes itself
            radius += m.radius_at(factor)
            factor = m.factor_after(factor)
            stride *= m.stride
        elif isinstance(m, nn.Conv2d):
            radius += (_pair(m.kernel_size) - 1) / 2 * _pair(m.dilation) * factor
            factor *= _pair(m.stride)
            stride *= _pair(m.stride)
        elif isinstance(m, nn.ConvTranspose2d):
            factor /= _pair(m.stride)
            radius += (_pair(m.kernel_size) - 1) / 2 * factor + factor
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            radius += (_pair(m.kernel_size) - 1) / 2 * factor
            factor *= _pair(m.stride or m.kernel_size)
            stride *= _pair(m.stride or m.kernel_size)
        elif isinstance(m, nn.Upsample) and m.scale_factor:
            sf = m.scale_factor if not isinstance(m.scale_factor, tuple) else m.scale_factor[0]
            factor /= float(sf)
            radius += factor
    return max(1, stride), radius


def stride(model: nn.Module) -> int:
    """What input sizes must be multiples of: the total stride of the layers, or the multiple
    the network declares (``size_multiple``), whichever is larger."""
    return max(geometry(model)[0], int(getattr(model, "size_multiple", 1)))


def min_side(model: nn.Module) -> int:
    """The smallest side ``model`` is run on (inputs are padded up to it): the side the network
    declares (``min_side``; bicubic declares 1, so that a tiny image's edges stay MATLAB's),
    else :func:`~percepkit.inference.tiles.net_min_side` of its stride (room for reflection
    padding, and for a bottleneck and its instance-norm statistics)."""
    declared = getattr(model, "min_side", None)
    return int(declared) if declared is not None else net_min_side(stride(model))


def analyze(model: nn.Module, device: torch.device, dtype_bytes: int = 4) -> NetInfo:
    """Measure a transform's geometry and peak activation memory with a small dry run."""
    _, radius = geometry(model)
    align = stride(model)
    radius = max(radius, float(getattr(model, "tile_margin", None) or 0))  # declared by the net
    margin = int(math.ceil((radius + 2) / align) * align)
    side = max(64, 4 * align)
    declared = getattr(model, "scale", None)
    if isinstance(declared, (int, float)) and declared >= 1:  # the probe's output must fit
        from .memory import require_memory

        out_side = side * int(declared)
        require_memory(2 * 3 * out_side**2 * dtype_bytes, device,
                       f"x{int(declared)} upscaling (a {side}x{side} probe becomes "
                       f"{out_side}x{out_side} pixels, held twice)",
                       "use a smaller scale")
    sizes: list[int] = []

    def hook(_m: nn.Module, inputs: tuple, output: object) -> None:
        n_in = sum(t.numel() for t in inputs if torch.is_tensor(t))
        n_out = output.numel() if torch.is_tensor(output) else 0
        sizes.append(n_in + n_out)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 3, side, side, device=device)
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    out_scale = y.shape[-1] / side
    scale = int(round(out_scale))
    if scale < 1 or abs(out_scale - scale) > 1e-6 or y.shape[-2] != side * scale:
        raise PercepkitError(f"{type(model).__name__} maps {side}x{side} to "
                             f"{y.shape[-2]}x{y.shape[-1]}: not an integer up-scaling")
    # Peak ~ the largest layer's input + output, plus a tensor held across layers (a residual
    # branch, the bicubic skip: taken as half of that) and the result; 1.25 for allocator
    # slack. Checked against the resident memory of x4 upscales (docs/inference.md).
    biggest = max(sizes, default=0)
    peak = 1.25 * (1.5 * biggest + y.numel()) * dtype_bytes
    global_norm = any(is_global_norm(m) for m in model.modules())
    return NetInfo(scale, align, margin, peak / (side * side), global_norm, min_side(model))
