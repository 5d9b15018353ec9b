"""The paper's speed table on this device: optimisation (Gatys et al.) vs one feed-forward pass.

Johnson et al. 2016, Table 3 (GTX Titan X): L-BFGS style transfer at 100/300/500 iterations
against the style network's single forward pass at 256, 512 and 1024 px. :func:`run_bench`
measures both here with the same loss network (VGG16 to relu4_3, random weights: speed does not
depend on the weight values) and the style net through :class:`~percepkit.inference.Predictor`.

On a slow device, timing 500 L-BFGS iterations at 1024 px would take hours, so at most
``max_seconds`` of iterations are timed per size (at least ``min_iters``) and longer runs are
projected as ``setup + iterations x seconds per iteration``, labelled as projected. The
per-iteration cost is constant (one forward and backward pass of the same size), so this is a
linear extrapolation, not a model.

It also reports the feed-forward pass in images per second and as a fraction of the device's
measured matrix-multiply throughput (the net's nominal convolution FLOPs / time / matmul FLOP/s).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..inference import Predictor
from ..runtime.devices import resolve_device
from ..runtime.precision import native_bf16, resolve_precision

#: Johnson et al. 2016, Table 3: seconds on a GTX Titan X (cuDNN), Gatys et al. at 100/300/500
#: L-BFGS iterations, and the style net's forward pass.
PAPER_TITAN_X: dict[int, dict[str, Any]] = {
    256: {"optimization": {100: 3.17, 300: 9.52, 500: 15.86}, "feedforward": 0.015,
          "speedup": {100: 212, 300: 636, 500: 1060}},
    512: {"optimization": {100: 10.97, 300: 32.91, 500: 54.85}, "feedforward": 0.05,
          "speedup": {100: 205, 300: 615, 500: 1026}},
    1024: {"optimization": {100: 42.89, 300: 128.66, 500: 214.44}, "feedforward": 0.21,
           "speedup": {100: 208, 300: 625, 500: 1042}},
}

Progress = Callable[[str], None]

#: a median this much above the best time of the same call means other work interfered
SPREAD_WARNING = 0.25
#: a matrix-product probe below this fraction of the best rate recorded here means a busy machine
MATMUL_WARNING = 0.7


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds of repeated runs of one call: best, median and relative spread."""

    runs: list[float]

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> float:
        """(median - min) / min: near 0 on a quiet machine."""
        return self.median / self.min - 1.0


