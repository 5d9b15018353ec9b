"""The fast path: the paper's networks rebuilt from :mod:`.fused` layers with the same weights.

:func:`fast_model` parses a ``johnson_style`` / ``johnson_sr`` network block by block into a
:class:`FastTransform` (same outputs to float round-off; tested); other networks run as they
are. :class:`FastTransform` can also run a range of its layers, which exact tiling in stages
(:meth:`percepkit.inference.predictor.Predictor._staged`) uses around the bottleneck.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .fused import FusedConv, FusedResidual


class FastPathWarning(UserWarning):
    """A network of the paper's kind has a block the fast path cannot fuse: it runs unfused."""


class FastTransform(nn.Module):
    """The fast path of a :class:`~percepkit.nets.transforms.JohnsonStyle` or
    :class:`~percepkit.nets.transforms.JohnsonSR` (same weights, same outputs; build it with
    :func:`fast_model`)."""

    def __init__(self, layers: list[nn.Module], output: str, scale: int, task: str | None
                 ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # "sigmoid2" ((tanh(z) + 1) / 2 = sigmoid(2z)), "bicubic_skip", "linear", "clamp"
        # (0.5 + z, clamped to [0, 1]) or "tanh_wide" (0.5 + (150/255) tanh(z), clamped)
        self.output = output
        self.scale = scale
        self.task = task
        for layer, nxt in zip(layers, layers[1:]):
            if isinstance(layer, FusedResidual):
                layer.set_out(nxt.in_pad, nxt.in_mode)
            else:
                layer.out_pad, layer.out_mode = nxt.in_pad, nxt.in_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, 0, len(self.layers))

    def run(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Layers ``start:end`` on ``x`` (the unpadded input of layer ``start``): the unpadded
        output of layer ``end - 1``, or the network's output when ``end`` is the last."""
        first = self.layers[start]
        h = x
        if first.in_pad:
            mode = "constant" if first.in_mode == "zero" else first.in_mode
            h = F.pad(x, (first.in_pad,) * 4, mode=mode)
        for layer in self.layers[start:end]:
            h = layer(h)
        if end < len(self.layers):
            p = self.layers[end].in_pad
            return h[..., p:h.shape[-2] - p, p:h.shape[-1] - p] if p else h
        if self.output == "bicubic_skip":
            from ..data.imresize import imresize

            assert start == 0, "the bicubic skip needs the network's input"
            return h.add_(imresize(x, scale=self.scale))
        if self.output == "clamp":
            return h.add_(0.5).clamp_(0, 1)
        if self.output == "tanh_wide":
            from ..nets.transforms import WIDE_TANH_HALF_RANGE

            return h.tanh_().mul_(WIDE_TANH_HALF_RANGE).add_(0.5).clamp_(0, 1)
        return h if self.output == "linear" else h.sigmoid_()

    def convs(self, start: int = 0, end: int | None = None) -> Iterator[FusedConv]:
        """The :class:`FusedConv` layers of layers ``start:end``, in order."""
        for layer in self.layers[start:end]:
            yield from ([layer] if isinstance(layer, FusedConv) else [layer.first, layer.second])

    def in_channels(self, index: int) -> int:
        """Channels of layer ``index``'s input."""
        conv = next(self.convs(index))
        w = conv.weight
        if conv.kind == "deconv":
            return w.shape[0]
        return w.shape[1] // (conv.unshuffle ** 2)

    def factors(self) -> list[float]:
        """Input pixels per output pixel of each layer (4 after two stride-2 layers)."""
        out, f = [], 1.0
        for i in range(len(self.layers)):
            for conv in self.convs(i, i + 1):
                f = conv.factor_after(f)
            out.append(f)
        return out

    def radius(self, start: int, end: int) -> float:
        """Receptive-field radius of layers ``start:end`` in pixels of their input."""
        f, r = 1.0, 0.0
        for conv in self.convs(start, end):
            r += conv.radius_at(f)
            f = conv.factor_after(f)
        return r

    def stages(self) -> list[tuple[int, int]]:
        """Layer ranges around the bottleneck: the layers down to the lowest resolution, the
        layers at it (residual blocks), the layers back up."""
        f = self.factors()
        low = max(f)
        b0 = f.index(low) + 1
        b1 = next((i for i in range(b0, len(f)) if f[i] != low), len(f))
        return [(a, b) for a, b in ((0, b0), (b0, b1), (b1, len(f))) if b > a]


class _NotFusable(Exception):
    """A block of a paper network that the fast path has no fused form for (the reason)."""


def _fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d,
                     transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights and bias with an eval-mode batch norm folded in."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    b = bias.detach() if bias is not None else torch.zeros_like(shift)
    return weight.detach() * scale.view(shape), b * scale + shift


def _split_block(block: nn.Module) -> tuple[str, nn.Module, int, nn.Module | None, bool]:
    """(kind, conv, in_pad, norm, relu) of a transforms.conv_block / upsample_block."""
    if not isinstance(block, nn.Sequential) or len(block) == 0:
        raise _NotFusable(f"a {type(block).__name__} where a convolution block was expected")
    mods = list(block)
    relu = isinstance(mods[-1], nn.ReLU)
    if relu:
        mods = mods[:-1]
    norm = mods[-1] if mods and isinstance(mods[-1], (nn.BatchNorm2d, nn.InstanceNorm2d,
                                                     nn.Identity)) else None
    if norm is not None:
        mods = mods[:-1]
    if len(mods) == 1 and isinstance(mods[0], nn.ConvTranspose2d):
        return "deconv", mods[0], 0, norm, relu
    if len(mods) == 3 and isinstance(mods[0], nn.Upsample) and isinstance(mods[2], nn.Conv2d):
        return "resize", mods[2], 1, norm, relu
    if len(mods) == 2 and isinstance(mods[0], nn.ReflectionPad2d) \
            and isinstance(mods[1], nn.Conv2d):
        return "conv", mods[1], int(mods[0].padding[0]), norm, relu
    layers = ", ".join(type(m).__name__ for m in block)
    raise _NotFusable(f"a block of {layers}")


def _fuse(block: nn.Module) -> FusedConv:
    kind, conv, pad, norm, relu = _split_block(block)
    if kind == "deconv" and (conv.stride != (2, 2) or conv.padding != (1, 1)
                             or conv.output_padding != (1, 1) or conv.kernel_size != (3, 3)):
        raise _NotFusable("a transposed convolution other than 3x3 stride 2")
    if kind == "resize" and (conv.kernel_size != (3, 3) or block[0].scale_factor != 2
                             or block[0].mode != "nearest"):
        raise _NotFusable("an upsampling other than nearest x2 + 3x3 convolution")
    if kind == "conv" and (conv.dilation != (1, 1) or conv.groups != 1 or conv.padding != (0, 0)):
        raise _NotFusable("a dilated, grouped or zero-padded convolution")
    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    instance = None
    if isinstance(norm, nn.BatchNorm2d):
        if norm.training or norm.running_mean is None:
            raise _NotFusable("a batch norm without running statistics (or in training mode)")
        weight, bias = _fold_batch_norm(weight, bias, norm, transposed=kind == "deconv")
    elif isinstance(norm, nn.InstanceNorm2d):
        if norm.track_running_stats:
            raise _NotFusable("an instance norm with running statistics")
        instance = norm
    stride = int(conv.stride[0]) if kind == "conv" else 1
    return FusedConv(kind, weight, bias, stride=stride, in_pad=pad,
                     instance_norm=instance, relu=relu)


def _fused_layers(model: nn.Module, skip: bool, tanh: bool) -> list[nn.Module]:
    """The fused layers of a JohnsonStyle / JohnsonSR ``model.net``, or :class:`_NotFusable`
    naming the first block that does not parse."""
    from ..nets.transforms import ResidualBlock

    mods = list(model.net)
    layers: list[nn.Module] = []
    for i, m in enumerate(mods[:-2]):
        try:
            if isinstance(m, ResidualBlock):
                layers.append(FusedResidual(_fuse(m.body[0]), _fuse(m.body[1])))
            else:
                layers.append(_fuse(m))
        except _NotFusable as e:
            raise _NotFusable(f"net[{i}] is {e}") from None
    pad, last = mods[-2], mods[-1]
    if not (isinstance(pad, nn.ReflectionPad2d) and isinstance(last, nn.Conv2d)):
        raise _NotFusable(f"net ends in {type(pad).__name__}, {type(last).__name__}, not "
                          f"reflection padding and a convolution")
    weight, bias = last.weight.detach(), last.bias.detach()
    if not skip and tanh:  # (tanh(z) + 1) / 2 == sigmoid(2 z)
        weight, bias = 2 * weight, 2 * bias
    layers.append(FusedConv("conv", weight, bias, in_pad=int(pad.padding[0])))
    return layers


def fast_model(model: nn.Module) -> nn.Module:
    """The fast equivalent of a ``johnson_style`` / ``johnson_sr`` network (same weights, same
    outputs to float round-off), or ``model`` itself.

    Other networks (plugins, SRCNN, subclasses) and networks in training mode are returned as
    they are, silently: they are not what the fast path is for. A JohnsonStyle / JohnsonSR with
    a block the fast path cannot fuse (edited by hand, or loaded with unusual layers) is
    returned too, with one :class:`FastPathWarning` naming the block.
    """
    from ..nets.transforms import JohnsonSR, JohnsonStyle

    if type(model) not in (JohnsonStyle, JohnsonSR) or model.training:
        return model
    skip = isinstance(model, JohnsonSR) and model.skip
    head = getattr(model, "output", "tanh")
    try:
        layers = _fused_layers(model, skip, tanh=head == "tanh")
    except _NotFusable as e:
        warnings.warn(f"{type(model).__name__} runs without the fast path (slower, same output):"
                      f" {e}", FastPathWarning, stacklevel=2)
        return model
    output = "bicubic_skip" if skip else "sigmoid2" if head == "tanh" else head
    fast = FastTransform(layers, output, int(getattr(model, "scale", 1)),
                         getattr(model, "task", None))
    return fast.to(next(model.parameters()).device)
