"""Artifact metrics: what a person sees at a glance and PSNR/LPIPS barely register.

* ``grid``: a fixed periodic pattern at a period ``p`` (the "dot grid" of a transposed or
  sub-pixel upsampler, the checkerboard of strided layers). Luma on the 0..255 scale, minus its
  ``p x p`` box mean (which passes a pattern of period ``p`` whole and removes smooth content),
  averaged over each of the ``p * p`` phases ``(y mod p, x mod p)``; the value is the standard
  deviation of those ``p * p`` phase means, in levels. A no-reference measure of the output: the
  reference is not used (scoring the reference against itself gives its own value, the
  calibration; Set5 HR images: 0.04-0.42 at period 4).
* ``blobs``: the share (%) of the image covered by saturated blobs -- connected regions
  (8-connectivity) of at least ``min_size`` pixels and ``thickness`` pixels across where the
  output is near white (every channel at or above ``255 - level``) or near black (every channel
  at or below ``level``) while the reference is not near the same extreme (within
  ``reference_margin`` levels of it): the white blobs the fast style nets paint into flat skies
  and walls, not their thin lines.

Both are computed in float64 on the values given (``eval`` and ``score`` give the 8-bit values
they score; ``blobs`` rounds to 8 bits itself), vectorised in torch (connected components by a
parallel union-find, no SciPy), on the whole image by default (``whole_image``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PercepkitError
from ..registry import METRICS
from .base import Metric, check_size, crop

__all__ = ["BLOB_LEVEL", "BLOB_MIN_SIZE", "BLOB_REFERENCE_MARGIN", "BLOB_THICKNESS", "Blobs",
           "Grid", "blob_mask", "blobs", "connected_components", "grid", "grid_phase_means",
           "luma_levels", "opening"]

#: how close to 0 or 255 (levels) every channel of an output pixel must be to count as saturated
BLOB_LEVEL = 5
#: a reference pixel within this many levels of the same extreme excuses a saturated output pixel
BLOB_REFERENCE_MARGIN = 55
#: the smallest connected region (pixels) counted as a blob; smaller specks are texture
BLOB_MIN_SIZE = 64
#: the side of the square a blob must hold at every pixel (a morphological opening): thinner
#: structures, such as the lead lines of a mosaic style, are strokes, not blobs
BLOB_THICKNESS = 3

_LUMA = (0.299, 0.587, 0.114)


def luma_levels(x: torch.Tensor) -> torch.Tensor:
    """Full-range luma ``255 (0.299 R + 0.587 G + 0.114 B)`` in float64, (B, 1, H, W); a
    1-channel image is its own luma (times 255)."""
    x = x.to(torch.float64)
    if x.shape[1] == 1:
        return x * 255.0
    return (x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2]) * 255.0


def grid_phase_means(x: torch.Tensor, period: int) -> torch.Tensor:
    """The ``period x period`` phase means of the high-passed luma of ``x``, (B, p, p).

    Entry ``[b, a, c]`` is the mean of ``Y - box_p(Y)`` over the pixels ``(i, j)`` with
    ``i mod p = a`` and ``j mod p = c`` (coordinates of ``x``), where ``box_p(Y)(i, j)`` is the
    mean of the ``p x p`` window whose top-left corner is ``(i - o, j - o)``, ``o = (p - 1) // 2``;
    pixels whose window leaves the image are not used.
    """
    p = int(period)
    y = luma_levels(x)
    mean = F.avg_pool2d(y, p, stride=1)
    o = (p - 1) // 2
    high = y[..., o:o + mean.shape[-2], o:o + mean.shape[-1]] - mean
    rows = [torch.stack([high[..., (a - o) % p::p, (c - o) % p::p].mean(dim=(-3, -2, -1))
                         for c in range(p)], dim=-1) for a in range(p)]
    return torch.stack(rows, dim=-2)


class Grid(Metric):
    """Periodic-pattern strength at ``period`` (levels, lower is better); no reference needed."""

    higher_is_better = False
    unit = "levels"
    fmt = ".3f"
    #: scored on the whole image (a border crop would only shift the phases)
    whole_image = True

    def __init__(self, period: int = 4, crop_border: int = 0) -> None:
        super().__init__()
        self.period = _period(period)
        self.crop_border = int(crop_border)
        self.name = "grid"

    @property
    def convention(self) -> str:
        p = self.period
        border = (f"{self.crop_border} px border cropped" if self.crop_border
                  else "whole image (no border cropped)")
        return (f"grid: period {p}; standard deviation (population) of the {p * p} phase means "
                f"(y mod {p}, x mod {p}) of Y - box{p}x{p}(Y), Y = 255 (0.299 R + 0.587 G + "
                f"0.114 B) float64 ('valid' box mean), in levels; output only, the reference is "
                f"not used; {border}")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = crop(output, self.crop_border)
        check_size(output, 2 * self.period, self.name, self.crop_border)
        means = grid_phase_means(output, self.period).flatten(1)
        return means.std(dim=1, unbiased=False)


def _period(period: int | str) -> int:
    """``period`` as an integer >= 2 (``grid:2`` passes it as text)."""
    try:
        p = int(period)
    except (TypeError, ValueError):
        p = 0
    if p < 2 or str(period).strip() != str(p):
        raise PercepkitError(f"grid: the period must be an integer of at least 2 (e.g. grid:4), "
                             f"got {period!r}")
    return p


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Labels of the 8-connected regions of a boolean (B, H, W) mask, int64, 0 off the mask.

    Each region is labelled by the flat index + 1 (over the whole batch) of one of its pixels;
    labels are not consecutive. Parallel union-find (Shiloach-Vishkin style): every round hooks
    the root of each edge's smaller root onto the larger one (scatter max), then compresses the
    paths by pointer jumping, until no edge joins two roots: a few rounds, each vectorised.
    """
    b, h, w = mask.shape
    n = b * h * w
    index = torch.arange(n, dtype=torch.int64, device=mask.device).view(b, h, w)
    # the 4 of the 8 neighbour directions that reach every edge once
    pairs = [(index[:, :, :-1], index[:, :, 1:], mask[:, :, :-1] & mask[:, :, 1:]),
             (index[:, :-1, :], index[:, 1:, :], mask[:, :-1, :] & mask[:, 1:, :]),
             (index[:, :-1, :-1], index[:, 1:, 1:], mask[:, :-1, :-1] & mask[:, 1:, 1:]),
             (index[:, :-1, 1:], index[:, 1:, :-1], mask[:, :-1, 1:] & mask[:, 1:, :-1])]
    u = torch.cat([a[m] for a, _, m in pairs])
    v = torch.cat([c[m] for _, c, m in pairs])
    parent = torch.arange(n, dtype=torch.int64, device=mask.device)
    while u.numel():
        ru, rv = parent[u], parent[v]
        joined = ru != rv
        if not bool(joined.any()):
            break
        u, v, ru, rv = u[joined], v[joined], ru[joined], rv[joined]  # settled edges drop out
        parent.scatter_reduce_(0, torch.minimum(ru, rv), torch.maximum(ru, rv), "amax")
        while True:  # pointer jumping until every pixel points at its root
            up = parent[parent]
            if torch.equal(up, parent):
                break
            parent = up
    labels = (parent + 1).view(b, h, w)
    return torch.where(mask, labels, torch.zeros((), dtype=torch.int64, device=mask.device))


