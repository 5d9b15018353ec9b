"""Image-quality metrics for super-resolution: PSNR, SSIM (MATLAB convention) and LPIPS.

Every metric is registered in :data:`percepkit.registry.METRICS`, so a plugin can add one
(``@METRICS.register("dists")``) and ``percepkit eval --metrics psnr,dists`` shows it. A metric is
an ``nn.Module`` whose call maps ``(output, target)`` float tensors in [0, 1] shaped (B, C, H, W)
to one value per image, shape (B,).

The PSNR/SSIM convention is the one behind published SR tables (SRCNN, VDSR, EDSR, BasicSR and
the MATLAB scripts they inherit):

* 3-channel images are scored on the luma of MATLAB ``rgb2ycbcr`` (ITU-R BT.601, studio range):
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in [0, 1], computed in float64 and
  not rounded; 1-channel images are scored on their raw values (MATLAB converts only 3-channel
  images), which is how published Set14 numbers treat ``bridge.png``;
* ``crop_border`` pixels are removed on every side (``crop_border = scale`` for SR);
* peak value 255; PSNR per image ``10 log10(255^2 / MSE)``, averaged over images;
* SSIM as Wang et al. 2004 / MATLAB ``ssim_index``: 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, "valid" filtering, mean of the SSIM map, no downsampling; for RGB the
  mean over channels.

Outputs are *not* rounded here; :mod:`percepkit.evaluate` rounds model outputs to 8 bits first.
Libraries that use full-range YIQ luma (0.299 R + 0.587 G + 0.114 B, e.g. pyiqa, piq) report
PSNR about 20 log10(255/219) = 1.32 dB lower than this convention on the same images.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from .errors import MissingWeightsError, PercepkitError
from .registry import METRICS

__all__ = ["LPIPS", "PSNR", "SSIM", "Metric", "gaussian_window", "rgb_to_y", "to_scored"]

Channel = Literal["y", "rgb"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_CONVENTION = ("Y = 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB rgb2ycbcr, BT.601 studio "
                "range, float64, unrounded); 1-channel images scored on raw values")
RGB_CONVENTION = "all RGB channels (1-channel images on raw values)"


class Metric(nn.Module):
    """Base class: ``metric(output, target)`` returns one float64 value per image, shape (B,).

    Subclasses set ``name``, ``higher_is_better``, ``unit`` and describe their exact
    convention in :attr:`convention` (written into every results file).
    """

    name: str = "metric"
    higher_is_better: bool = True
    unit: str = ""
    fmt: str = ".4f"

    @property
    def convention(self) -> str:
        """One sentence stating exactly what is computed."""
        return self.name

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(output, target, self.name)
        return super().__call__(output, target)


def _check_pair(output: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if output.dim() != 4 or target.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) tensors, got {tuple(output.shape)} "
                         f"and {tuple(target.shape)}")
    if output.shape != target.shape:
        raise ValueError(f"{name}: output {tuple(output.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if output.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got {output.shape[1]}")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` luma (0..255 scale, float64): (B, 3, H, W) in [0, 1] -> (B, 1, H, W)."""
    x = x.to(torch.float64)
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) + 16.0


def to_scored(x: torch.Tensor, channel: Channel, crop_border: int) -> torch.Tensor:
    """The float64 0..255 planes a metric scores: Y (or RGB) of 3-channel images, raw 1-channel."""
    x = rgb_to_y(x) if channel == "y" and x.shape[1] == 3 else x.to(torch.float64) * 255.0
    if crop_border:
        c = int(crop_border)
        x = x[..., c:-c, c:-c]
    return x


def _check_size(x: torch.Tensor, minimum: int, name: str, crop_border: int) -> None:
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < minimum or w < minimum:
        raise PercepkitError(
            f"{name}: image too small ({w}x{h} after cropping {crop_border} border pixels); "
            f"it needs at least {minimum}x{minimum}.")


