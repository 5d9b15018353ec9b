"""Fidelity metrics in the SR-table convention: PSNR, SSIM and MS-SSIM.

* PSNR per image ``10 log10(255^2 / MSE)`` in float64;
* SSIM as Wang et al. 2004 / MATLAB ``ssim_index``: 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, L = 255, "valid" filtering, mean of the SSIM map, no downsampling; for
  RGB the mean over channels;
* MS-SSIM as Wang, Simoncelli & Bovik 2003 / the authors' ``msssim.m``: 5 scales with weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); the mean contrast-structure term at scales 1-4 and
  the mean SSIM at scale 5, each raised to its weight and multiplied; between scales a 2x2 mean
  (MATLAB ``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then every second pixel, so an odd
  last row/column is kept as it is). A negative per-scale mean is set to 0 before the power, as
  pytorch_msssim and piq do (MATLAB would return a complex number).

All on the planes of :func:`~percepkit.metrics.base.to_scored` (BT.601 studio-range Y by
default). :func:`ssim_terms` and :func:`ms_ssim_values` are the one implementation of the SSIM
map; the loss terms in :mod:`percepkit.metric_losses` call them on RGB in [0, 1] with L = 1.
Libraries that use full-range YIQ luma (0.299 R + 0.587 G + 0.114 B, e.g. pyiqa, piq) report
PSNR about 20 log10(255/219) = 1.32 dB lower than this convention on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..registry import METRICS
from .base import (
    RGB_CONVENTION,
    Y_CONVENTION,
    Channel,
    Metric,
    check_channel,
    check_size,
    to_scored,
)

__all__ = ["MS_SSIM_WEIGHTS", "MSSSIM", "PSNR", "SSIM", "downsample_2x", "gaussian_window",
           "ms_ssim_min_size", "ms_ssim_values", "ssim_terms", "valid_filter"]

#: Wang, Simoncelli & Bovik 2003, Table 1 (scales 1..5, fine to coarse)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class PSNR(Metric):
    """Peak signal-to-noise ratio in dB (MATLAB/SR-table convention by default)."""

    higher_is_better = True
    unit = "dB"
    fmt = ".2f"

    def __init__(self, channel: Channel = "y", crop_border: int = 0) -> None:
        super().__init__()
        check_channel(channel, "psnr")
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
        check_size(a, 1, self.name, self.crop_border)
        mse = (a - b).pow(2).flatten(1).mean(dim=1)
        return 10.0 * torch.log10(255.0**2 / mse)  # identical images: +inf


def gaussian_window(size: int = 11, sigma: float = 1.5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB ``fspecial('gaussian',size,sigma)``.

    Always on the CPU: its values are constants (``valid_filter`` reads them as Python floats),
    also inside a ``torch.device('meta')`` block such as the training-memory estimate's."""
    x = torch.arange(size, dtype=torch.float64, device="cpu") - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def valid_filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of the last two axes with the 1-D window ``g``.

    Sums of shifted slices: exact in float64, differentiable, and on CPU faster than float64
    conv2d (~7x) or banded matmuls (~2x).
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


def ssim_terms(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, c1: float, c2: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map and contrast-structure map of planes ``(..., H, W)`` ('valid' filtering).

    ``c1 = (K1 L)^2``, ``c2 = (K2 L)^2`` for data range ``L``; computed in the inputs' dtype.
    """
    mu_a, mu_b, sq, ab = valid_filter(torch.stack([a, b, a * a + b * b, a * b]), window)
    mu_ab = mu_a * mu_b
    mu_sq = mu_a * mu_a + mu_b * mu_b
    # sigma_a^2 + sigma_b^2 = E[a^2 + b^2] - mu_a^2 - mu_b^2; sigma_ab = E[ab] - mu_a mu_b
    cs_map = (2 * (ab - mu_ab) + c2) / (sq - mu_sq + c2)
    return (2 * mu_ab + c1) / (mu_sq + c1) * cs_map, cs_map


def downsample_2x(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``msssim.m`` downsampling: 2x2 means, an odd last row/column averaged with itself."""
    if x.shape[-2] % 2:
        x = torch.cat([x, x[..., -1:, :]], dim=-2)
    if x.shape[-1] % 2:
        x = torch.cat([x, x[..., -1:]], dim=-1)
    return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2]
            + x[..., 1::2, 1::2]) * 0.25


