"""The fused layers of the fast path: convolution, folded batch norm, instance norm, residual
add and ReLU in one channels_last layer that writes straight into the next layer's padded input.

:mod:`percepkit.inference.fastpath` assembles them into whole networks. Each layer describes its
own geometry (``stride``, ``radius_at``, ``factor_after``: :mod:`.geometry`) and, when it has an
instance norm, implements the statistics protocol of :mod:`.normstats` (``global_norm``,
``record``, ``frozen``, ``probe``: plain attributes, so a pass pays one check for each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PercepkitError
from .normstats import NormStats, Probe, StopForward, norm_coefficients

PadMode = str  # "reflect", "replicate" or "zero"


def moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and (biased) variance of (B, C, H, W), as float32 (B, C).

    On the CPU, for channels_last tensors, both come from sums of x and x·x over the spatial
    positions (a vectorised outer reduction, several times faster than ``torch.var_mean``
    there, and as accurate: its partial sums keep the relative error near 1e-7); channels whose
    variance is small against their squared mean (cancellation) are recomputed in float64.
    """
    b, c, h, w = z.shape
    if z.device.type != "cpu" or not z.is_contiguous(memory_format=torch.channels_last) \
            or z.dtype != torch.float32:
        var, mean = torch.var_mean(z.float(), dim=(2, 3), unbiased=False)
        return mean, var
    n = h * w
    x = z.permute(0, 2, 3, 1).reshape(b, n, c)
    mean = x.sum(1) / n
    var = torch.linalg.vecdot(x, x, dim=1) / n - mean * mean
    if bool((var <= 1e-3 * mean * mean).any()):
        v64, m64 = torch.var_mean(x.double(), dim=1, unbiased=False)
        return m64.float(), v64.float()
    return mean, var


class _Canvas:
    """Where a layer writes its output for the next layer: a (B, C, h + 2 pad, w + 2 pad)
    buffer in ``like``'s memory format whose border is filled from the interior."""

    def __init__(self, like: torch.Tensor, channels: int, h: int, w: int, pad: int) -> None:
        self.pad, self.h, self.w = pad, h, w
        fmt = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) \
            and not like.is_contiguous() else torch.contiguous_format
        self.buffer = torch.empty(like.shape[0], channels, h + 2 * pad, w + 2 * pad,
                                  memory_format=fmt, dtype=like.dtype, device=like.device)
        self.interior = self.buffer[..., pad:pad + h, pad:pad + w]

    def target(self, a: int = 0, b: int = 0, step: int = 1) -> torch.Tensor:
        """The view of output pixels (step i + a, step j + b)."""
        return self.interior if step == 1 else self.interior[..., a::step, b::step]

    def fill_border(self, mode: PadMode) -> None:
        """Fill the border from the interior, like ``F.pad``'s reflect/replicate/zero modes."""
        p, h, w = self.pad, self.h, self.w
        if p == 0:
            return
        if mode == "reflect" and (p >= h or p >= w):
            raise PercepkitError(f"image too small for reflection padding of {p} px")
        buf = self.buffer
        rows = (h, lambda i: buf[..., i, :])
        cols = (w, lambda i: buf[..., :, i])
        for n, line in (rows, cols):  # rows first, then whole columns (corners included)
            for d in range(p):
                for dst, edge in ((p - 1 - d, p), (p + n + d, p + n - 1)):
                    if mode == "zero":
                        line(dst).zero_()
                    else:
                        src = edge if mode == "replicate" else 2 * edge - dst
                        line(dst).copy_(line(src))