class PSNR(Metric):
    """Peak signal-to-noise ratio in dB (MATLAB/SR-table convention by default)."""

    higher_is_better = True
    unit = "dB"
    fmt = ".2f"

    def __init__(self, channel: Channel = "y", crop_border: int = 0) -> None:
        super().__init__()
        if channel not in ("y", "rgb"):
            raise PercepkitError(f"psnr: channel must be 'y' or 'rgb', got {channel!r}")
        self.channel = channel
        self.crop_border = int(crop_border)
        self.name = "psnr" if channel == "y" else "psnr_rgb"

    @property
    def convention(self) -> str:
        where = Y_CONVENTION if self.channel == "y" else RGB_CONVENTION
        return (f"{self.name}: 10 log10(255^2 / MSE) per image in float64 on {where}; "
                f"{self.crop_border} px border cropped")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = to_scored(output, self.channel, self.crop_border)
        b = to_scored(target, self.channel, self.crop_border)
        _check_size(a, 1, self.name, self.crop_border)
        mse = (a - b).pow(2).flatten(1).mean(dim=1)
        return 10.0 * torch.log10(255.0**2 / mse)  # identical images: +inf


def gaussian_window(size: int = 11, sigma: float = 1.5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB ``fspecial('gaussian',size,sigma)``."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def _valid_filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of the last two axes with the 1-D window ``g``, in place sums.

    Exact in float64, and on CPU faster than float64 conv2d (~7x) or banded matmuls (~2x).
    """
    n = g.numel()
    taps = [float(v) for v in g]
    h, w = x.shape[-2], x.shape[-1]
    rows = x[..., 0:h - n + 1, :] * taps[0]
    for k in range(1, n):
        rows.add_(x[..., k:h - n + 1 + k, :], alpha=taps[k])
    out = rows[..., 0:w - n + 1] * taps[0]
    for k in range(1, n):
        out.add_(rows[..., k:w - n + 1 + k], alpha=taps[k])
    return out


class SSIM(Metric):
    """Structural similarity (Wang et al. 2004) exactly as MATLAB ``ssim_index`` / BasicSR."""

    higher_is_better = True
    fmt = ".4f"

    def __init__(self, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        if channel not in ("y", "rgb"):
            raise PercepkitError(f"ssim: channel must be 'y' or 'rgb', got {channel!r}")
        self.channel = channel
        self.crop_border = int(crop_border)
        self.window, self.sigma, self.k1, self.k2 = int(window), float(sigma), k1, k2
        self.name = "ssim" if channel == "y" else "ssim_rgb"

    @property
    def convention(self) -> str:
        where = Y_CONVENTION if self.channel == "y" else RGB_CONVENTION + ", mean over channels"
        return (f"{self.name}: Wang et al. / MATLAB ssim_index, {self.window}x{self.window} "
                f"Gaussian window sigma={self.sigma}, K1={self.k1}, K2={self.k2}, L=255, 'valid' "
                f"filtering, no downsampling, float64, on {where}; {self.crop_border} px border "
                f"cropped")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = to_scored(output, self.channel, self.crop_border)
        b = to_scored(target, self.channel, self.crop_border)
        _check_size(a, self.window, self.name, self.crop_border)
        batch = a.shape[0]
        stack = torch.stack([a, b, a * a + b * b, a * b])  # (4, B, C, H, W)
        mu_a, mu_b, sq, ab = _valid_filter(stack, gaussian_window(self.window, self.sigma))
        c1, c2 = (self.k1 * 255.0) ** 2, (self.k2 * 255.0) ** 2
        mu_ab = mu_a * mu_b
        mu_sq = mu_a * mu_a + mu_b * mu_b
        # sigma_a^2 + sigma_b^2 = E[a^2 + b^2] - mu_a^2 - mu_b^2; sigma_ab = E[ab] - mu_a mu_b
        ssim_map = ((2 * mu_ab + c1) * (2 * (ab - mu_ab) + c2)) / (
            (mu_sq + c1) * (sq - mu_sq + c2))
        return ssim_map.reshape(batch, -1).mean(dim=1)


_LPIPS_ARCH = {"alex": "alexnet", "vgg": "vgg16"}


class LPIPS(Metric):
    """LPIPS v0.1 (Zhang et al. 2018) via the ``lpips`` package, with real ImageNet backbones.

    The linear heads ship in the ``lpips`` wheel; the backbone (AlexNet or VGG16 ``features``)
    comes from :func:`percepkit.weights.torchvision_features_state` (``PERCEPKIT_WEIGHTS``, the
    torch cache or torchvision's download). If it cannot be found this raises
    :class:`~percepkit.errors.MissingWeightsError`: LPIPS is never computed with random weights.
    """

    higher_is_better = False
    fmt = ".4f"
    #: published SR tables (SPSR, ESRGAN, ...) score perceptual metrics on the whole image
    whole_image = True

    def __init__(self, net: Literal["alex", "vgg"] = "alex", crop_border: int = 0,
                 weights: str = "imagenet") -> None:
        super().__init__()
        if net not in _LPIPS_ARCH:
            raise PercepkitError(f"lpips: net must be 'alex' or 'vgg', got {net!r}")
        from .weights import torchvision_features_state  # the lead's weight finder

        self.net_name = net
        self.crop_border = int(crop_border)
        self.name = "lpips" if net == "alex" else "lpips_vgg"
        state = torchvision_features_state(_LPIPS_ARCH[net], weights)  # raises MissingWeightsError
        try:
            import lpips
        except ImportError as e:  # pragma: no cover - lpips is a dependency
            raise MissingWeightsError(f"the lpips package is not installed ({e}); "
                                      f"pip install lpips") from None
        with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, inside lpips
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        load_backbone(model.net, state, _LPIPS_ARCH[net])
        self.model = model.eval().requires_grad_(False)

    @property
    def convention(self) -> str:
        return (f"{self.name}: LPIPS v0.1, {_LPIPS_ARCH[self.net_name]} ImageNet backbone with the "
                f"lpips package's linear heads, on RGB in [-1, 1] (1-channel images repeated to "
                f"RGB); " + (f"{self.crop_border} px border cropped" if self.crop_border
                             else "whole image (no border cropped)"))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.crop_border:
            c = self.crop_border
            output, target = output[..., c:-c, c:-c], target[..., c:-c, c:-c]
        _check_size(output, 16, self.name, self.crop_border)
        if output.shape[1] == 1:
            output, target = output.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
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


@METRICS.register("psnr")
def psnr(channel: Channel = "y", crop_border: int = 0) -> PSNR:
    """PSNR in dB on MATLAB BT.601 Y (default) or RGB; the SR-table convention."""
    return PSNR(channel=channel, crop_border=crop_border)


@METRICS.register("ssim")
def ssim(channel: Channel = "y", crop_border: int = 0) -> SSIM:
    """SSIM as MATLAB ssim_index (11x11 Gaussian, sigma 1.5) on BT.601 Y (default) or RGB."""
    return SSIM(channel=channel, crop_border=crop_border)


@METRICS.register("psnr_rgb")
def psnr_rgb(crop_border: int = 0) -> PSNR:
    """PSNR in dB over all RGB channels."""
    return PSNR(channel="rgb", crop_border=crop_border)


@METRICS.register("ssim_rgb")
def ssim_rgb(crop_border: int = 0) -> SSIM:
    """SSIM averaged over the RGB channels."""
    return SSIM(channel="rgb", crop_border=crop_border)


@METRICS.register("lpips")
def lpips_metric(net: Literal["alex", "vgg"] = "alex", crop_border: int = 0,
                 weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 (lower is better); AlexNet backbone by default, 'vgg' as an option."""
    return LPIPS(net=net, crop_border=crop_border, weights=weights)


@METRICS.register("lpips_vgg")
def lpips_vgg(crop_border: int = 0, weights: str = "imagenet") -> LPIPS:
    """LPIPS v0.1 with the VGG16 backbone (lower is better)."""
    return LPIPS(net="vgg", crop_border=crop_border, weights=weights)

