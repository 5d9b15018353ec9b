"""The Predictor: a transform applied to images of any size, quickly, within a memory budget."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PercepkitError
from ..runtime.devices import resolve_device
from ..runtime.precision import Precision, check_precision, native_bf16, resolve_precision
from .calibration import reduced_precision_allowed
from .fastpath import FastTransform, fast_model
from .geometry import analyze
from .memory import (
    KEPT_HEAP_FACTOR,
    GiB,
    default_memory_budget,
    fits,
    keep_freed_memory,
    require_memory,
    tile_side,
)
from .normstats import NormStats, StopForward, frozen_norm_stats, probing, record_norm_stats
from .padded import PaddedNet
from .tiles import (
    Tile,
    WindowSums,
    crop,
    disjoint_tiles,
    net_min_side,
    pad_for_net,
    plan_axis,
    ramps,
)

#: ``progress(done, total)``: steps (tiles, statistics passes) of one image.
TileCallback = Callable[[int, int], None]

#: Tensors of a stage input's size that the bottleneck of a fast net (its residual blocks) holds
#: at once when it runs on the whole tensor: the kept input, its padded copy, a layer's raw
#: convolution output, the padded buffer it writes, and slack. :meth:`Predictor._staged` runs
#: the bottleneck whole when that many fit the budget, else tile by tile.
BOTTLENECK_LIVE_TENSORS = 5


def _counter(total: int, progress: TileCallback | None) -> Callable[[], None]:
    """A callable that reports ``progress(done, total)`` each time it is called."""
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return advance


class Predictor:
    """Apply a transform to images of any size with the fast settings of the device.

    ``tile``: ``None`` chooses tiles from ``memory_budget`` (bytes; default
    :func:`~percepkit.inference.memory.default_memory_budget`), ``0`` never tiles, ``N`` uses
    tiles of N input pixels. ``precision``: ``fp32``, ``bf16`` or ``fp16`` (CUDA) autocast as
    asked, or ``auto``: the device's fast reduced precision (bf16 on bf16-capable GPUs and CPUs
    with bf16 units, else fp16 on CUDA) when the net's output stays within
    :mod:`~percepkit.inference.calibration`'s budget of its fp32 output, else fp32 (``half``:
    the deprecated ``True`` = fp16, ``False`` = fp32);
    ``compile`` wraps the net in ``torch.compile`` (the plain network: inductor does its own
    fusion; worth it on CUDA for many images of one size); ``fast`` uses
    :func:`~percepkit.inference.fastpath.fast_model`; ``keep_memory`` (CPU) calls
    :func:`~percepkit.inference.memory.keep_freed_memory` so that repeated passes and tiles do
    not page-fault their memory back in (tiles are then cut for half the budget); it changes
    the whole process's allocator, so it is opt-in (the CLI commands turn it on).

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
        precision: str | Precision = "auto",
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
        self.keep_memory = keep_memory and self.device.type == "cpu" and keep_freed_memory()
        if half is not None:
            precision = "fp16" if half else "fp32"
        requested = check_precision(precision)
        if requested != "auto":  # before building anything: fp16 off CUDA is refused here
            self.precision = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        if isinstance(model, PaddedNet):  # percepkit.load's module: the Predictor pads itself
            model = model.net
        model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if fast and not compile:  # inductor fuses the plain graph itself
            model = fast_model(model)
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.info = analyze(model, self.device, dtype_bytes=2 if requested in ("bf16", "fp16")
                            else 4)
        if requested == "auto":  # calibrated with the fp32 geometry; 16-bit activations if kept
            self.precision = self._auto_precision()
            if self.precision.reduced:
                self.info = analyze(model, self.device, dtype_bytes=2)
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
        return self.precision.autocast()

    def _auto_precision(self) -> Precision:
        """``auto``: the device's fast reduced precision if this net stays within the budget
        (measured once on a calibration image and cached), else fp32."""
        fp32 = Precision("fp32", self.device.type)
        if native_bf16(self.device):
            candidate = Precision("bf16", self.device.type)
        elif self.device.type == "cuda":
            candidate = Precision("fp16", "cuda")
        else:
            return fp32
        align = self.info.align

        def run(image: torch.Tensor, precision: Precision) -> torch.Tensor:
            h, w = (-(-side // align) * align for side in image.shape[-2:])
            image = F.pad(image, (0, w - image.shape[-1], 0, h - image.shape[-2]), "reflect")
            with torch.inference_mode(), precision.autocast():
                return self.model(self._prep(image)).float().cpu()

        allowed = reduced_precision_allowed(self.model, candidate, self.device, run)
        return candidate if allowed else fp32

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
        return fits(height, width, self.info.bytes_per_pixel, self.memory_budget)

    @property
    def tile_budget(self) -> float:
        """Activation bytes one tile may use: the budget, divided by ``KEPT_HEAP_FACTOR`` when
        freed memory is kept (the heap then holds more than the live tensors)."""
        return self.memory_budget / (KEPT_HEAP_FACTOR if self.keep_memory else 1.0)

    def tile_size(self, height: int, width: int) -> int:
        """Core tile size (input pixels) for an image, 0 when no tiling is needed."""
        if self.tile == 0:
            return 0
        if self.tile:
            core = max(self.info.align, self.tile // self.info.align * self.info.align)
            return 0 if core >= max(height, width) else core
        if self.fits(height, width):
            return 0
        core = tile_side(self.tile_budget, self.info.bytes_per_pixel, self.info.margin,
                         self.info.align)
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
        padded, h, w = pad_for_net(batch, self.info.align, self.info.min_side)
        hs, ws = padded.shape[-2] * self.scale, padded.shape[-1] * self.scale
        # the whole output is held on the CPU (float32, plus its 8-bit copy when written)
        require_memory(padded.shape[0] * 3 * hs * ws * 5, torch.device("cpu"),
                       f"the {hs}x{ws} output of this {h}x{w} image (x{self.scale})",
                       "use a smaller image or scale")
        core = self.tile_size(*padded.shape[-2:])
        # a --tile or --memory beyond the device: the activations of one pass, estimated
        side_h, side_w = (padded.shape[-2], padded.shape[-1]) if core == 0 else \
            (core + 2 * self.info.margin,) * 2
        require_memory(padded.shape[0] * side_h * side_w * self.info.bytes_per_pixel,
                       self.device, f"one {'untiled' if core == 0 else 'tiled'} pass over "
                       f"{side_h}x{side_w} input pixels", "lower --tile or --memory (or leave "
                       "them to percepkit)")
        if core == 0:
            out = self.forward(padded).cpu()
        else:
            out = torch.cat([self._tiled(p[None], core, progress) for p in padded])
        out = out[..., : h * self.scale, : w * self.scale]
        return out[0] if single else out

    def approximate_norm_stats(self, x: torch.Tensor) -> NormStats:
        """Instance-norm statistics of one pass over the whole image, downscaled to fit the
        budget if needed (exact when it fits)."""
        h, w = x.shape[-2:]
        if not self.fits(h, w):
            f = tile_side(self.tile_budget, self.info.bytes_per_pixel) / math.sqrt(h * w)
            a = self.info.align
            size = (max(a, int(h * f) // a * a), max(a, int(w * f) // a * a))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        with record_norm_stats(self.model) as stats:
            self.forward(x, eager=True)
        return dict(stats)

    def norm_layers(self) -> list[nn.Module]:
        """The instance-norm layers in the order a forward pass reaches them."""
        if self._norm_order is None:
            side = net_min_side(self.info.align)
            with record_norm_stats(self.model) as stats:
                self.forward(torch.zeros(1, 3, side, side), eager=True)
            self._norm_order = list(stats)
        return self._norm_order

    @staticmethod
    def _measure(model: nn.Module, layer: nn.Module, tiles: list[Tile],
                 run: Callable[[Tile], object], stats: NormStats,
                 advance: Callable[[], None]) -> None:
        """Exact whole-image statistics of ``layer`` into ``stats``: ``run`` each tile (with
        the layers before it frozen at ``stats``) up to ``layer``, summing its input over the
        tile's disjoint piece."""
        sums = WindowSums()
        for tile in tiles:
            with frozen_norm_stats(model, stats), probing(layer, sums.probe(tile)), \
                    contextlib.suppress(StopForward):
                run(tile)
            advance()
        stats[layer] = sums.moments()

    def _exact_stats(self, x: torch.Tensor, rows: list[tuple[int, int]],
                     cols: list[tuple[int, int]], advance: Callable[[], None]) -> NormStats:
        """Exact whole-image statistics with bounded memory: for each norm layer in turn, one
        pass over the tiles that stops at that layer (earlier layers already use their
        whole-image statistics)."""
        h, w = x.shape[-2:]
        tiles = disjoint_tiles(rows, cols, self.info.margin, h, w, self.info.align)

        def run(tile: Tile) -> None:
            (cy0, cy1), (cx0, cx1) = tile.crop_y, tile.crop_x
            self.forward(x[..., cy0:cy1, cx0:cx1], eager=True)

        stats: NormStats = {}
        for layer in self.norm_layers():
            self._measure(self.model, layer, tiles, run, stats, advance)
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
            stats = self.approximate_norm_stats(x)
        _warn_other_global_norms(self.model)
        ramps_y, sum_y = ramps(rows, s)
        ramps_x, sum_x = ramps(cols, s)
        out = torch.zeros(1, 3, h * s, w * s)
        eager = self.info.global_norm  # patched norm layers: no compiled graph
        with frozen_norm_stats(self.model, stats):
            for (y0, y1), wy in zip(rows, ramps_y):
                for (x0, x1), wx in zip(cols, ramps_x):
                    cy0, cy1 = crop(y0, y1, m, h, a)
                    cx0, cx1 = crop(x0, x1, m, w, a)
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
        whole tensor when it fits the budget (:data:`BOTTLENECK_LIVE_TENSORS`), so their
        statistics are exact for free; the layers back up run tile by tile again from the kept
        tensor. ~2x the work of one untiled pass instead of one pass over the whole network per
        norm layer.
        """
        fast = self.model
        assert isinstance(fast, FastTransform)
        plans = self.stage_plans(*x.shape[-2:], batch=x.shape[0])
        total = sum(len(p.tiles) * (len(p.norms) + 1) for p in plans if p is not None)
        advance = _counter(total, progress)

        stats: NormStats = {}
        for (start, end), plan in zip(fast.stages(), plans):
            if plan is None:
                with torch.inference_mode(), self._autocast():
                    x = fast.run(self._prep(x), start, end).float()
            else:
                x = self._run_stage(x, plan, stats, advance)
        return x.cpu()

    def stage_plans(self, h: int, w: int, batch: int = 1) -> list[StagePlan | None]:
        """How an ``h x w`` image (aligned, as padded for the net) that does not fit the budget
        runs through a fast net in exact stages: one :class:`StagePlan` (tiles) per stage, or
        ``None`` for a bottleneck stage that runs on its whole tensor at once."""
        fast = self.model
        if not isinstance(fast, FastTransform):
            raise PercepkitError("stage_plans: only fast nets (fast=True, an instance-normalised "
                                 "percepkit net) run in stages.")
        factors = fast.factors()
        plans: list[StagePlan | None] = []
        f_in = 1.0
        for start, end in fast.stages():
            f_out = factors[end - 1]
            hs, ws = round(h / f_in), round(w / f_in)
            bottleneck = start > 0 and end < len(fast.layers) and f_out == f_in
            held = BOTTLENECK_LIVE_TENSORS * batch * fast.in_channels(start) * 4
            if bottleneck and fits(hs, ws, held, self.memory_budget):
                plans.append(None)  # the whole tensor at once
            else:
                plans.append(self._plan_stage(hs, ws, start, end, f_in, f_out))
            f_in = f_out
        return plans

    def _plan_stage(self, hs: int, ws: int, start: int, end: int, f_in: float, f_out: float
                    ) -> StagePlan:
        """Tiles of layers ``start:end`` over an ``hs x ws`` input (``f_in`` network-input
        pixels per pixel) within the memory budget."""
        fast = self.model
        assert isinstance(fast, FastTransform)
        a = max(1, round(f_out / f_in))  # the stage's stride in its input's pixels
        m = int(math.ceil((fast.radius(start, end) + 2) / a) * a)
        core = max(a, tile_side(self.memory_budget, self.info.bytes_per_pixel * f_in ** 2, m, a))
        rows, cols = plan_axis(hs, core, a, a), plan_axis(ws, core, a, a)
        norms = [c for c in fast.convs(start, end) if c.global_norm]
        return StagePlan(start, end, f_in / f_out, disjoint_tiles(rows, cols, m, hs, ws, a),
                          norms)

    def _run_stage(self, src: torch.Tensor, plan: StagePlan, stats: NormStats,
                   advance: Callable[[], None]) -> torch.Tensor:
        """Run a planned stage tile by tile: exact statistics of its norm layers (added to
        ``stats``), then its output, assembled from the tiles' disjoint pieces."""
        fast = self.model
        assert isinstance(fast, FastTransform)

        def run(tile: Tile) -> torch.Tensor:
            (cy0, cy1), (cx0, cx1) = tile.crop_y, tile.crop_x
            with torch.inference_mode(), self._autocast():
                return fast.run(self._prep(src[..., cy0:cy1, cx0:cx1]), plan.start, plan.end)

        for layer in plan.norms:
            self._measure(fast, layer, plan.tiles, run, stats, advance)
        up = plan.up
        out: torch.Tensor | None = None
        with frozen_norm_stats(fast, stats):
            for tile in plan.tiles:
                (py0, py1), (px0, px1), (cy0, _cy1), (cx0, _cx1) = tile
                y = run(tile).float().cpu()
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
class StagePlan:
    """Tiles of one stage of :meth:`Predictor.stage_plans`: layers ``start:end``, output pixels per
    input pixel ``up``, its tiles, its norm layers."""

    start: int
    end: int
    up: float
    tiles: list[Tile]
    norms: list[nn.Module]


def _warn_other_global_norms(model: nn.Module) -> None:
    kinds = {type(m).__name__ for m in model.modules()
             if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    if kinds:
        warnings.warn(f"tiling a network with {', '.join(sorted(kinds))}: each tile is "
                      "normalised on its own; the cross-fades hide most seams", stacklevel=3)
