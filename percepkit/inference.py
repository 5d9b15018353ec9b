"""Inference: run a transform network on images of any size, quickly, within a memory budget.

:class:`Predictor` wraps a transform (a style net, an SR net, a plugin) and does what people
need when applying one:

* device placement; on CUDA fp16 autocast and optional ``torch.compile`` (never bf16, and no
  reduced precision on the CPU), ``torch.inference_mode`` and channels_last everywhere; on the
  CPU freed memory is kept for the next pass (:func:`keep_freed_memory`);
* the fast path (:func:`fast_model`): the paper's nets re-expressed with the same weights as
  fused channels_last layers (:class:`FusedConv`): batch norm folded into the convolutions,
  instance norm, residual add and ReLU in one in-place pass, each layer writing straight into
  the padded buffer the next one reads, resize-convolutions as sub-pixel convolutions, and
  the 3-channel output convolution on the pixel-unshuffled input. Outputs match the plain
  network to float round-off (tested);
* any height, width and aspect ratio: inputs are reflection-padded to a multiple of the net's
  total stride and the output is cropped back;
* large images in overlapping tiles sized to a memory budget (automatic by default). Each tile
  carries a context margin of at least the network's receptive field, which is thrown away, and
  neighbouring tiles are cross-faded over an overlap. Instance norm is global (its statistics
  cover the whole image), so tiles of an instance-normalised net all use the whole image's
  statistics, measured exactly (for fast nets in stages around the small bottleneck tensor,
  :meth:`Predictor._staged`), or estimated on a downscaled copy (``norm_stats="approx"``).
  Tiled output equals untiled output to float round-off (tested).

:func:`plan_batch` and :func:`run_batch` are the file handling of ``percepkit stylize`` /
``upscale`` / ``optimize``: a bad file is reported and the batch goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .devices import resolve_device
from .errors import PercepkitError

if TYPE_CHECKING:
    import rich.console

GiB = 1024**3
TileCallback = Callable[[int, int], None]


# -- devices and memory -----------------------------------------------------------------------
def _counter(total: int, progress: TileCallback | None) -> Callable[[], None]:
    """A callable that reports ``progress(done, total)`` each time it is called."""
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return advance


def available_memory(device: torch.device) -> int:
    """Bytes free for activations now: CUDA's free memory, or the OS's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * GiB


_LIBC: ctypes.CDLL | None = None
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _set_keep(keep: bool) -> bool:
    """glibc: serve large blocks from the heap and keep freed memory (``keep``), or the
    defaults (blocks over 128 KiB-32 MiB are mapped and returned to the OS when freed)."""
    if _LIBC is None:
        return False
    if keep:
        return _LIBC.mallopt(_M_MMAP_MAX, 0) == 1 and \
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok = _LIBC.mallopt(_M_MMAP_MAX, 65536) == 1 and \
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 128 * 1024) == 1
    _LIBC.malloc_trim(0)
    return ok


def keep_freed_memory() -> bool:
    """Make glibc serve large tensors from the heap and keep freed memory for reuse.

    By default glibc returns every allocation above 32 MiB to the OS when it is freed, so each
    forward pass at 1024 px faults ~4 GiB of fresh pages back in (a million page faults, about a
    third of the pass on a 2-core VM). After this call the memory of one pass is reused by the
    next. Process-wide: the process keeps its peak memory (:func:`returning_freed_memory`
    suspends it). Returns whether it took effect (Linux with glibc only).
    """
    global _LIBC
    if _LIBC is None:
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            return False
        _LIBC = libc
    return _set_keep(True)


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """Suspend :func:`keep_freed_memory` within the block (tiling promises a memory bound; a
    heap that keeps freed blocks grows by fragmentation, ~1.4x, mapped blocks do not)."""
    if _LIBC is None:
        yield
        return
    _set_keep(False)
    try:
        yield
    finally:
        _set_keep(True)


def default_memory_budget(device: torch.device) -> int:
    """Bytes of activations one forward pass may use: half the free GPU memory, or on the CPU
    40% of the available RAM capped at 2 GiB (so an x4 upscale of 1024x1024 fits in a few GB)."""
    free = available_memory(device)
    if device.type == "cuda":
        return int(free * 0.5)
    return int(min(2 * GiB, 0.4 * free))


def parse_memory(text: str) -> int:
    """``'1.5G'``, ``'512M'``, ``'800000000'`` -> bytes."""
    units = {"k": 1024, "m": 1024**2, "g": GiB, "t": 1024**4}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in units else s
    try:
        value = float(number) * factor
    except ValueError:
        raise PercepkitError(f"cannot read memory size {text!r}; use e.g. 512M or 2G") from None
    if value <= 0:
        raise PercepkitError(f"memory size must be positive, got {text!r}")
    return int(value)


