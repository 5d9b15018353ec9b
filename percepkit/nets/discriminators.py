"""Discriminators for adversarial training (:data:`percepkit.registry.DISCRIMINATORS`).

| name | network | input |
| --- | --- | --- |
| ``vgg`` | SRGAN/ESRGAN VGG-style (BasicSR ``VGGStyleDiscriminator``) | 128 or 256 px |
| ``unet`` | Real-ESRGAN U-Net, spectral norm (BasicSR ``UNetDiscriminatorSN``) | sides % 8 == 0 |
| ``patchgan`` | pix2pix PatchGAN (``NLayerDiscriminator``, BatchNorm) | ≥ 3·2^n_layers px |

Each maps a batch of [0, 1] images (B, C, H, W) to logits: ``vgg`` one per image (B, 1), the
others one per pixel or patch (B, 1, h, w). The layers, their names and their parameter counts
are those of the published definitions, so their state dicts load published weights (tests pin
the counts). A discriminator that cannot take an input size raises ``ValueError`` saying what it
takes; ``recipe check`` runs that check on the training crops (:func:`input_problem`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..registry import DISCRIMINATORS


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


@DISCRIMINATORS.register("vgg", aliases=("vgg_style",))
class VGGStyleDiscriminator(nn.Module):
    """SRGAN/ESRGAN VGG-style discriminator: ten convolutions, two linear layers; 128 or 256 px.

    BasicSR's ``VGGStyleDiscriminator(num_in_ch, num_feat, input_size)`` (Ledig et al. 2017,
    Wang et al. 2018): five stages of a 3x3 and a strided 4x4 convolution with BatchNorm and
    LeakyReLU(0.2) (six stages for 256 px), then 8·num_feat·4·4 → 100 → 1. One logit per image.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64,
                 input_size: Literal[128, 256] = 128) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"input_size must be 128 or 256, got {input_size}")
        self.input_size = int(input_size)
        f = num_feat
        chans = [(num_in_ch, f), (f, 2 * f), (2 * f, 4 * f), (4 * f, 8 * f), (8 * f, 8 * f)]
        if input_size == 256:
            chans.append((8 * f, 8 * f))
        for i, (cin, cout) in enumerate(chans):
            first = i == 0
            setattr(self, f"conv{i}_0", nn.Conv2d(cin, cout, 3, 1, 1, bias=first))
            if not first:
                setattr(self, f"bn{i}_0", nn.BatchNorm2d(cout))
            setattr(self, f"conv{i}_1", nn.Conv2d(cout, cout, 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(cout))
        self.stages = len(chans)
        self.linear1 = nn.Linear(8 * f * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def check_input(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless the input is ``input_size`` x ``input_size``."""
        if (height, width) != (self.input_size, self.input_size):
            raise ValueError(f"takes {self.input_size}x{self.input_size} images (input_size: "
                             f"{self.input_size}; 128 or 256), got {height}x{width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(*x.shape[-2:])
        feat = _lrelu(self.conv0_0(x))
        feat = _lrelu(self.bn0_1(self.conv0_1(feat)))
        for i in range(1, self.stages):
            feat = _lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = _lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
        feat = _lrelu(self.linear1(feat.flatten(1)))
        return self.linear2(feat)


@DISCRIMINATORS.register("unet", aliases=("unet_sn",))
class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation; one logit per pixel.

    BasicSR's ``UNetDiscriminatorSN(num_in_ch, num_feat, skip_connection)`` (Wang et al. 2021):
    three strided 4x4 downsampling convolutions, three bilinear x2 upsampling 3x3 convolutions
    with skip connections, two more 3x3 convolutions and a 3x3 output convolution; all but the
    first and last are spectrally normalised (``weight_orig``/``weight_u``/``weight_v``, the key
    layout of published Real-ESRGAN discriminator weights). Sides must be divisible by 8.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64,
                 skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = bool(skip_connection)
        f = num_feat

        def sn(cin: int, cout: int, k: int, s: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(cin, cout, k, s, 1, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = sn(f, 2 * f, 4, 2)
        self.conv2 = sn(2 * f, 4 * f, 4, 2)
        self.conv3 = sn(4 * f, 8 * f, 4, 2)
        self.conv4 = sn(8 * f, 4 * f, 3, 1)
        self.conv5 = sn(4 * f, 2 * f, 3, 1)
        self.conv6 = sn(2 * f, f, 3, 1)
        self.conv7 = sn(f, f, 3, 1)
        self.conv8 = sn(f, f, 3, 1)
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def check_input(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are divisible by 8 (three halvings)."""
        if height % 8 or width % 8 or min(height, width) < 8:
            raise ValueError(f"takes images whose sides are multiples of 8, got "
                             f"{height}x{width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(*x.shape[-2:])
        x0 = _lrelu(self.conv0(x))
        x1 = _lrelu(self.conv1(x0))
        x2 = _lrelu(self.conv2(x1))
        x3 = _lrelu(self.conv3(x2))
        up = [x2, x1, x0]
        feat = x3
        for conv, skip in zip((self.conv4, self.conv5, self.conv6), up):
            feat = F.interpolate(feat, scale_factor=2, mode="bilinear", align_corners=False)
            feat = _lrelu(conv(feat))
            if self.skip_connection:
                feat = feat + skip
        feat = _lrelu(self.conv7(feat))
        feat = _lrelu(self.conv8(feat))
        return self.conv9(feat)


@DISCRIMINATORS.register("patchgan", aliases=("nlayer",))
class PatchGANDiscriminator(nn.Module):
    """pix2pix PatchGAN (``NLayerDiscriminator``): a logit per overlapping 70x70 patch.

    Isola et al. 2017: a 4x4/2 convolution, ``n_layers - 1`` more 4x4/2 convolutions with
    BatchNorm (channels doubling up to 8·ndf), a 4x4/1 convolution with BatchNorm, and a 4x4/1
    output convolution; LeakyReLU(0.2). Convolutions before BatchNorm have no bias, as in the
    published code. Unconditional here: it sees the image alone (``input_nc`` channels).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.n_layers = int(n_layers)
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False),
                nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2),
                nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def check_input(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when the input is too small to leave one output patch."""
        # n_layers 4x4/2 convolutions halve (rounding down), two 4x4/1 ones take 1 px off each
        least = 3 * 2 ** self.n_layers
        if min(height, width) < least:
            raise ValueError(f"takes images of at least {least}x{least} (n_layers: "
                             f"{self.n_layers}), got {height}x{width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(*x.shape[-2:])
        return self.model(x)


def input_problem(spec: Mapping[str, Any] | str, height: int, width: int) -> str | None:
    """Why the discriminator ``spec`` cannot take (height, width) images, or None.

    Runs a built-in's ``check_input``; for any other discriminator (a plugin's), one forward
    pass on torch's ``meta`` device (no memory, no weights) must succeed."""
    try:
        with torch.device("meta"):
            net = DISCRIMINATORS.build(spec, where="discriminator")
            check = getattr(net, "check_input", None)
            if check is not None:
                check(height, width)
            else:
                net(torch.zeros(1, 3, height, width))
    except ValueError as e:
        return str(e)
    except Exception as e:  # a plugin's network failing on this size
        return f"fails on {height}x{width} images ({type(e).__name__}: {e})"
    return None