def time_call(fn: Callable[[], object], device: torch.device, *, repeats: int = 5,
              warmup: int = 1, max_seconds: float = 10.0) -> Timing:
    """Seconds of ``fn()`` over ``repeats`` runs after ``warmup`` calls (fewer if they run
    long)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    budget_start = time.perf_counter()
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - budget_start > max_seconds:
            break
    return Timing(times)


class PeakMemory:
    """Peak resident memory (bytes) of this process while a ``with`` block runs: sampled every
    ``every`` seconds from ``/proc/self/statm`` on Linux; elsewhere the process's peak so far
    (``ru_maxrss``), which may predate the block."""

    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.bytes = 0
        #: samples taken so far (a waiting caller can tell that one was taken after a point)
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while True:
            self.bytes = max(self.bytes, self.current() or 0)
            self.samples += 1
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> PeakMemory:
        if self.current() is None:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            return self
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, self.current() or 0)

    @property
    def mb(self) -> float:
        return self.bytes / 2**20


def matmul_throughput(device: torch.device, dtype: torch.dtype = torch.float32,
                      n: int | None = None, max_seconds: float = 3.0) -> float:
    """Measured FLOP/s of a square matrix product on ``device`` (best of several runs). The
    default side is 8192 on CUDA, 2048 on the CPU, and 512 for bf16 on a CPU that emulates it
    (a 2048² product there takes tens of seconds)."""
    emulated = dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16(device)
    n = n or (8192 if device.type == "cuda" else 512 if emulated else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    start = time.perf_counter()
    a @ b
    _sync(device)
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds:
            break
    return 2 * n**3 / best


def busy_notes(device: torch.device) -> list[str]:
    """A note when the CPU is already loaded by other processes (1-minute load average)."""
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return []
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.75 * cores:
        return []
    return [f"busy: the load average is {load:.1f} on {cores} cores before the benchmark "
            "started; other processes share the CPU and the times are too slow"]


def matmul_notes(device: str, precision: str, flops: float) -> list[str]:
    """Compare the matmul probe with the best rate recorded for this device; record new bests.

    The record is ``$PERCEPKIT_CACHE/bench_peaks.json`` (default ``~/.cache/percepkit``).
    """
    from ..runtime.files import atomic_write, cache_root

    path = cache_root() / "bench_peaks.json"
    key = f"{device} {precision}"
    try:
        peaks = json.loads(path.read_text())
        best = float(peaks.get(key, 0.0)) if isinstance(peaks, dict) else 0.0
    except (OSError, ValueError):
        peaks, best = {}, 0.0
    notes = []
    if best and flops < MATMUL_WARNING * best:
        notes.append(f"busy: the matrix-product probe ran at {flops / 1e9:,.0f} GFLOP/s, "
                     f"{flops / best:.0%} of the {best / 1e9:,.0f} GFLOP/s recorded on this "
                     "device; the machine is probably loaded")
    if flops > best:
        try:
            peaks = peaks if isinstance(peaks, dict) else {}
            peaks[key] = flops
            data = json.dumps(peaks, indent=1).encode()
            atomic_write(path, lambda f: f.write(data))
        except OSError:
            pass  # a read-only home is no reason to fail a benchmark
    return notes


def conv_flops(model: nn.Module, height: int, width: int) -> float:
    """Nominal FLOPs (2 x multiply-adds) of the convolutions of one forward pass."""
    total = [0.0]

    def hook(m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += 2.0 * k * output.numel()
        elif isinstance(m, nn.ConvTranspose2d):
            x = inputs[0]
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            total[0] += 2.0 * k * x.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total[0]


@dataclass
class SizeResult:
    """One row of the speed table (seconds)."""

    size: int
    feedforward: float  #: median seconds of one pass
    feedforward_min: float
    images_per_second: float
    gflop: float
    achieved_gflops: float
    fraction_of_matmul: float
    optimization_setup: float
    seconds_per_iteration: float
    iterations_timed: int
    optimization: dict[int, float] = field(default_factory=dict)
    projected: dict[int, bool] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    #: the feed-forward pass again in the reduced precision (bf16/fp16), when one was asked for
    reduced_feedforward: float | None = None
    reduced_achieved_gflops: float | None = None
    reduced_fraction_of_matmul: float | None = None


@dataclass
class BenchResult:
    """The whole table plus what it was measured on."""

    device: str
    threads: int
    transform: str
    precision: str
    matmul_gflops: float
    loss_layers: list[str]
    rows: list[SizeResult]
    notes: list[str] = field(default_factory=list)
    #: the reduced precision timed beside fp32 (``bf16``/``fp16``), and its matmul peak
    reduced_precision: str | None = None
    reduced_matmul_gflops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paper_titan_x"] = {str(k): v for k, v in PAPER_TITAN_X.items()}
        return d


def device_name(device: torch.device) -> str:
    """A readable name of the device (GPU model, or CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def time_optimization(size: int, iterations: int, device: torch.device, *,
                      max_seconds: float, min_iters: int = 2, loss: nn.Module | None = None
                      ) -> tuple[float, list[float]]:
    """Time L-BFGS style transfer of a ``size`` px image: (setup seconds, cumulative seconds
    after each timed iteration). Up to ``iterations`` are timed, stopping once ``max_seconds``
    have passed (after at least ``min_iters``); one untimed warm-up iteration runs first."""
    from ..inference.gatys import STYLE_LOSSES, build_objective, optimize_image

    loss = loss or build_objective("style", STYLE_LOSSES, {"name": "vgg16", "weights": "random"},
                                   device)
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=gen).to(device)
    style = torch.rand(1, 3, size, size, generator=gen).to(device)
    _sync(device)
    t0 = time.perf_counter()
    loss.set_style(style)  # the style targets (Gram matrices), computed once per image
    _sync(device)
    setup = time.perf_counter() - t0
    optimize_image(loss, content, content, iterations=1)  # warm-up (allocations, kernels)
    result = optimize_image(loss, content, content, iterations=iterations,
                            max_seconds=max_seconds, min_iterations=min_iters)
    return setup, result.iteration_times


