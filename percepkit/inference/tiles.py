"""Tiles: how an image is cut, padded, cropped, blended, and measured piece by piece."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .normstats import Probe

Span = tuple[int, int]


def plan_axis(length: int, core: int, overlap: int, align: int = 1) -> list[Span]:
    """Intervals ``[start, end)`` covering ``[0, length)``: as few as cores of at most ``core``
    allow, all of one length (as short as that count allows, so tiles waste little work on
    overlaps), spread evenly, neighbours overlapping by at least ``overlap``, starts multiples
    of ``align`` (``length`` and ``core`` should be multiples too)."""
    core = max(align, core // align * align)
    if length <= core:
        return [(0, length)]
    overlap = min(overlap, core // 2)
    step = max(align, (core - overlap) // align * align)
    n = 1 + math.ceil((length - core) / step)
    balanced = -(-(length + (n - 1) * overlap) // n)
    core = min(core, (-(-balanced // align) + 1) * align)
    starts = sorted({round(i * (length - core) / (n - 1) / align) * align for i in range(n)})
    return [(s, min(s + core, length)) for s in starts]


def ramps(spans: list[Span], scale: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-span 1-D blending weights at output resolution (linear cross-fades over overlaps)
    and their sum over spans, by which the blended result is divided."""
    weights = []
    total = torch.zeros(spans[-1][1] * scale)
    for i, (start, end) in enumerate(spans):
        w = torch.ones((end - start) * scale)
        if i > 0 and spans[i - 1][1] > start:
            n = min(len(w), (spans[i - 1][1] - start) * scale)
            w[:n] = (torch.arange(n) + 0.5) / n
        if i + 1 < len(spans) and spans[i + 1][0] < end:
            n = min(len(w), (end - spans[i + 1][0]) * scale)
            w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n) + 0.5) / n)
        weights.append(w)
        total[start * scale:end * scale] += w
    return weights, total


def crop(start: int, end: int, margin: int, length: int, align: int) -> Span:
    """The input window of the tile core ``[start, end)``: the core plus ``margin`` on both
    sides, shifted inwards at the image borders rather than cut, so that every tile of a plan
    has the same shape (allocations are reused exactly, compiled graphs are not rebuilt)."""
    size = min(length, end - start + 2 * margin)
    lo = min(max(0, start - margin), length - size)
    return lo // align * align, lo // align * align + size


def partition(spans: list[Span]) -> list[Span]:
    """Disjoint pieces of overlapping spans that still cover everything: each span keeps what
    its predecessor does not cover."""
    return [(spans[i - 1][1] if i else 0, end) for i, (_start, end) in enumerate(spans)]


class Tile(NamedTuple):
    """A tile for exact statistics and stitching: ``piece_*``, its disjoint piece of the image
    (:func:`partition` of the cores), and ``crop_*``, the input window it is computed from."""

    piece_y: Span
    piece_x: Span
    crop_y: Span
    crop_x: Span


def disjoint_tiles(rows: list[Span], cols: list[Span], margin: int, height: int, width: int,
                   align: int) -> list[Tile]:
    """The tiles of a plan (:func:`plan_axis` rows and columns), row by row, with disjoint
    pieces that cover the image once."""
    return [Tile(py, px, crop(y0, y1, margin, height, align), crop(x0, x1, margin, width, align))
            for py, (y0, y1) in zip(partition(rows), rows)
            for px, (x0, x1) in zip(partition(cols), cols)]


def net_min_side(align: int) -> int:
    """The smallest side a network is run on: four strides, and at least 16 pixels (so that
    the layers at the bottleneck and their instance norms see a few pixels)."""
    return max(16, 4 * align)


def pad_for_net(x: torch.Tensor, align: int, min_side: int) -> tuple[torch.Tensor, int, int]:
    """``x`` padded as every run of a network pads it (:func:`pad_to_multiple` to its stride
    ``align`` and its :func:`~percepkit.inference.geometry.min_side`), and its original height
    and width, to crop the output back to (times the scale)."""
    return pad_to_multiple(x, align, min_side)


def pad_to_multiple(x: torch.Tensor, align: int, min_side: int = 1
                    ) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right to multiples of ``align`` and at least ``min_side`` (reflection, or
    replication where the image is too small to reflect); returns the original size too."""
    h, w = x.shape[-2:]
    ph = max(-(-h // align) * align, -(-min_side // align) * align) - h
    pw = max(-(-w // align) * align, -(-min_side // align) * align) - w
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


def pad_to_multiple_traced(x: torch.Tensor, align: int, min_side: int = 1
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`pad_to_multiple` with sizes as tensors (index arithmetic instead of ``F.pad``),
    so that a graph traced for export (ONNX, TorchScript) pads every input size as it does;
    returns the original height and width as 0-dim tensors."""
    shape = torch._shape_as_tensor(x)
    h, w = shape[-2], shape[-1]
    side = -(-min_side // align) * align
    th = torch.clamp(torch.div(h + align - 1, align, rounding_mode="floor") * align, min=side)
    tw = torch.clamp(torch.div(w + align - 1, align, rounding_mode="floor") * align, min=side)
    reflect = (th - h < h) & (tw - w < w)

    def rows(n: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        i = torch.arange(target, device=x.device)
        mirrored = torch.where(i < n, i, 2 * (n - 1) - i)
        return torch.where(reflect, mirrored, torch.minimum(i, n - 1))

    return x.index_select(-2, rows(h, th)).index_select(-1, rows(w, tw)), h, w


class WindowSums:
    """Sums of one layer's pre-normalisation values over the disjoint pieces of tiles, and the
    whole image's mean and variance they add up to (exact statistics with bounded memory)."""

    def __init__(self) -> None:
        self._sums: list[torch.Tensor] = []  # sum, sum of squares (float64), count

    def probe(self, tile: Tile) -> Probe:
        """A probe adding the layer's values over ``tile``'s piece, for a pass on its crop.

        The piece is mapped from input pixels to the layer's resolution (crops and pieces are
        multiples of the net's stride, so exactly)."""
        (py0, py1), (px0, px1), (cy0, cy1), (cx0, cx1) = tile
        y0, y1, x0, x1, ch, cw = py0 - cy0, py1 - cy0, px0 - cx0, px1 - cx0, cy1 - cy0, cx1 - cx0
        sums = self._sums

        def probe(parts: list[tuple[torch.Tensor, int, int]], step: int, oh: int, ow: int
                  ) -> None:
            ly0, ly1, lx0, lx1 = y0 * oh // ch, y1 * oh // ch, x0 * ow // cw, x1 * ow // cw
            s1 = s2 = None
            count = 0
            for z, a, b in parts:
                i0, i1 = -(-(ly0 - a) // step), -(-(ly1 - a) // step)
                j0, j1 = -(-(lx0 - b) // step), -(-(lx1 - b) // step)
                v = z[..., i0:i1, j0:j1]
                v = v.float() if v.device.type == "mps" else v.double()  # MPS has no float64
                t1, t2 = v.sum(dim=(2, 3)), (v * v).sum(dim=(2, 3))
                s1, s2 = (t1, t2) if s1 is None else (s1 + t1, s2 + t2)
                count += v.shape[-2] * v.shape[-1]
            if sums:
                sums[0] += s1
                sums[1] += s2
                sums[2] += count
            else:
                sums.extend([s1, s2, torch.tensor(float(count), dtype=torch.float64)])

        return probe

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (biased) variance over everything probed so far, float32 (B, C)."""
        s1, s2, n = self._sums
        mean = s1 / n
        return mean.float(), (s2 / n - mean * mean).clamp_min(0).float()