def opening(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening of a boolean (B, H, W) mask by a ``size x size`` square: the union
    of the squares that fit inside it (outside the image counts as inside; ``size`` 1: ``mask``)."""
    if size <= 1:
        return mask
    m = mask.to(torch.float32)[:, None]
    pad = size // 2
    eroded = -F.max_pool2d(-m, size, stride=1, padding=pad)
    return F.max_pool2d(eroded, size, stride=1, padding=pad)[:, 0] > 0.5


def blob_mask(output: torch.Tensor, target: torch.Tensor, level: int = BLOB_LEVEL,
              reference_margin: int = BLOB_REFERENCE_MARGIN, min_size: int = BLOB_MIN_SIZE,
              thickness: int = BLOB_THICKNESS) -> torch.Tensor:
    """The pixels of saturated blobs, a boolean (B, H, W) mask (see :class:`Blobs`)."""
    out = torch.round(output.to(torch.float64) * 255.0)
    ref = torch.round(target.to(torch.float64) * 255.0)
    white = (out.amin(dim=1) >= 255 - level) & ~(ref.amin(dim=1) >= 255 - reference_margin)
    black = (out.amax(dim=1) <= level) & ~(ref.amax(dim=1) <= reference_margin)
    keep = torch.zeros_like(white)
    for candidates in (white, black):  # separate: a white and a black region never merge
        candidates = opening(candidates, thickness)
        labels = connected_components(candidates)
        counts = torch.bincount(labels.flatten(), minlength=labels.numel() + 1)
        keep |= candidates & (counts[labels] >= int(min_size))
    return keep


class Blobs(Metric):
    """Share (%) of the image in saturated blobs where the reference is not saturated (lower is
    better)."""

    higher_is_better = False
    unit = "%"
    fmt = ".3f"
    #: the share of the whole image
    whole_image = True

    def __init__(self, level: int = BLOB_LEVEL, reference_margin: int = BLOB_REFERENCE_MARGIN,
                 min_size: int = BLOB_MIN_SIZE, thickness: int = BLOB_THICKNESS,
                 crop_border: int = 0) -> None:
        super().__init__()
        if not 0 <= int(level) < int(reference_margin) <= 127:
            raise PercepkitError(f"blobs: need 0 <= level < reference_margin <= 127, got level "
                                 f"{level} and reference_margin {reference_margin}")
        if int(min_size) < 1:
            raise PercepkitError(f"blobs: min_size must be at least 1 pixel, got {min_size}")
        if int(thickness) < 1 or int(thickness) % 2 == 0:
            raise PercepkitError(f"blobs: thickness must be an odd number of pixels (1: no "
                                 f"opening), got {thickness}")
        self.level, self.reference_margin = int(level), int(reference_margin)
        self.min_size, self.thickness = int(min_size), int(thickness)
        self.crop_border = int(crop_border)
        self.name = "blobs"

    @property
    def convention(self) -> str:
        hi, ref_hi = 255 - self.level, 255 - self.reference_margin
        border = (f"{self.crop_border} px border cropped" if self.crop_border
                  else "whole image (no border cropped)")
        t = self.thickness
        return (f"blobs: % of pixels in 8-connected regions of at least {self.min_size} px, "
                f"after an opening by a {t}x{t} square, of the pixels where the output (8-bit "
                f"values) is near white (every channel >= {hi}) and the reference is not (some "
                f"channel < {ref_hi}), or near black (every channel <= {self.level}) and the "
                f"reference is not (some channel > {self.reference_margin}); white and black "
                f"regions separately; {border}")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = crop(output, self.crop_border), crop(target, self.crop_border)
        check_size(output, 1, self.name, self.crop_border)
        mask = blob_mask(output, target, self.level, self.reference_margin, self.min_size,
                         self.thickness)
        return mask.flatten(1).to(torch.float64).mean(dim=1) * 100.0


@METRICS.register("grid", prefix_arg="period")
def grid(period: int | str = 4, crop_border: int = 0) -> Grid:
    """Periodic pattern at a period (grid:4; SR: the scale), phase-mean std in levels (lower is
    better; no reference)."""
    return Grid(period=_period(period), crop_border=crop_border)


@METRICS.register("blobs")
def blobs(level: int = BLOB_LEVEL, reference_margin: int = BLOB_REFERENCE_MARGIN,
          min_size: int = BLOB_MIN_SIZE, thickness: int = BLOB_THICKNESS,
          crop_border: int = 0) -> Blobs:
    """Share (%) of saturated blobs where the reference is not saturated (lower is better)."""
    return Blobs(level=level, reference_margin=reference_margin, min_size=min_size,
                 thickness=thickness, crop_border=crop_border)
