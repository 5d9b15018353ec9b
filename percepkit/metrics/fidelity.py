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
map; the loss terms in :mod:`percepkit.losses.metric_terms` call them on RGB in [0, 1] with L = 1.
Libraries that use full-range YIQ luma (0.299 R + 0.587 G + 0.114 B, e.g. pyiqa, piq) report
PSNR about 20 log10(255/219) = 1.32 dB lower than this convention on the same images.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import torch

from ..registry import METRICS
from .base import (
    RGB_CONVENTION,
    Y_CONVENTION,
    Channel,
    PlaneMetric,
    check_size,
)

__all__ = ["GRADIENT_FLOOR", "MS_SSIM_WEIGHTS", "MSSSIM", "PSNR", "SSIM", "downsample_2x",
           "gaussian_window", "ms_ssim_min_size", "ms_ssim_values", "ssim_means", "ssim_terms",
           "valid_filter"]

#: Wang, Simoncelli & Bovik 2003, Table 1 (scales 1..5, fine to coarse)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: per-scale MS-SSIM means are raised to this before the power where a gradient is taken
#: (``x ** w`` has an infinite slope at 0)
GRADIENT_FLOOR = 1e-6


class PSNR(PlaneMetric):
    """Peak signal-to-noise ratio in dB (MATLAB/SR-table convention by default)."""

    higher_is_better = True
    unit = "dB"
    fmt = ".2f"
    loss_instead = ("PSNR is unbounded (infinite for equal images), so it has no loss form; "
                    "minimise the mean squared error instead, which maximises PSNR: "
                    "percepkit.create_loss('pixel')")

    def __init__(self, channel: Channel = "y", crop_border: int = 0) -> None:
        super().__init__("psnr", channel, crop_border)

    @property
    def convention(self) -> str:
        where = Y_CONVENTION if self.channel == "y" else RGB_CONVENTION
        return (f"{self.name}: 10 log10(255^2 / MSE) per image in float64 on {where}; "
                f"{self.crop_border} px border cropped")

    def score_planes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
    conv2d (~7x) or banded matmuls (~2x) -- except along at most ``BAND_ROWS`` output rows on
    the CPU (the strips of :func:`ssim_means`), where one matmul with the banded matrix of ``g``
    is ~2x faster than the eleven shifted sums.
    """
    n = g.numel()
    taps = [float(v) for v in g]
    h, w = x.shape[-2], x.shape[-1]
    if h - n + 1 <= BAND_ROWS and x.device.type == "cpu":
        rows = _row_band(tuple(taps))[:h - n + 1, :h].to(x.dtype) @ x
    else:
        rows = x[..., 0:h - n + 1, :] * taps[0]
        for k in range(1, n):
            rows.add_(x[..., k:h - n + 1 + k, :], alpha=taps[k])
    out = rows[..., 0:w - n + 1] * taps[0]
    for k in range(1, n):
        out.add_(rows[..., k:w - n + 1 + k], alpha=taps[k])
    return out


#: output rows up to which :func:`valid_filter` does its vertical pass as one banded matmul
BAND_ROWS = 64


@functools.lru_cache(maxsize=8)
def _row_band(taps: tuple[float, ...]) -> torch.Tensor:
    """The (BAND_ROWS, BAND_ROWS + n - 1) float64 matrix whose row i holds ``taps`` from column
    i; its top-left (r, r + n - 1) corner is the band for r rows."""
    n = len(taps)
    with torch.inference_mode(False):  # cached: a normal tensor, usable under autograd later
        band = torch.zeros(BAND_ROWS, BAND_ROWS + n - 1, dtype=torch.float64)
        for i in range(BAND_ROWS):
            band[i, i:i + n] = torch.tensor(taps, dtype=torch.float64)
    return band


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


#: statistics elements per strip in :func:`ssim_means`: 4 planes of float64 of about 1 MB in all,
#: which stay in a core's L2 cache while both filter passes run over them
STRIP_ELEMENTS = 1 << 17


def ssim_means(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, c1: float, c2: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure of each plane of ``(..., H, W)`` inputs, shape
    ``(...)``: the means of :func:`ssim_terms`' maps.

    Without a gradient to record, on the CPU, the output rows are computed in strips whose
    statistics stay in cache, in reused buffers (:func:`_strip_sums`; 2.5x faster than whole
    planes on the 2-core Xeon of docs/evaluation.md); otherwise through :func:`ssim_terms`.
    """
    recording = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if a.device.type != "cpu" or recording:
        ssim_map, cs_map = ssim_terms(a, b, window, c1, c2)
        return ssim_map.mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))
    n = window.numel()
    taps = tuple(float(v) for v in window)
    rows, cols = a.shape[-2] - n + 1, a.shape[-1] - n + 1
    planes = max(1, a[..., 0, 0].numel())
    step = min(BAND_ROWS, max(16, STRIP_ELEMENTS // (4 * planes * a.shape[-1]) - (n - 1)))
    sums = [_strip_sums(a, b, r0, min(r0 + step, rows), taps, c1, c2)
            for r0 in range(0, rows, step)]
    return (torch.stack([s for s, _ in sums]).sum(dim=0) / (rows * cols),
            torch.stack([cs for _, cs in sums]).sum(dim=0) / (rows * cols))


_workspace = threading.local()


def _buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's scratch buffer of at least ``numel`` elements: reusing it spares a fresh
    allocation, and its page faults, for every intermediate of every strip."""
    buffers = _workspace.__dict__.setdefault("buffers", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of the mode
            buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def _strip_sums(a: torch.Tensor, b: torch.Tensor, r0: int, r1: int, taps: tuple[float, ...],
                c1: float, c2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of the SSIM and contrast-structure maps over output rows ``r0:r1``.

    The formula of :func:`ssim_terms`, written in place in :func:`_buffer` (no autograd)."""
    n = len(taps)
    sa, sb = a[..., r0:r1 + n - 1, :], b[..., r0:r1 + n - 1, :]
    lead, (h_in, w_in) = sa.shape[:-2], sa.shape[-2:]
    h, w = r1 - r0, w_in - n + 1
    planes = max(1, sa[..., 0, 0].numel())
    sizes = [4 * planes * h_in * w_in, 4 * planes * h * w_in, 6 * planes * h * w]
    stats_in, rows_buf, rest = _buffer(sum(sizes), a.dtype).split(sizes)
    stats = stats_in.view(4, *lead, h_in, w_in)  # a, b, a^2 + b^2, ab
    stats[0].copy_(sa)
    stats[1].copy_(sb)
    torch.mul(sa, sa, out=stats[2]).addcmul_(sb, sb)
    torch.mul(sa, sb, out=stats[3])
    band = _row_band(taps)[:h, :h_in].to(a.dtype)
    rows = torch.matmul(band, stats, out=rows_buf.view(4, *lead, h, w_in))
    rest = rest.view(6, *lead, h, w)
    filtered = torch.mul(rows[..., 0:w], taps[0], out=rest[:4])
    for k in range(1, n):
        filtered.add_(rows[..., k:w + k], alpha=taps[k])
    mu_a, mu_b, sq, ab = filtered
    mu_ab = torch.mul(mu_a, mu_b, out=rest[4])
    mu_sq = torch.mul(mu_a, mu_a, out=rest[5]).addcmul_(mu_b, mu_b)
    cs_map = ab.sub_(mu_ab).mul_(2).add_(c2).div_(sq.sub_(mu_sq).add_(c2))
    ssim_map = mu_ab.mul_(2).add_(c1).div_(mu_sq.add_(c1)).mul_(cs_map)
    return ssim_map.sum(dim=(-2, -1)), cs_map.sum(dim=(-2, -1))


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
        ssim_mean, cs_mean = ssim_means(a, b, window, c1, c2)
        mean = ssim_mean if level == last else cs_mean
        factors.append(mean.clamp(min=floor) ** w)
    return torch.stack(factors).prod(dim=0)


class _WindowedSSIM(PlaneMetric):
    """What SSIM and MS-SSIM share: the Gaussian window and the constants K1, K2 (L = 255)."""

    higher_is_better = True
    fmt = ".4f"
    loss_form = "one_minus"

    def __init__(self, name: str, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__(name, channel, crop_border)
        self.window, self.sigma, self.k1, self.k2 = int(window), float(sigma), k1, k2

    @property
    def where(self) -> str:
        return Y_CONVENTION if self.channel == "y" else RGB_CONVENTION + ", mean over channels"

    def constants(self) -> tuple[torch.Tensor, float, float]:
        """The 1-D Gaussian window and c1 = (K1 L)^2, c2 = (K2 L)^2."""
        return (gaussian_window(self.window, self.sigma), (self.k1 * 255.0) ** 2,
                (self.k2 * 255.0) ** 2)


class SSIM(_WindowedSSIM):
    """Structural similarity (Wang et al. 2004) exactly as MATLAB ``ssim_index`` / BasicSR."""

    def __init__(self, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__("ssim", channel, crop_border, window, sigma, k1, k2)

    @property
    def convention(self) -> str:
        return (f"{self.name}: Wang et al. / MATLAB ssim_index, {self.window}x{self.window} "
                f"Gaussian window sigma={self.sigma}, K1={self.k1}, K2={self.k2}, L=255, 'valid' "
                f"filtering, no downsampling, float64, on {self.where}; {self.crop_border} px "
                f"border cropped")

    def score_planes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        check_size(a, self.window, self.name, self.crop_border)
        means, _ = ssim_means(a, b, *self.constants())
        return means.mean(dim=1)  # mean over channels: (B, C) -> (B,)


class MSSSIM(_WindowedSSIM):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) as the authors' MATLAB ``msssim.m``."""

    def __init__(self, channel: Channel = "y", crop_border: int = 0, window: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__("ms_ssim", channel, crop_border, window, sigma, k1, k2)

    @property
    def convention(self) -> str:
        return (f"{self.name}: Wang, Simoncelli & Bovik 2003 / MATLAB msssim.m, 5 scales, "
                f"weights {', '.join(map(str, MS_SSIM_WEIGHTS))}, mean contrast-structure at "
                f"scales 1-4 and mean SSIM at scale 5 (negative means set to 0), 2x2 mean "
                f"downsampling (odd edge kept), {self.window}x{self.window} Gaussian window "
                f"sigma={self.sigma}, K1={self.k1}, K2={self.k2}, L=255, 'valid' filtering, "
                f"float64, on {self.where}; {self.crop_border} px border cropped")

    def score_planes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        levels = len(MS_SSIM_WEIGHTS)
        check_size(a, ms_ssim_min_size(self.window, levels), self.name, self.crop_border,
                   reason=f"for {levels} scales (the coarsest, 1/{2 ** (levels - 1)} of the "
                          f"size, must still hold the {self.window}x{self.window} window)")
        # when differentiated (the loss form), per-scale means are floored at GRADIENT_FLOOR
        # as in the ms_ssim loss term, so that the gradient stays finite
        recording = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        values = ms_ssim_values(a, b, *self.constants(),
                                floor=GRADIENT_FLOOR if recording else 0.0)
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