def ms_ssim_min_size(window: int = 11, levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side whose coarsest scale still holds one window: 161 for 11x11 and 5 scales."""
    return (window - 1) * 2 ** (levels - 1) + 1


def ms_ssim_values(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, c1: float, c2: float,
                   weights: Sequence[float] = MS_SSIM_WEIGHTS, floor: float = 0.0
                   ) -> torch.Tensor:
    """MS-SSIM of each plane of ``(..., H, W)`` inputs, shape ``(...)``.

    Per-scale means below ``floor`` are raised to it before the power (0 for the metric; the
    loss uses a small positive floor so that the gradient stays finite).
    """
    factors = []
    last = len(weights) - 1
    for level, w in enumerate(weights):
        if level:
            a, b = downsample_2x(a), downsample_2x(b)
        ssim_map, cs_map = ssim_terms(a, b, window, c1, c2)
        mean = (ssim_map if level == last else cs_map).mean(dim=(-2, -1))
        factors.append(mean.clamp(min=floor) ** w)
    return torch.stack(factors).prod(dim=0)


class SSIM(Metric):
    """Structural similarity (Wang et al. 2004) exactly as MATLAB ``ssim_index`` / BasicSR."""

    higher_is_better = True
    fmt = ".4f"

    def __init__(self, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        check_channel(channel, "ssim")
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
        check_size(a, self.window, self.name, self.crop_border)
        c1, c2 = (self.k1 * 255.0) ** 2, (self.k2 * 255.0) ** 2
        ssim_map, _ = ssim_terms(a, b, gaussian_window(self.window, self.sigma), c1, c2)
        return ssim_map.reshape(a.shape[0], -1).mean(dim=1)


class MSSSIM(Metric):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) as the authors' MATLAB ``msssim.m``."""

    higher_is_better = True
    fmt = ".4f"

    def __init__(self, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        check_channel(channel, "ms_ssim")
        self.channel = channel
        self.crop_border = int(crop_border)
        self.window, self.sigma, self.k1, self.k2 = int(window), float(sigma), k1, k2
        self.name = "ms_ssim" if channel == "y" else "ms_ssim_rgb"

    @property
    def convention(self) -> str:
        where = Y_CONVENTION if self.channel == "y" else RGB_CONVENTION + ", mean over channels"
        return (f"{self.name}: Wang, Simoncelli & Bovik 2003 / MATLAB msssim.m, 5 scales, "
                f"weights {', '.join(map(str, MS_SSIM_WEIGHTS))}, mean contrast-structure at "
                f"scales 1-4 and mean SSIM at scale 5 (negative means set to 0), 2x2 mean "
                f"downsampling (odd edge kept), {self.window}x{self.window} Gaussian window "
                f"sigma={self.sigma}, K1={self.k1}, K2={self.k2}, L=255, 'valid' filtering, "
                f"float64, on {where}; {self.crop_border} px border cropped")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = to_scored(output, self.channel, self.crop_border)
        b = to_scored(target, self.channel, self.crop_border)
        levels = len(MS_SSIM_WEIGHTS)
        check_size(a, ms_ssim_min_size(self.window, levels), self.name, self.crop_border,
                   reason=f"for {levels} scales (the coarsest, 1/{2 ** (levels - 1)} of the "
                          f"size, must still hold the {self.window}x{self.window} window)")
        c1, c2 = (self.k1 * 255.0) ** 2, (self.k2 * 255.0) ** 2
        values = ms_ssim_values(a, b, gaussian_window(self.window, self.sigma), c1, c2)
        return values.mean(dim=1)  # mean over channels: (B, C) -> (B,)


@METRICS.register("psnr")
def psnr(channel: Channel = "y", crop_border: int = 0) -> PSNR:
    """PSNR in dB on MATLAB BT.601 Y (default) or RGB; the SR-table convention."""
    return PSNR(channel=channel, crop_border=crop_border)


@METRICS.register("ssim")
def ssim(channel: Channel = "y", crop_border: int = 0) -> SSIM:
    """SSIM as MATLAB ssim_index (11x11 Gaussian, sigma 1.5) on BT.601 Y (default) or RGB."""
    return SSIM(channel=channel, crop_border=crop_border)


@METRICS.register("ms_ssim", aliases=("msssim",))
def ms_ssim(channel: Channel = "y", crop_border: int = 0) -> MSSSIM:
    """MS-SSIM as MATLAB msssim.m (5 scales, Wang et al. 2003) on BT.601 Y (default) or RGB."""
    return MSSSIM(channel=channel, crop_border=crop_border)


@METRICS.register("psnr_rgb")
def psnr_rgb(crop_border: int = 0) -> PSNR:
    """PSNR in dB over all RGB channels."""
    return PSNR(channel="rgb", crop_border=crop_border)


@METRICS.register("ssim_rgb")
def ssim_rgb(crop_border: int = 0) -> SSIM:
    """SSIM averaged over the RGB channels."""
    return SSIM(channel="rgb", crop_border=crop_border)


@METRICS.register("ms_ssim_rgb")
def ms_ssim_rgb(crop_border: int = 0) -> MSSSIM:
    """MS-SSIM of each RGB channel, averaged over the channels."""
    return MSSSIM(channel="rgb", crop_border=crop_border)