# -- what a network needs to be tiled ---------------------------------------------------------
@dataclass
class NetInfo:
    """Geometry of a transform: output ``scale``, total stride ``align`` (inputs and tile
    offsets must be multiples of it), ``margin`` (context pixels a tile needs on each side, at
    least the receptive-field radius), activation ``bytes_per_pixel`` of input at peak, and
    whether it has globally normalised layers (instance norm)."""

    scale: int
    align: int
    margin: int
    bytes_per_pixel: float
    global_norm: bool


def _is_global_norm(m: nn.Module) -> bool:
    """Whether ``m`` normalises with statistics of its whole input (instance norm)."""
    if isinstance(m, FusedConv):
        return m.instance_norm is not None
    if isinstance(m, nn.InstanceNorm2d):
        return not (m.track_running_stats and not m.training)
    return False


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
        if isinstance(m, FusedConv):
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


def analyze(model: nn.Module, device: torch.device, dtype_bytes: int = 4) -> NetInfo:
    """Measure a transform's geometry and peak activation memory with a small dry run."""
    align, radius = geometry(model)
    align = max(align, int(getattr(model, "size_multiple", 1)))
    radius = max(radius, float(getattr(model, "tile_margin", None) or 0))  # declared by the net
    margin = int(math.ceil((radius + 2) / align) * align)
    side = max(64, 4 * align)
    sizes: list[int] = []

    def hook(_m: nn.Module, inputs: tuple, output: object) -> None:
        n_in = sum(t.numel() for t in inputs if torch.is_tensor(t))
        n_out = output.numel() if torch.is_tensor(output) else 0
        sizes.append(n_in + n_out)

    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, FusedConv)]
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
    global_norm = any(_is_global_norm(m) for m in model.modules())
    return NetInfo(scale, align, margin, peak / (side * side), global_norm)


# -- instance-norm statistics shared by all tiles ---------------------------------------------
NormStats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def record_norm_stats(model: nn.Module) -> Iterator[NormStats]:
    """Within the block, forward passes record each instance norm's input mean and variance."""
    stats: NormStats = {}

    def pre_hook(m: nn.Module, inputs: tuple) -> None:
        x = inputs[0].float()
        var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False)
        stats[m] = (mean, var)

    handles = []
    for m in model.modules():
        if isinstance(m, FusedConv) and m.instance_norm is not None:
            m.record = stats
        elif _is_global_norm(m):
            handles.append(m.register_forward_pre_hook(pre_hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            if isinstance(m, FusedConv):
                m.record = None


def _frozen_instance_norm(m: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor
                          ) -> Callable[[torch.Tensor], torch.Tensor]:
    a = torch.rsqrt(var + m.eps)
    b = -mean * a
    if m.affine:
        a = a * m.weight.float()
        b = b * m.weight.float() + m.bias.float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(b[..., None, None].to(x.dtype), x, a[..., None, None].to(x.dtype))

    return forward


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module, stats: NormStats) -> Iterator[None]:
    """Within the block, instance norms use ``stats`` instead of their input's statistics."""
    patched = []
    try:
        for m, (mean, var) in stats.items():
            if isinstance(m, FusedConv):
                m.frozen = (mean, var)
            else:
                m.forward = _frozen_instance_norm(m, mean, var)  # type: ignore[method-assign]
            patched.append(m)
        yield
    finally:
        for m in patched:
            if isinstance(m, FusedConv):
                m.frozen = None
            else:
                del m.forward


class _StopForward(Exception):
    """Raised by a probe to end a statistics pass at the layer it measures."""


#: ``probe(parts, step, out_h, out_w)``: a layer's pre-normalisation output as views ``(z, a,
#: b)`` holding output pixels ``(step i + a, step j + b)`` of an ``out_h x out_w`` map.
Probe = Callable[[list[tuple[torch.Tensor, int, int]], int, int, int], None]


@contextlib.contextmanager
def _probing(module: nn.Module, probe: Probe) -> Iterator[None]:
    """Within the block, a forward pass reaching ``module`` (an instance norm, or a fused layer
    with one) hands its input to ``probe`` and stops there (:class:`_StopForward`)."""
    if isinstance(module, FusedConv):
        module.probe = probe
        try:
            yield
        finally:
            module.probe = None
        return

    def pre_hook(_m: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        probe([(x, 0, 0)], 1, x.shape[-2], x.shape[-1])
        raise _StopForward

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def _partition(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint pieces of overlapping spans that still cover everything: each span keeps what
    its predecessor does not cover."""
    return [(spans[i - 1][1] if i else 0, end) for i, (_start, end) in enumerate(spans)]


# -- tiles --------------------------------------------------------------------------------------
def plan_axis(length: int, core: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
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


def _ramps(spans: list[tuple[int, int]], scale: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-span 1-D blending weights at output resolution (linear cross-fades over overlaps)
    and their sum over spans, by which the blended result is divided."""
    ramps = []
    total = torch.zeros(spans[-1][1] * scale)
    for i, (start, end) in enumerate(spans):
        w = torch.ones((end - start) * scale)
        if i > 0 and spans[i - 1][1] > start:
            n = min(len(w), (spans[i - 1][1] - start) * scale)
            w[:n] = (torch.arange(n) + 0.5) / n
        if i + 1 < len(spans) and spans[i + 1][0] < end:
            n = min(len(w), (end - spans[i + 1][0]) * scale)
            w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n) + 0.5) / n)
        ramps.append(w)
        total[start * scale:end * scale] += w
    return ramps, total


