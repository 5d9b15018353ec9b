"""Cost of each loss term per training step: forward + backward, on the CPU, one thread.

Usage (results in docs/losses.md)::

    python benchmarks/loss_cost.py [--repeats 5] [--batch 4] [--size 128] [--markdown]

Each built-in term (default arguments, plus a few variants) is timed alone inside a
``CompositeLoss``, as training uses it: the loss network (VGG16, truncated after the term's
deepest layer) runs once on the target without gradients and once on the output, the term is
evaluated and the total is back-propagated to the output image (no transform network). The
loss network is randomly initialised: that costs the same time as the ImageNet weights and
needs no files, so these numbers are timings only. Each term gets one warm-up step, then
``--repeats`` timed steps; the table shows the minimum and the median in milliseconds, and the
minimum of the term alone (its forward and backward from precomputed features, without the
loss network). The title gives the load average: other jobs on the machine slow every row.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from percepkit.losses import LossInputs, build_loss
from percepkit.registry import BUILTIN, LOSS_NETWORKS, LOSSES

VARIANTS: list[dict[str, Any]] = [
    {"name": "feature", "criterion": "l1"},
    {"name": "feature", "layers": ["relu3_3"]},
    {"name": "feature", "layers": ["conv5_3"], "criterion": "l1"},  # ESRGAN-style, pre-ReLU
    {"name": "lpips", "features": "loss_network"},  # relu1_2..relu5_3 of the shared VGG16 pass
]


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` reports it (the platform's name otherwise)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(spec: dict[str, Any]) -> str:
    """``name`` followed by its non-default arguments, e.g. ``feature (criterion=l1)``."""
    args = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}"
                     for k, v in spec.items() if k != "name")
    return f"{spec['name']} ({args})" if args else spec["name"]


def _timed(step, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``step()`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def time_term(spec: dict[str, Any], net, batch: int, size: int, repeats: int
              ) -> tuple[str, list[float], list[float]]:
    """Layers read, step times (loss network + term + backward) and the term's own times (s).

    The term's own time is its forward and backward from precomputed features.
    """
    loss = build_loss([spec], net)  # cuts its own view of the shared network
    term = next(iter(loss.terms.values()))
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(batch, 3, size, size, generator=gen)
    start = torch.rand(batch, 3, size, size, generator=gen)
    if loss.style_layers:
        loss.set_style(torch.rand(1, 3, size, size, generator=gen))

    def step() -> None:
        out = start.clone().requires_grad_(True)
        loss(out, target)[0].backward()

    with torch.no_grad():
        out_feats = loss.features(start, loss.output_layers)
        target_feats = loss.features(target, loss.target_layers)

    def term_alone() -> None:
        out = start.clone().requires_grad_(True)
        feats = {k: v.clone().requires_grad_(True) for k, v in out_feats.items()}
        term(LossInputs(out, target, feats, target_feats)).backward()

    layers = ", ".join(dict.fromkeys([*loss.output_layers, *loss.style_layers])) or "-"
    return layers, _timed(step, repeats), _timed(term_alone, repeats)


MIN_SIDE = {"ms_ssim": 176}  # 5 scales of an 11x11 window need 161 px: timed at this size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from rich.console import Console
    from rich.table import Table

    load_start = os.getloadavg()[0]
    from percepkit.errors import MissingWeightsError

    try:  # real weights when present: lpips on the shared pass checks it is ImageNet VGG16
        net, init = LOSS_NETWORKS.build({"name": "vgg16", "weights": "imagenet"}), "ImageNet"
        variants = VARIANTS
    except MissingWeightsError:  # the same speed; only the shared-pass lpips cannot run
        net, init = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"}), "random init"
        variants = [v for v in VARIANTS if v.get("features") != "loss_network"]
    specs = [{"name": e.name} for e in LOSSES.entries() if e.source == BUILTIN] + variants
    rows = []
    for spec in specs:
        size = max(args.size, MIN_SIDE.get(spec["name"], 0))
        layers, times, own = time_term(spec, net, args.batch, size, args.repeats)
        name = describe(spec) + (f" at {size}²" if size != args.size else "")
        rows.append((name, layers, min(times) * 1e3, statistics.median(times) * 1e3,
                     min(own) * 1e3))

    title = (f"loss cost per step: forward + backward, batch {args.batch} of {args.size}², "
             f"CPU 1 thread ({cpu_model()}), torch {torch.__version__}, VGG16 {init}, "
             f"{args.repeats} repeats; load average {load_start:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs")
    table = Table(title=title, title_justify="left")
    columns = ("term", "loss-network layers", "step min ms", "step median ms", "term alone min ms")
    for col in columns:
        table.add_column(col, justify="right" if "ms" in col else "left")
    for name, layers, low, mid, own in rows:
        table.add_row(name, layers, f"{low:.1f}", f"{mid:.1f}", f"{own:.1f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # don't wrap in pipes
    if args.markdown:
        print("\n| " + " | ".join(columns) + " |\n| --- | --- | ---: | ---: | ---: |")
        for name, layers, low, mid, own in rows:
            print(f"| `{name}` | {layers} | {low:.1f} | {mid:.1f} | {own:.1f} |")


if __name__ == "__main__":
    main()
