"""Image transformation networks: the paper's style and SR nets, SRCNN and the bicubic baseline;
DnCNN and the identity for restoration at scale 1 (denoise, deblur, jpeg).

All transforms map float images in [0, 1] shaped (B, 3, H, W) to images in [0, 1]. SR
transforms take the low-resolution image and return it ``scale`` times larger; the attribute
``task`` is ``"sr"``, ``"style"`` or ``"restore"`` (same-size restoration: denoise, deblur, jpeg).

Layouts follow the paper's supplementary material (Johnson et al. 2016, Tables 1 and 2). Where
we differ: every 3x3/9x9 convolution pads its input by reflection (the paper pads the style net's
input by 40 px once and uses unpadded residual convs); the output activation is
``(tanh(x) + 1) / 2`` for [0, 1] images instead of ``150 * tanh`` for [0, 255] images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch
from torch import nn

from ..data.imresize import imresize
from ..errors import PercepkitError
from ..registry import TRANSFORMS
from .conditional import blend, conditional_norm, select_style, style_weights

Norm = Literal["batch", "instance", "none"]
Upsample = Literal["deconv", "resize_conv"]
Output = Literal["tanh", "tanh_wide", "linear", "clamp"]
Init = Literal["torch", "he"]


def _check_choice(key: str, value: object, choices: object) -> None:
    """A ValueError naming ``key``'s allowed values (a ``Literal``'s) unless ``value`` is one."""
    allowed = get_args(choices)
    if value not in allowed:
        *first, last = (repr(a) for a in allowed)
        raise ValueError(f"{key} must be {', '.join(first)} or {last}, got {value!r}")


def _norm(kind: Norm, channels: int, styles: int = 0) -> nn.Module:
    if styles:
        return conditional_norm(kind, channels, styles)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1, norm: Norm = "batch",
               relu: bool = True, styles: int = 0) -> nn.Sequential:
    """Reflection-padded convolution, normalisation (per style when ``styles``), ReLU."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(kernel // 2),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=norm == "none"),
        _norm(norm, c_out, styles),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def upsample_block(c_in: int, c_out: int, mode: Upsample, norm: Norm, styles: int = 0
                   ) -> nn.Sequential:
    """x2 upsampling: a 3x3 conv of stride 1/2 (``deconv``) or nearest x2 then a 3x3 conv."""
    if mode == "deconv":
        return nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1,
                               bias=norm == "none"),
            _norm(norm, c_out, styles),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         *conv_block(c_in, c_out, 3, norm=norm, styles=styles))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with normalisation; ReLU after the first only (paper, Fig. 1)."""

    def __init__(self, channels: int, norm: Norm, styles: int = 0) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, 3, norm=norm, styles=styles),
                                  conv_block(channels, channels, 3, norm=norm, relu=False,
                                             styles=styles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Scaled tanh mapping to [0, 1] (the paper's output layer, for [0, 1] images)."""
    return (torch.tanh(x) + 1) * 0.5


def _clamp_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``0.5 + x`` clamped to [0, 1], with the gradient of ``0.5 + x`` (straight-through):
    a saturated pixel still passes the loss's gradient back, unlike a saturated tanh."""
    y = x + 0.5
    return y + (y.clamp(0, 1) - y).detach() if y.requires_grad else y.clamp(0, 1)


WIDE_TANH_HALF_RANGE = 150 / 255
"""Half-range of ``output: tanh_wide``: fast-neural-style's ``150 * tanh`` in 0-255 units."""


def _wide_tanh(x: torch.Tensor, training: bool) -> torch.Tensor:
    """``0.5 + (150/255) tanh(x)`` (fast-neural-style's head, range -0.09 to 1.09): white is
    reached at a finite input, where the gradient is alive; clamped to [0, 1] outside training
    (training sees the overshoot, so the loss pushes it back)."""
    y = 0.5 + WIDE_TANH_HALF_RANGE * torch.tanh(x)
    return y if training else y.clamp(0, 1)