def _crop(start: int, end: int, margin: int, length: int, align: int) -> tuple[int, int]:
    """The input window of the tile core ``[start, end)``: the core plus ``margin`` on both
    sides, shifted inwards at the image borders rather than cut, so that every tile of a plan
    has the same shape (allocations are reused exactly, compiled graphs are not rebuilt)."""
    size = min(length, end - start + 2 * margin)
    lo = min(max(0, start - margin), length - size)
    return lo // align * align, lo // align * align + size


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


def _window_probe(window: tuple[int, int, int, int, int, int], sums: list[torch.Tensor]
                  ) -> Probe:
    """A probe adding (sum, sum of squares, count) over a window of a tile's crop to ``sums``.

    ``window`` is (y0, y1, x0, x1, crop height, crop width) in input pixels; it is mapped to the
    layer's resolution (crops and windows are multiples of the net's stride, so exactly).
    """
    y0, y1, x0, x1, ch, cw = window

    def probe(parts: list[tuple[torch.Tensor, int, int]], step: int, oh: int, ow: int) -> None:
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


# -- the predictor --------------------------------------------------------------------------------
class Predictor:
    """Apply a transform to images of any size with the fast settings of the device.

    ``tile``: ``None`` chooses tiles from ``memory_budget`` (bytes; default
    :func:`default_memory_budget`), ``0`` never tiles, ``N`` uses tiles of N input pixels.
    ``half`` (default: on CUDA) runs in fp16 autocast on CUDA only; ``compile`` wraps the net in
    ``torch.compile`` (the plain network: inductor does its own fusion; worth it on CUDA for
    many images of one size); ``fast`` uses :func:`fast_model`; ``keep_memory`` (CPU) calls
    :func:`keep_freed_memory` so that repeated passes do not page-fault their memory back in;
    it changes the whole process's allocator, so it is opt-in (the CLI commands turn it on).

    ``norm_stats`` is how tiles of an instance-normalised net get the statistics of the whole
    image when it does not fit the budget. ``exact``: the output is the untiled output. Fast
    nets run in stages (:meth:`_staged`, ~2x the work of one untiled pass); other nets make one
    more pass over the tiles per norm layer, stopping at that layer (several times the work).
    ``approx``: all statistics from one pass over a copy downscaled to fit (cheap and seamless,
    but the rendition changes slightly: the statistics depend on scale).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        *,
        half: bool | None = None,
        channels_last: bool = True,
        compile: bool = False,
        fast: bool = True,
        tile: int | None = None,
        overlap: int | None = None,
        memory_budget: int | None = None,
        keep_memory: bool = False,
        norm_stats: str = "exact",
    ) -> None:
        self.device = resolve_device(device)
        if keep_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        if self.half and self.device.type != "cuda":
            raise PercepkitError("fp16 inference is only used on CUDA (CPUs here have no fast "
                                 "half-precision convolutions); drop --half")
        self.channels_last = channels_last
        model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.task = getattr(model, "task", None)
        if fast and not compile:  # inductor fuses the plain graph itself
            model = fast_model(model)
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.info = analyze(model, self.device, dtype_bytes=2 if self.half else 4)
        self.scale = self.info.scale
        self.net = torch.compile(model) if compile else model
        # nets whose own hint says tiling changes their output run whole unless asked to tile
        self.tile = 0 if tile is None and getattr(model, "tiling", "supported") != "supported" \
            else tile
        self.overlap = overlap if overlap is not None else 4 * self.info.align
        self.memory_budget = memory_budget or default_memory_budget(self.device)
        if tile is not None and tile < 0:
            raise PercepkitError(f"tile size must be positive (or 0 for no tiling), got {tile}")
        if norm_stats not in ("exact", "approx"):
            raise PercepkitError(f"norm_stats must be 'exact' or 'approx', got {norm_stats!r}")
        self.norm_stats = norm_stats
        self._norm_order: list[nn.Module] | None = None

    # -- the network itself --------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.half:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """One untiled forward pass of an aligned batch (B, 3, H, W); float32 result.
        ``eager`` bypasses ``torch.compile`` (passes with hooks or patched norm layers)."""
        with torch.inference_mode(), self._autocast():
            return (self.model if eager else self.net)(self._prep(x)).float()

    # -- planning ------------------------------------------------------------------------------
    def fits(self, height: int, width: int) -> bool:
        """Whether one image of this size fits the memory budget untiled."""
        return height * width * self.info.bytes_per_pixel <= self.memory_budget

    def tile_size(self, height: int, width: int) -> int:
        """Core tile size (input pixels) for an image, 0 when no tiling is needed."""
        if self.tile == 0:
            return 0
        if self.tile:
            core = max(self.info.align, self.tile // self.info.align * self.info.align)
            return 0 if core >= max(height, width) else core
        if self.fits(height, width):
            return 0
        side = int(math.sqrt(self.memory_budget / self.info.bytes_per_pixel))
        core = (side - 2 * self.info.margin) // self.info.align * self.info.align
        if core < max(2 * self.overlap, 4 * self.info.align, 32):
            need = (2 * self.info.margin + 64) ** 2 * self.info.bytes_per_pixel
            raise PercepkitError(f"memory budget of {self.memory_budget / GiB:.2f} GiB is too "
                                 f"small for tiles of this network; allow at least "
                                 f"{need / GiB:.2f} GiB (--memory)")
        return core

    # -- running -------------------------------------------------------------------------------
    def __call__(self, image: torch.Tensor, progress: TileCallback | None = None) -> torch.Tensor:
        """Transform one image (3, H, W) or a batch (B, 3, H, W) in [0, 1]; returns the same
        rank on the CPU, float32, ``scale`` times larger."""
        single = image.dim() == 3
        batch = image[None] if single else image
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise PercepkitError(f"expected an RGB image (3, H, W) or a batch (B, 3, H, W), got "
                                 f"shape {tuple(image.shape)}")
        padded, h, w = pad_to_multiple(batch, self.info.align, max(16, 4 * self.info.align))
        core = self.tile_size(*padded.shape[-2:])
        if core == 0:
            out = self.forward(padded).cpu()
        else:
            with returning_freed_memory():
                out = torch.cat([self._tiled(p[None], core, progress) for p in padded])
        out = out[..., : h * self.scale, : w * self.scale]
        return out[0] if single else out

    def _stats(self, x: torch.Tensor) -> NormStats:
        """Instance-norm statistics of one pass over the whole image, downscaled to fit the
        budget if needed (exact when it fits)."""
        h, w = x.shape[-2:]
        if not self.fits(h, w):
            f = math.sqrt(self.memory_budget / (h * w * self.info.bytes_per_pixel))
            a = self.info.align
            size = (max(a, int(h * f) // a * a), max(a, int(w * f) // a * a))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        with record_norm_stats(self.model) as stats:
            self.forward(x, eager=True)
        return dict(stats)

    def norm_layers(self) -> list[nn.Module]:
        """The instance-norm layers in the order a forward pass reaches them."""
        if self._norm_order is None:
            order: list[nn.Module] = []
            mods = [m for m in self.model.modules() if _is_global_norm(m)]
            handles = [m.register_forward_pre_hook(lambda m, _i: order.append(m))
                       for m in mods]
            try:
                side = max(16, 4 * self.info.align)
                self.forward(torch.zeros(1, 3, side, side), eager=True)
            finally:
                for h in handles:
                    h.remove()
            self._norm_order = list(dict.fromkeys(order))
        return self._norm_order

    def _exact_stats(self, x: torch.Tensor, rows: list[tuple[int, int]],
                     cols: list[tuple[int, int]], progress: Callable[[], None]) -> NormStats:
        """Exact whole-image statistics with bounded memory: for each norm layer in turn, one
        pass over the tiles that stops at that layer and sums its input over disjoint pieces
        of the tile cores (earlier layers already use their whole-image statistics)."""
        m, a = self.info.margin, self.info.align
        h, w = x.shape[-2:]
        stats: NormStats = {}
        pieces = list(zip(_partition(rows), rows)), list(zip(_partition(cols), cols))
        for layer in self.norm_layers():
            sums: list[torch.Tensor] = []
            for (py0, py1), (y0, y1) in pieces[0]:
                for (px0, px1), (x0, x1) in pieces[1]:
                    cy0, cy1 = _crop(y0, y1, m, h, a)
                    cx0, cx1 = _crop(x0, x1, m, w, a)
                    window = (py0 - cy0, py1 - cy0, px0 - cx0, px1 - cx0, cy1 - cy0, cx1 - cx0)
                    probe = _window_probe(window, sums)
                    with frozen_norm_stats(self.model, stats), _probing(layer, probe), \
                            contextlib.suppress(_StopForward):
                        self.forward(x[..., cy0:cy1, cx0:cx1], eager=True)
                    progress()
            s1, s2, n = sums
            mean = s1 / n
            stats[layer] = (mean.float(), (s2 / n - mean * mean).clamp_min(0).float())
        return stats

    def _tiled(self, x: torch.Tensor, core: int, progress: TileCallback | None) -> torch.Tensor:
        """Run one aligned image (1, 3, H, W) tile by tile and blend the tiles' outputs."""
        s, m, a = self.scale, self.info.margin, self.info.align
        h, w = x.shape[-2:]
        exact_passes = self.info.global_norm and self.norm_stats == "exact" and not self.fits(h, w)
        if exact_passes and isinstance(self.model, FastTransform) \
                and self.model.output != "bicubic_skip":
            return self._staged(x, progress)
        rows = plan_axis(h, core, self.overlap, a)
        cols = plan_axis(w, core, self.overlap, a)
        total = len(rows) * len(cols) * (1 + (len(self.norm_layers()) if exact_passes else 0))
        advance = _counter(total, progress)

        if not self.info.global_norm:
            stats: NormStats = {}
        elif exact_passes:
            stats = self._exact_stats(x, rows, cols, advance)
        else:
            stats = self._stats(x)
        _warn_other_global_norms(self.model)
        ramps_y, sum_y = _ramps(rows, s)
        ramps_x, sum_x = _ramps(cols, s)
        out = torch.zeros(1, 3, h * s, w * s)
        eager = self.info.global_norm  # patched norm layers: no compiled graph
        with frozen_norm_stats(self.model, stats):
            for (y0, y1), wy in zip(rows, ramps_y):
                for (x0, x1), wx in zip(cols, ramps_x):
                    cy0, cy1 = _crop(y0, y1, m, h, a)
                    cx0, cx1 = _crop(x0, x1, m, w, a)
                    y = self.forward(x[..., cy0:cy1, cx0:cx1], eager=eager).cpu()
                    y = y[..., (y0 - cy0) * s:(y1 - cy0) * s, (x0 - cx0) * s:(x1 - cx0) * s]
                    out[..., y0 * s:y1 * s, x0 * s:x1 * s] += y * (wy[:, None] * wx[None, :])
                    advance()
        return out.div_(sum_y[:, None] * sum_x[None, :])

    # -- exact tiling in stages -------------------------------------------------------------
    def _staged(self, x: torch.Tensor, progress: TileCallback | None) -> torch.Tensor:
        """Exact tiled inference of a fast instance-normalised net whose image does not fit.

        The layers down to the bottleneck run tile by tile (one statistics pass per norm layer,
        stopping there, then one pass that keeps their output); the bottleneck layers (the
        residual blocks, at 1/4 resolution for the style nets: a small tensor) run on that
        whole tensor when it fits the budget, so their statistics are exact for free; the
        layers back up run tile by tile again from the kept tensor. ~2x the work of one
        untiled pass instead of one pass over the whole network per norm layer.
        """
        fast = self.model
        assert isinstance(fast, FastTransform)
        factors = fast.factors()
        h, w = x.shape[-2:]
        plans: list[_StagePlan | None] = []
        f_in = 1.0
        for start, end in fast.stages():
            f_out = factors[end - 1]
            src_bytes = x.shape[0] * fast.in_channels(start) * (h / f_in) * (w / f_in) * 4
            bottleneck = start > 0 and end < len(fast.layers) and f_out == f_in
            if bottleneck and 5 * src_bytes <= self.memory_budget:
                plans.append(None)  # the whole tensor at once
            else:
                plans.append(self._plan_stage(round(h / f_in), round(w / f_in), start, end,
                                              f_in, f_out))
            f_in = f_out
        total = sum(len(p.crops) * (len(p.norms) + 1) for p in plans if p is not None)
        advance = _counter(total, progress)

        stats: NormStats = {}
        for (start, end), plan in zip(fast.stages(), plans):
            if plan is None:
                with torch.inference_mode(), self._autocast():
                    x = fast.run(self._prep(x), start, end).float()
            else:
                x = self._run_stage(x, plan, stats, advance)
        return x.cpu()

    def _plan_stage(self, hs: int, ws: int, start: int, end: int, f_in: float, f_out: float
                    ) -> _StagePlan:
        """Tiles of layers ``start:end`` over an ``hs x ws`` input (``f_in`` network-input
        pixels per pixel) within the memory budget."""
        fast = self.model
        assert isinstance(fast, FastTransform)
        a = max(1, round(f_out / f_in))  # the stage's stride in its input's pixels
        m = int(math.ceil((fast.radius(start, end) + 2) / a) * a)
        side = math.sqrt(self.memory_budget / self.info.bytes_per_pixel) / f_in
        core = max(a, int(side - 2 * m) // a * a)
        rows, cols = plan_axis(hs, core, a, a), plan_axis(ws, core, a, a)
        crops = [(py, px, _crop(y0, y1, m, hs, a), _crop(x0, x1, m, ws, a))
                 for py, (y0, y1) in zip(_partition(rows), rows)
                 for px, (x0, x1) in zip(_partition(cols), cols)]
        norms = [c for layer in fast.layers[start:end]
                 for c in ([layer] if isinstance(layer, FusedConv) else [layer.first,
                                                                        layer.second])
                 if c.instance_norm is not None]
        return _StagePlan(start, end, f_in / f_out, crops, norms)

    def _run_stage(self, src: torch.Tensor, plan: _StagePlan, stats: NormStats,
                   advance: Callable[[], None]) -> torch.Tensor:
        """Run a planned stage tile by tile: exact statistics of its norm layers (added to
        ``stats``), then its output, assembled from the tiles' disjoint pieces."""
        fast = self.model
        assert isinstance(fast, FastTransform)

        def run(crop: tuple) -> torch.Tensor:
            (cy0, cy1), (cx0, cx1) = crop[2], crop[3]
            with torch.inference_mode(), self._autocast():
                return fast.run(self._prep(src[..., cy0:cy1, cx0:cx1]), plan.start, plan.end)

        for layer in plan.norms:
            sums: list[torch.Tensor] = []
            for crop in plan.crops:
                (py0, py1), (px0, px1), (cy0, cy1), (cx0, cx1) = crop
                window = (py0 - cy0, py1 - cy0, px0 - cx0, px1 - cx0, cy1 - cy0, cx1 - cx0)
                with frozen_norm_stats(fast, stats), \
                        _probing(layer, _window_probe(window, sums)), \
                        contextlib.suppress(_StopForward):
                    run(crop)
                advance()
            s1, s2, n = sums
            mean = s1 / n
            stats[layer] = (mean.float(), (s2 / n - mean * mean).clamp_min(0).float())
        up = plan.up
        out: torch.Tensor | None = None
        with frozen_norm_stats(fast, stats):
            for crop in plan.crops:
                (py0, py1), (px0, px1), (cy0, _cy1), (cx0, _cx1) = crop
                y = run(crop).float().cpu()
                if out is None:
                    shape = (src.shape[0], y.shape[1], round(src.shape[-2] * up),
                             round(src.shape[-1] * up))
                    out = torch.empty(shape, memory_format=torch.channels_last)
                oy0, oy1, ox0, ox1 = (round(v * up) for v in (py0, py1, px0, px1))
                iy, ix = round((py0 - cy0) * up), round((px0 - cx0) * up)
                out[..., oy0:oy1, ox0:ox1] = y[..., iy:iy + oy1 - oy0, ix:ix + ox1 - ox0]
                advance()
        assert out is not None
        return out


@dataclass
class _StagePlan:
    """Tiles of one stage of :meth:`Predictor._staged`: layers ``start:end``, output pixels per
    input pixel ``up``, tiles as (piece rows, piece cols, crop rows, crop cols), norm layers."""

    start: int
    end: int
    up: float
    crops: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]]
    norms: list[FusedConv]