def run_bench(
    sizes: Sequence[int] = (256, 512, 1024),
    iterations: Sequence[int] = (100, 300, 500),
    *,
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    transform_name: str = "johnson_style",
    precision: str = "auto",
    compile: bool = False,
    max_seconds: float = 20.0,
    min_iters: int = 2,
    repeats: int = 5,
    matmul_size: int | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure the speed table; see the module docs. ``model`` defaults to a randomly
    initialised ``transform_name`` (speed does not depend on weights); ``matmul_size`` is the
    side of the square matrices whose product measures the device's peak.

    The paper's comparison is always timed in fp32. ``precision`` ``bf16``/``fp16``, or ``auto``
    on a device with fast bf16, also times the feed-forward pass in that autocast precision,
    against the matmul peak of the same dtype."""
    from ..registry import TRANSFORMS

    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    if model is None:
        torch.manual_seed(0)
        model = TRANSFORMS.build({"name": transform_name}, where="--transform")
    model = model.eval()
    predictor = Predictor(model, dev, precision="fp32", compile=compile, tile=0,
                          keep_memory=True)
    reduced = resolve_precision(precision, dev)
    notes = busy_notes(dev)
    say("measuring matrix-multiply throughput")
    peak = matmul_throughput(dev, torch.float32, n=matmul_size)
    notes += matmul_notes(device_name(dev), "fp32", peak)
    reduced_peak = None
    if reduced.reduced:
        reduced_peak = matmul_throughput(dev, reduced.dtype, n=matmul_size)
        notes += matmul_notes(device_name(dev), reduced.name, reduced_peak)
        reduced_predictor = Predictor(model, dev, precision=reduced, compile=compile,
                                      tile=0, keep_memory=True)
    rows = []
    for size in sizes:
        say(f"{size}x{size}: feed-forward")
        x = torch.rand(1, 3, size, size)
        timing = time_call(lambda x=x: predictor(x), dev, repeats=repeats,
                           warmup=2 if compile else 1)
        ff = timing.median
        if timing.spread > SPREAD_WARNING:
            notes.append(f"busy: the {size}² feed-forward timings spread by "
                         f"{100 * timing.spread:.0f}% (median over best); compare the best times")
        flops = conv_flops(model.to(dev), size, size)
        say(f"{size}x{size}: optimisation (L-BFGS)")
        setup, cumulative = time_optimization(size, max(iterations), dev,
                                              max_seconds=max_seconds, min_iters=min_iters)
        timed = len(cumulative)
        per_it = cumulative[-1] / timed
        opt = {n: setup + (cumulative[n - 1] if n <= timed else n * per_it) for n in iterations}
        row = SizeResult(
            size=size, feedforward=ff, feedforward_min=timing.min, images_per_second=1.0 / ff,
            gflop=flops / 1e9,
            achieved_gflops=flops / ff / 1e9, fraction_of_matmul=flops / ff / peak,
            optimization_setup=setup, seconds_per_iteration=per_it, iterations_timed=timed,
            optimization=opt, projected={n: n > timed for n in iterations},
            speedup={n: opt[n] / ff for n in iterations})
        if reduced_peak is not None:
            say(f"{size}x{size}: feed-forward in {reduced.name}")
            rt = time_call(lambda x=x: reduced_predictor(x), dev, repeats=repeats,
                           warmup=2 if compile else 1).median
            row.reduced_feedforward = rt
            row.reduced_achieved_gflops = flops / rt / 1e9
            row.reduced_fraction_of_matmul = flops / rt / reduced_peak
        rows.append(row)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if any(any(r.projected.values()) for r in rows):
        notes.append("projected: fewer L-BFGS iterations were timed (see 'timed') and the rest "
                     "extrapolated at the measured seconds per iteration")
    return BenchResult(device=device_name(dev), threads=torch.get_num_threads(),
                       transform=transform_name, precision="fp32", matmul_gflops=peak / 1e9,
                       loss_layers=["relu1_2", "relu2_2", "relu3_3", "relu4_3"], rows=rows,
                       notes=notes, reduced_precision=reduced.name if reduced.reduced else None,
                       reduced_matmul_gflops=reduced_peak / 1e9 if reduced_peak else None)


@dataclass
class TrainSpeed:
    """Training speed of a recipe: seconds per step after the warm-up steps."""

    recipe: str
    device: str
    threads: int
    batch_size: int
    warmup: int
    step_seconds: list[float]
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def timing(self) -> Timing:
        return Timing(self.step_seconds)

    def to_dict(self) -> dict[str, Any]:
        t = self.timing
        return {**asdict(self), "steps_per_second": 1 / t.median,
                "images_per_second": self.batch_size / t.median,
                "seconds_per_step_min": t.min, "seconds_per_step_median": t.median}


def train_speed(path: str, overrides: Sequence[str] = (), *, steps: int = 10,
                warmup: int = 3) -> TrainSpeed:
    """Train ``path``'s recipe (its own data, networks and settings) for ``warmup + steps``
    steps in a temporary run directory, without validation, previews or checkpoints in
    between, and time the last ``steps``."""
    import io
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from ..recipes.recipe import load_recipe
    from ..runtime.devices import resolve_device
    from ..train import Trainer

    total = warmup + steps
    recipe = load_recipe(path, [*overrides, f"train.iterations={total}",
                                f"train.val_every={total + 1}", f"train.sample_every={total + 1}",
                                f"checkpoint.every={total + 1}"])
    dev = resolve_device(recipe.train.device)
    notes = busy_notes(dev)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, out=Path(tmp) / "run", console=Console(file=io.StringIO()),
                          progress=False)
        result = trainer.run()
    stamps = result.step_times[warmup - 1:] if warmup else result.step_times
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    timing = Timing(seconds)
    if timing.spread > SPREAD_WARNING:
        notes.append(f"busy: step times spread by {100 * timing.spread:.0f}% (median over best)")
    return TrainSpeed(recipe=recipe.name, device=device_name(dev), threads=torch.get_num_threads(),
                      batch_size=recipe.train.batch_size, warmup=warmup, step_seconds=seconds,
                      notes=notes, precision=trainer.precision.describe())