@TRANSFORMS.register("johnson_style", aliases=("style_net",))
class JohnsonStyle(nn.Module):
    """The paper's style-transfer network: c9s1-32, d64, d128, 5xR128, u64, u32, c9s1-3.

    ``output="tanh"`` is the paper's scaled tanh, mapped exactly onto [0, 1]; ``"tanh_wide"``
    is the paper's code's (``150 * tanh``: range -0.09 to 1.09, clamped outside training);
    ``"linear"`` returns the last convolution as it is (pytorch/examples' ``TransformerNet``,
    whose images are clamped when saved);
    ``"clamp"`` returns ``0.5 + conv`` clamped to [0, 1] with a straight-through gradient (in
    range like tanh, but a saturated pixel is not exempt from the loss's gradient).
    ``decoder_channels`` sets the widths of the two upsampling layers (default: the encoder's
    mirrored, ``(channels[1], channels[0])``).
    ``init="he"`` (for ``norm="none"``, where nothing rescales the activations): He-normal
    weights and zero biases, and each residual block's second convolution zero, so every block
    starts as the identity (torchvision's ``zero_init_residual``, Fixup); ``"torch"`` keeps
    PyTorch's default, under which a deep net without normalisation starts with a vanishing,
    flat grey output (the full-width net trained from it collapsed to a white image).
    ``styles`` (names, two or more) makes one network for several styles: each normalisation
    layer keeps a scale and shift per style (conditional instance norm, Dumoulin et al. 2017;
    :mod:`percepkit.nets.conditional`), :meth:`blend` gives a single-style net for any mix.
    """

    task = "style"
    scale = 1

    def __init__(
        self,
        norm: Norm = "instance",
        upsample: Upsample = "deconv",
        channels: tuple[int, int, int] | list[int] = (32, 64, 128),
        residual_blocks: int = 5,
        output: Output = "tanh",
        decoder_channels: tuple[int, int] | list[int] | None = None,
        init: Init = "torch",
        styles: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        super().__init__()
        _check_choice("output", output, Output)
        _check_choice("init", init, Init)
        self.style_names = [str(s) for s in styles or ()]
        if len(self.style_names) == 1 or len(set(self.style_names)) != len(self.style_names):
            raise ValueError(f"styles must name two or more different styles, got {styles}")
        self.output = output
        c1, c2, c3 = channels
        d2, d1 = decoder_channels if decoder_channels is not None else (c2, c1)
        n = len(self.style_names)
        self.net = nn.Sequential(
            conv_block(3, c1, 9, norm=norm, styles=n),
            conv_block(c1, c2, 3, stride=2, norm=norm, styles=n),
            conv_block(c2, c3, 3, stride=2, norm=norm, styles=n),
            *[ResidualBlock(c3, norm, n) for _ in range(residual_blocks)],
            upsample_block(c3, d2, upsample, norm, n),
            upsample_block(d2, d1, upsample, norm, n),
            nn.ReflectionPad2d(4),
            nn.Conv2d(d1, 3, 9),
        )
        if init == "he":
            self._he_init()

    def _he_init(self) -> None:
        convs = [m for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for conv in convs:
            last = conv is convs[-1]
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear" if last else "relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for block in self.net:
            if isinstance(block, ResidualBlock):
                nn.init.zeros_(block.body[1][1].weight)

    def select_style(self, weights: torch.Tensor) -> None:
        """Run the blend ``weights`` (one per style, summing to 1) from now on (in place)."""
        select_style(self, weights)

    def blend(self, spec: str | Mapping[str, float]) -> JohnsonStyle:
        """A single-style copy for the mix ``spec`` (``"candy:0.5,mosaic:0.5"``)."""
        if not self.style_names:
            raise PercepkitError("this model has one style; --style blends the styles of a "
                                 "multi-style model (percepkit list models)")
        return blend(self, style_weights(self.style_names, spec))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.output == "tanh":
            return _to_unit_range(y)
        if self.output == "tanh_wide":
            return _wide_tanh(y, self.training)
        return _clamp_straight_through(y) if self.output == "clamp" else y


@TRANSFORMS.register("johnson_style_fast")
def johnson_style_fast(norm: Norm = "instance", upsample: Upsample = "resize_conv",
                       output: Output = "tanh", styles: list[str] | None = None
                       ) -> JohnsonStyle:
    """A lighter style net (32/64/64 channels, 5 residual blocks) for real-time CPU use."""
    return JohnsonStyle(norm=norm, upsample=upsample, channels=(32, 64, 64), output=output,
                        styles=styles)


@TRANSFORMS.register("johnson_style_lite")
def johnson_style_lite(norm: Norm = "instance", upsample: Upsample = "resize_conv",
                       output: Output = "tanh") -> JohnsonStyle:
    """A small style net (16/32/32 channels, decoder 16/8; ~8 GFLOP at 512²) for fast CPU use."""
    return JohnsonStyle(norm=norm, upsample=upsample, channels=(16, 32, 32),
                        decoder_channels=(16, 8), output=output)


@TRANSFORMS.register("johnson_sr", aliases=("sr_net",))
class JohnsonSR(nn.Module):
    """The paper's super-resolution network: c9s1-64, 4xR64, log2(scale) x u64, c9s1-3.

    ``skip=True`` (not in the paper) predicts a residual added to the bicubic upsampling of the
    input, with the last convolution zero-initialised and no output tanh; it trains much faster
    on small budgets. The paper's net is ``skip=False`` with batch normalisation.
    """

    task = "sr"

    def __init__(
        self,
        scale: int = 4,
        norm: Norm = "batch",
        upsample: Upsample = "deconv",
        channels: int = 64,
        residual_blocks: int = 4,
        skip: bool = False,
    ) -> None:
        super().__init__()
        steps = int(round(math.log2(scale))) if scale >= 1 else -1
        if scale < 1 or 2**steps != scale:
            raise ValueError(f"johnson_sr needs a power-of-two scale (2, 4, 8), got {scale}")
        self.scale = scale
        self.skip = skip
        self.net = nn.Sequential(
            conv_block(3, channels, 9, norm=norm),
            *[ResidualBlock(channels, norm) for _ in range(residual_blocks)],
            *[upsample_block(channels, channels, upsample, norm) for _ in range(steps)],
            nn.ReflectionPad2d(4),
            nn.Conv2d(channels, 3, 9),
        )
        if skip:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.skip:
            return imresize(x, scale=self.scale) + y
        return _to_unit_range(y)


@TRANSFORMS.register("srcnn")
class SRCNN(nn.Module):
    """SRCNN 9-1-5 (Dong et al. 2015) on the bicubic-upsampled RGB input, 'same' padding.

    ``residual=True`` (not in SRCNN) adds the bicubic input to the output, which trains faster.
    """

    task = "sr"

    def __init__(self, scale: int = 4, channels: tuple[int, int] | list[int] = (64, 32),
                 residual: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.residual = residual
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 9, padding=4, padding_mode="replicate"), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, 3, 5, padding=2, padding_mode="replicate"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = imresize(x, scale=self.scale)
        return up + self.net(up) if self.residual else self.net(up)


@TRANSFORMS.register("bicubic")
class Bicubic(nn.Module):
    """MATLAB-compatible bicubic upsampling: the baseline of every SR table. No parameters."""

    task = "sr"
    min_side = 1  # any size as it is (inference.geometry.min_side): MATLAB's edges on tiny images

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, scale=self.scale)


@TRANSFORMS.register("dncnn")
class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): Conv+ReLU, ``depth - 2`` x (Conv+BN+ReLU), Conv, all 3x3 with
    ``channels`` filters and zero padding; it predicts the residual (the noise or artefact), so
    the output is the input minus the network's output.

    ``depth=17, channels=64, norm=batch`` is the paper's depth and width (with biases on the
    first convolution only, the batch norms carrying the others' offsets: 558,400 parameters);
    smaller settings train on a CPU. ``norm: none`` gives every convolution a bias instead.
    Same size in and out (``scale`` 1); inputs need not lie in [0, 1] (the denoise protocol's
    noisy images do not). The last convolution starts at zero, so the untrained net is the
    identity (not in the paper: short CPU trainings start from the degraded input).
    """

    task = "restore"

    def __init__(self, depth: int = 17, channels: int = 64,
                 norm: Literal["batch", "none"] = "batch", scale: int = 1) -> None:
        super().__init__()
        self.scale = _same_size("dncnn", scale)
        if depth < 2 or channels < 1:
            raise ValueError(f"dncnn needs depth >= 2 and channels >= 1, got depth {depth}, "
                             f"channels {channels}")
        bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
                       _norm(norm, channels), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, 3, 3, padding=1, bias=bias))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity (not in the paper)
        if self.net[-1].bias is not None:
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


@TRANSFORMS.register("identity")
class Identity(nn.Module):
    """The degraded input itself: the baseline row of the restoration tasks (as bicubic is
    SR's). No parameters."""

    task = "restore"

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        self.scale = _same_size("identity", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _same_size(name: str, scale: int) -> int:
    """``scale`` of a same-size restoration net: 1 (the argument exists so that code building
    any transform at a scale, such as ``percepkit eval``, builds these too)."""
    if scale != 1:
        raise ValueError(f"{name} restores at the input's size: scale must be 1, got {scale}")
    return 1