def _warn_other_global_norms(model: nn.Module) -> None:
    kinds = {type(m).__name__ for m in model.modules()
             if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    if kinds:
        warnings.warn(f"tiling a network with {', '.join(sorted(kinds))}: each tile is "
                      "normalised on its own; the cross-fades hide most seams", stacklevel=3)


# -- the fast path ----------------------------------------------------------------------------
PadMode = str  # "reflect", "replicate" or "zero"


def _moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d,
                     transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights and bias with an eval-mode batch norm folded in."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    b = bias.detach() if bias is not None else torch.zeros_like(shift)
    return weight.detach() * scale.view(shape), b * scale + shift


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
        self.instance_norm = None
        if instance_norm is not None:
            bias = None  # a per-channel constant before instance norm cancels out exactly
            self.instance_norm = instance_norm
            self.eps = instance_norm.eps
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

    def _norm_coefficients(self, mean: torch.Tensor, var: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-(sample, channel) scale and shift of the instance norm (frozen ones if set)."""
        if self.frozen is not None:
            mean, var = self.frozen
        elif self.record is not None:
            self.record[self] = (mean, var)
        norm = self.instance_norm
        assert norm is not None
        a = torch.rsqrt(var + self.eps)
        if norm.affine:
            a = a * norm.weight.float()
            b = norm.bias.float() - mean * a
        else:
            b = -mean * a
        return a[..., None, None], b[..., None, None]

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
            raise _StopForward
        if p == 0 and step == 1:
            canvas = None
            targets = [(y, y)]
            interior = y
        else:
            canvas = _Canvas(y, c, out_h, out_w, p)
            targets = [(canvas.target(a, b, step), z) for z, a, b in parts]
            interior = canvas.interior
        if self.instance_norm is not None:
            if self.frozen is not None:
                mean = var = y.new_zeros(0)
            elif self.kind == "resize":
                mean, var = _window_moments(y, 4, list(self._PHASES), h, w)
            else:
                mean, var = _moments(y)
            a, b = self._norm_coefficients(mean, var)
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


class FastTransform(nn.Module):
    """The fast path of a :class:`~percepkit.transforms.JohnsonStyle` or
    :class:`~percepkit.transforms.JohnsonSR` (same weights, same outputs; build it with
    :func:`fast_model`)."""

    def __init__(self, layers: list[nn.Module], output: str, scale: int, task: str | None
                 ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # "sigmoid2" ((tanh(z) + 1) / 2 = sigmoid(2z)), "bicubic_skip" or "linear"
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
            from .imresize import imresize

            assert start == 0, "the bicubic skip needs the network's input"
            return h.add_(imresize(x, scale=self.scale))
        return h if self.output == "linear" else h.sigmoid_()

    def in_channels(self, index: int) -> int:
        """Channels of layer ``index``'s input."""
        layer = self.layers[index]
        conv = layer if isinstance(layer, FusedConv) else layer.first
        w = conv.weight
        if conv.kind == "deconv":
            return w.shape[0]
        return w.shape[1] // (conv.unshuffle ** 2)

    def factors(self) -> list[float]:
        """Input pixels per output pixel of each layer (4 after two stride-2 layers)."""
        out, f = [], 1.0
        for layer in self.layers:
            convs = [layer] if isinstance(layer, FusedConv) else [layer.first, layer.second]
            for conv in convs:
                f = conv.factor_after(f)
            out.append(f)
        return out

    def radius(self, start: int, end: int) -> float:
        """Receptive-field radius of layers ``start:end`` in pixels of their input."""
        f, r = 1.0, 0.0
        for layer in self.layers[start:end]:
            convs = [layer] if isinstance(layer, FusedConv) else [layer.first, layer.second]
            for conv in convs:
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


def _split_block(block: nn.Sequential) -> tuple[str, nn.Module, int, nn.Module | None, bool]:
    """(kind, conv, in_pad, norm, relu) of a transforms.conv_block / upsample_block."""
    mods = list(block)
    relu = isinstance(mods[-1], nn.ReLU)
    if relu:
        mods = mods[:-1]
    norm = mods[-1] if isinstance(mods[-1], (nn.BatchNorm2d, nn.InstanceNorm2d, nn.Identity)) \
        else None
    if norm is not None:
        mods = mods[:-1]
    if len(mods) == 1 and isinstance(mods[0], nn.ConvTranspose2d):
        return "deconv", mods[0], 0, norm, relu
    if len(mods) == 3 and isinstance(mods[0], nn.Upsample):
        return "resize", mods[2], 1, norm, relu
    if len(mods) == 2 and isinstance(mods[0], nn.ReflectionPad2d):
        return "conv", mods[1], int(mods[0].padding[0]), norm, relu
    raise TypeError(f"unexpected block {block}")


def _fuse(block: nn.Sequential) -> FusedConv:
    kind, conv, pad, norm, relu = _split_block(block)
    if kind == "deconv" and (conv.stride != (2, 2) or conv.padding != (1, 1)
                             or conv.output_padding != (1, 1) or conv.kernel_size != (3, 3)):
        raise TypeError("only 3x3 stride-2 transposed convolutions are fused")
    if kind == "resize" and (conv.kernel_size != (3, 3) or block[0].scale_factor != 2
                             or block[0].mode != "nearest"):
        raise TypeError("only nearest-x2 + 3x3 resize convolutions are fused")
    if kind == "conv" and (conv.dilation != (1, 1) or conv.groups != 1 or conv.padding != (0, 0)):
        raise TypeError("only plain convolutions are fused")
    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    instance = None
    if isinstance(norm, nn.BatchNorm2d):
        if norm.training or norm.running_mean is None:
            raise TypeError("batch norm must be in eval mode with running statistics")
        weight, bias = _fold_batch_norm(weight, bias, norm, transposed=kind == "deconv")
    elif isinstance(norm, nn.InstanceNorm2d):
        if norm.track_running_stats:
            raise TypeError("instance norm with running statistics is not fused")
        instance = norm
    stride = _pair(conv.stride) if kind == "conv" else 1
    return FusedConv(kind, weight, bias, stride=stride, in_pad=pad,
                     instance_norm=instance, relu=relu)


def fast_model(model: nn.Module) -> nn.Module:
    """The fast equivalent of a ``johnson_style`` / ``johnson_sr`` network (same weights, same
    outputs to float round-off), or ``model`` itself for other transforms."""
    from .transforms import JohnsonSR, JohnsonStyle, ResidualBlock

    if type(model) not in (JohnsonStyle, JohnsonSR) or model.training:
        return model
    mods = list(model.net)
    try:
        layers: list[nn.Module] = []
        for m in mods[:-2]:
            if isinstance(m, ResidualBlock):
                layers.append(FusedResidual(_fuse(m.body[0]), _fuse(m.body[1])))
            else:
                layers.append(_fuse(m))
        pad, last = mods[-2], mods[-1]
        if not (isinstance(pad, nn.ReflectionPad2d) and isinstance(last, nn.Conv2d)):
            return model
        skip = isinstance(model, JohnsonSR) and model.skip
        linear = getattr(model, "output", "tanh") == "linear"
        weight, bias = last.weight.detach(), last.bias.detach()
        if not skip and not linear:  # (tanh(z) + 1) / 2 == sigmoid(2 z)
            weight, bias = 2 * weight, 2 * bias
        layers.append(FusedConv("conv", weight, bias, in_pad=int(pad.padding[0])))
    except TypeError:
        return model
    output = "bicubic_skip" if skip else "linear" if linear else "sigmoid2"
    fast = FastTransform(layers, output, int(getattr(model, "scale", 1)),
                         getattr(model, "task", None))
    return fast.to(next(model.parameters()).device)


# -- batches of files -------------------------------------------------------------------------
@dataclass
class BatchItem:
    """One input file and where its result goes, or why it cannot be processed."""

    label: str
    source: Path | None = None
    target: Path | None = None
    error: str | None = None


@dataclass
class BatchSummary:
    """Counts of a batch run and the per-file problems, in order."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every file was written (or deliberately skipped), else 1."""
        return 1 if self.failed else 0

    def report(self, console: rich.console.Console, headline: str) -> None:
        """Print ``headline`` with the skipped/failed counts; exit 1 if any file failed."""
        parts = [headline]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (already there)")
        if self.failed:
            parts.append(f"[red]{len(self.failed)} failed[/]")
        console.print(", ".join(parts))
        if self.exit_code:
            sys.exit(self.exit_code)


def plan_batch(inputs: Sequence[str | Path], output: str | Path, ext: str = ".png"
               ) -> list[BatchItem]:
    """Pair inputs (files, or folders searched recursively) with output paths.

    ``output`` is a folder (created as needed; folder inputs keep their sub-folders), or a file
    name when there is exactly one input file. Missing inputs and empty folders become items
    with an error, so the rest of the batch can go on.
    """
    from .images import IMAGE_EXTENSIONS, list_images

    output = Path(output)
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise PercepkitError(f"--ext {ext}: not an image extension; use one of "
                             f"{', '.join(IMAGE_EXTENSIONS)}")
    as_file = output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir()
    if as_file and (len(inputs) != 1 or Path(inputs[0]).is_dir()):
        raise PercepkitError(f"-o {output}: an image file name, but several images were given; "
                             f"pass a folder for -o")
    items: list[BatchItem] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            files = list_images(path)
            if not files:
                items.append(BatchItem(str(path), error="folder contains no image files"))
            for f in files:
                items.append(BatchItem(str(f), f, output / f.relative_to(path).with_suffix(ext)))
        elif path.exists():
            items.append(BatchItem(str(path), path, output if as_file else
                                   output / (path.stem + ext)))
        else:
            items.append(BatchItem(str(path), error="no such file or folder"))
    seen: dict[Path, str] = {}
    for item in items:
        if item.target is None or item.error:
            continue
        key = item.target.resolve()
        if item.source is not None and key == item.source.resolve():
            item.error = f"the output {item.target} would replace the input; choose another -o"
        elif key in seen:
            item.error = f"same output file {item.target} as {seen[key]}; rename one of them"
        else:
            seen[key] = item.label
    return items


def run_batch(
    items: Sequence[BatchItem],
    transform: Callable[[torch.Tensor, TileCallback | None], torch.Tensor],
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
    console: object | None = None,
    show_progress: bool = True,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step_label: str = "tiles",
) -> BatchSummary:
    """Read, transform and write each item; a bad file is reported and the batch goes on.

    ``transform(image, step_progress)`` maps a (3, H, W) image to its result and may report
    steps (tiles, iterations: ``step_label``) as ``step_progress(done, total)``. Single-channel
    inputs get single-channel outputs. Existing outputs are kept unless ``overwrite``; with
    ``skip_existing`` keeping them is not an error.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .errors import ImageError
    from .images import read_image, write_image

    con = console if isinstance(console, Console) else Console(stderr=True, highlight=False)
    summary = BatchSummary()

    def fail(item: BatchItem, message: str) -> None:
        summary.failed.append((item.label, message))
        con.print(f"[red]✗[/] {escape(item.label)}: {escape(message)}", soft_wrap=True)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=con, transient=True, disable=not show_progress) as bar:
        files = bar.add_task("images", total=len(items))
        tiles = None
        for item in items:
            bar.update(files, description=f"[bold]{escape(Path(item.label).name)}")
            try:
                if item.error:
                    fail(item, item.error)
                    continue
                assert item.source is not None and item.target is not None
                if item.target.exists() and not overwrite:
                    if skip_existing:
                        summary.skipped.append(item.label)
                    else:
                        fail(item, f"{item.target} exists; pass --overwrite to replace it "
                                   "(or --skip-existing)")
                    continue
                try:
                    image = read_image(item.source, mode="keep")
                except ImageError as e:
                    fail(item, str(e).removeprefix(f"{item.source}: "))
                    continue
                gray = image.shape[0] == 1
                if gray:
                    image = image.expand(3, -1, -1)
                if prepare is not None:
                    image = prepare(image)

                def on_tile(done: int, total: int) -> None:
                    nonlocal tiles
                    if tiles is None:
                        tiles = bar.add_task(f"  {step_label}", total=total)
                    bar.update(tiles, completed=done, total=total)

                result = transform(image, on_tile)
                if gray:
                    result = result.mean(0, keepdim=True)
                try:
                    write_image(item.target, result)
                except (OSError, ImageError) as e:
                    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    fail(item, f"cannot write {item.target}: {reason}")
                    continue
                summary.written.append(item.target)
            except PercepkitError as e:
                fail(item, str(e))
            finally:
                if tiles is not None:
                    bar.remove_task(tiles)
                    tiles = None
                bar.advance(files)
    return summary