def _window_moments(y: torch.Tensor, groups: int, windows: list[tuple[int, int]], h: int,
                    w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance per channel over ``groups`` channel groups of ``y`` (B, groups C,
    h + 1, w + 1), group k restricted to rows/cols ``windows[k] + [0, h) x [0, w)``.

    Each window misses one row and one column of ``y``, so its sums are the sums over all of
    ``y`` (one vectorised pass) minus that row and column plus their corner.
    """
    bsz, gc, hh, ww = y.shape
    c = gc // groups
    if y.device.type != "cpu" or not y.is_contiguous(memory_format=torch.channels_last) \
            or y.dtype != torch.float32:
        parts = [y[:, k * c:(k + 1) * c, a:a + h, b:b + w].float()
                 for k, (a, b) in enumerate(windows)]
        mean = sum(p.mean(dim=(2, 3)) for p in parts) / groups
        var = sum(p.pow(2).mean(dim=(2, 3)) for p in parts) / groups - mean * mean
        return mean, var.clamp_min(0)
    x = y.permute(0, 2, 3, 1).reshape(bsz, hh * ww, gc)
    s1, s2 = x.sum(1), torch.linalg.vecdot(x, x, dim=1)
    t1 = y.new_zeros(bsz, c)
    t2 = y.new_zeros(bsz, c)
    for k, (a, b) in enumerate(windows):
        g = y[:, k * c:(k + 1) * c]
        row, col = g[:, :, h if a == 0 else 0, :], g[:, :, :, w if b == 0 else 0]
        corner = g[:, :, h if a == 0 else 0, w if b == 0 else 0]
        t1 += s1[:, k * c:(k + 1) * c] - row.sum(-1) - col.sum(-1) + corner
        t2 += s2[:, k * c:(k + 1) * c] - (row * row).sum(-1) - (col * col).sum(-1) \
            + corner * corner
    n = groups * h * w
    mean = t1 / n
    var = t2 / n - mean * mean
    if bool((var <= 1e-3 * mean * mean).any()):
        parts = [y[:, k * c:(k + 1) * c, a:a + h, b:b + w].double()
                 for k, (a, b) in enumerate(windows)]
        m64 = sum(p.mean(dim=(2, 3)) for p in parts) / groups
        v64 = sum(p.pow(2).mean(dim=(2, 3)) for p in parts) / groups - m64 * m64
        return m64.float(), v64.float()
    return mean, var


class FusedConv(nn.Module):
    """One layer of the fast path: convolution (stride, transposed, or nearest-x2 resize),
    folded batch norm, instance norm, residual add and ReLU, writing its output straight into
    the reflection/replicate/zero-padded buffer that the next layer reads.

    ``kind``: ``conv`` reads an input already padded by ``in_pad``; ``deconv`` is the paper's
    3x3 stride-1/2 convolution; ``resize`` is nearest x2 then a reflection-padded 3x3 conv,
    computed without the x2 image as four 2x2 sub-pixel kernels (one convolution with 4x the
    output channels) on the replicate-padded input: exactly equal, 2.25x fewer multiply-adds.
    Instance-norm statistics can be recorded (``record``), imposed (``frozen``) or probed
    (``probe``) for tiling.
    """

    def __init__(self, kind: str, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 stride: int = 1, in_pad: int = 0, instance_norm: nn.InstanceNorm2d | None = None,
                 relu: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.stride = stride
        self.in_pad = in_pad
        self.in_mode: PadMode = {"resize": "replicate", "deconv": "zero"}.get(kind, "reflect")
        self.out_pad = 0
        self.out_mode: PadMode = "reflect"
        self.relu = relu
        self.kernel = weight.shape[-1]
        # the statistics protocol of .normstats (a plain attribute: checked on every pass)
        self.global_norm = instance_norm is not None
        self.eps = 0.0
        self.norm_weight: nn.Parameter | None = None
        self.norm_bias: nn.Parameter | None = None
        if instance_norm is not None:
            bias = None  # a per-channel constant before instance norm cancels out exactly
            self.eps = instance_norm.eps
            if instance_norm.affine:
                self.norm_weight = nn.Parameter(instance_norm.weight.detach().clone(),
                                                requires_grad=False)
                self.norm_bias = nn.Parameter(instance_norm.bias.detach().clone(),
                                              requires_grad=False)
        self.record: NormStats | None = None
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None
        self.probe: Probe | None = None
        # Few output channels leave most SIMD lanes of a direct convolution idle: compute a
        # large-kernel one on the 2x2 pixel-unshuffled input instead (k -> ceil((k+1)/2)
        # kernel, 4x the channels; e.g. the last 9x9 conv of the style net runs ~2x faster).
        self.unshuffle = 2 if kind == "conv" and stride == 1 and weight.shape[0] <= 4 \
            and self.kernel >= 5 and instance_norm is None else 1
        if kind == "resize":
            weight = self._phase_weights(weight)
            bias = None if bias is None else bias.repeat(4)
        elif self.unshuffle > 1:
            weight, bias = self._unshuffle_weights(weight, bias, self.unshuffle)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    @staticmethod
    def _phase_weights(w: torch.Tensor) -> torch.Tensor:
        """3x3 kernels (O, I, 3, 3) -> four 2x2 sub-pixel kernels (4 O, I, 2, 2), phase-major.

        Nearest x2 then a 3x3 conv: output row 2i uses input rows (i-1, i, i) and row 2i+1
        uses (i, i, i+1), so the taps that fall on the same input pixel are summed.
        """
        groups = (((0,), (1, 2)), ((0, 1), (2,)))
        out = w.new_zeros(4, *w.shape[:2], 2, 2)
        for a in range(2):
            for b in range(2):
                for r, rows in enumerate(groups[a]):
                    for c, cols in enumerate(groups[b]):
                        out[2 * a + b, :, :, r, c] = w[:, :, list(rows)][:, :, :, list(cols)] \
                            .sum(dim=(2, 3))
        return out.flatten(0, 1)

    @staticmethod
    def _unshuffle_weights(w: torch.Tensor, bias: torch.Tensor | None, r: int
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernels (O, I, k, k) of a stride-1 conv -> (O r², I r², k', k') kernels acting on
        ``pixel_unshuffle(x, r)`` whose ``pixel_shuffle(., r)`` output is the same conv."""
        o, i, k, _ = w.shape
        kk = -(-(k + r - 1) // r)
        out = w.new_zeros(o, r, r, i, r, r, kk, kk)
        for a in range(r):
            for b in range(r):
                for p in range(r):
                    for q in range(r):
                        for u in range(kk):
                            for v in range(kk):
                                ky, kx = r * u + p - a, r * v + q - b
                                if 0 <= ky < k and 0 <= kx < k:
                                    out[:, a, b, :, p, q, u, v] = w[:, :, ky, kx]
        new_bias = None if bias is None else bias.repeat_interleave(r * r)
        return out.reshape(o * r * r, i * r * r, kk, kk), new_bias

    @property
    def out_channels(self) -> int:
        if self.kind == "deconv":
            return self.weight.shape[1]
        return self.weight.shape[0] // (4 if self.kind == "resize" else self.unshuffle ** 2)

    # geometry for :func:`geometry`
    def radius_at(self, factor: float) -> float:
        if self.kind == "deconv":
            return factor
        if self.kind == "resize":
            return factor
        return (self.kernel - 1) / 2 * factor

    def factor_after(self, factor: float) -> float:
        return factor / 2 if self.kind in ("deconv", "resize") else factor * self.stride

    # -- forward -------------------------------------------------------------------------------
    _PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The raw convolution output (for ``resize``: the four phases as channel groups)."""
        if self.kind == "conv" and self.unshuffle > 1:
            r = self.unshuffle
            hp, wp = x.shape[-2:]
            ph, pw = (-hp) % r, (-wp) % r
            xu = F.pixel_unshuffle(F.pad(x, (0, pw, 0, ph)) if ph or pw else x, r)
            if x.is_contiguous(memory_format=torch.channels_last):
                xu = xu.contiguous(memory_format=torch.channels_last)
            y = F.pixel_shuffle(F.conv2d(xu, self.weight, self.bias), r)
            return y[..., :hp - self.kernel + 1, :wp - self.kernel + 1]
        if self.kind == "conv":
            return F.conv2d(x, self.weight, self.bias, stride=self.stride)
        if self.kind == "deconv":
            return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1,
                                      output_padding=1)
        return F.conv2d(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self._convolve(x)
        p = self.out_pad
        c = self.out_channels
        if self.kind == "resize":
            h, w = y.shape[-2] - 1, y.shape[-1] - 1
            parts = [(y[:, k * c:(k + 1) * c, a:a + h, b:b + w], a, b)
                     for k, (a, b) in enumerate(self._PHASES)]
            out_h, out_w, step = 2 * h, 2 * w, 2
        else:
            parts = [(y, 0, 0)]
            out_h, out_w, step = y.shape[-2], y.shape[-1], 1
        if self.probe is not None:
            self.probe(parts, step, out_h, out_w)
            raise StopForward
        if p == 0 and step == 1:
            canvas = None
            targets = [(y, y)]
            interior = y
        else:
            canvas = _Canvas(y, c, out_h, out_w, p)
            targets = [(canvas.target(a, b, step), z) for z, a, b in parts]
            interior = canvas.interior
        if self.global_norm:
            if self.frozen is not None:
                mean, var = self.frozen
            else:
                if self.kind == "resize":
                    mean, var = _window_moments(y, 4, list(self._PHASES), h, w)
                else:
                    mean, var = moments(y)
                if self.record is not None:
                    self.record[self] = (mean, var)
            a, b = norm_coefficients(mean, var, self.eps, self.norm_weight, self.norm_bias)
            a, b = a.to(y.dtype), b.to(y.dtype)
            for dest, src in targets:
                if residual is None:
                    torch.addcmul(b, src, a, out=dest)
                else:
                    torch.addcmul(residual, src, a, out=dest)
                    dest.add_(b)
        else:
            for dest, src in targets:
                if residual is not None:
                    torch.add(residual, src, out=dest)
                elif dest is not src:
                    dest.copy_(src)
        if self.relu:
            interior.relu_()
        if canvas is None:
            return y
        canvas.fill_border(self.out_mode)
        return canvas.buffer


class FusedResidual(nn.Module):
    """A residual block of two :class:`FusedConv` layers; the skip is the input's interior."""

    def __init__(self, first: FusedConv, second: FusedConv) -> None:
        super().__init__()
        self.first, self.second = first, second
        self.in_pad, self.in_mode = first.in_pad, first.in_mode
        first.out_pad, first.out_mode = second.in_pad, second.in_mode

    @property
    def out_pad(self) -> int:
        return self.second.out_pad

    def set_out(self, pad: int, mode: PadMode) -> None:
        self.second.out_pad, self.second.out_mode = pad, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.in_pad
        skip = x[..., p:x.shape[-2] - p, p:x.shape[-1] - p] if p else x
        return self.second(self.first(x), residual=skip)

