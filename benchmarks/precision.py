"""fp32 against a reduced precision (bf16; fp16 on CUDA), side by side in one run: matmul peaks,
training steps/s of the zoo recipes, inference time and output drift of zoo models, LPIPS/DISTS
speed and drift on the benchmark sets.

Usage (see docs/precision.md for our numbers and what they mean)::

    python benchmarks/precision.py --device cpu --json precision.json
    python benchmarks/precision.py --device cpu --sets set5,set14,bsd100 --train-steps 10

The decision ``--precision auto`` takes on this device is printed first: a CPU without bf16
matrix units (AMX, AVX512-BF16) emulates bf16, and every bf16 column below is then a measure of
how much slower that is, not a speed-up. Times are medians; the machine's load is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import percepkit
from percepkit.bench.speed_table import device_name, matmul_throughput, time_call, train_speed
from percepkit.data import benchmark_sets
from percepkit.evaluation.evaluate import build_metrics, run_transform
from percepkit.inference import Predictor
from percepkit.inference.calibration import drift_between
from percepkit.nets.transforms import Bicubic
from percepkit.runtime.devices import resolve_device
from percepkit.runtime.precision import native_bf16, resolve_precision

REPO = Path(__file__).resolve().parents[1]


def bench_matmul(dev: torch.device, low: str) -> dict:
    fp32 = matmul_throughput(dev, torch.float32)
    low_rate = matmul_throughput(dev, resolve_precision(low, dev).dtype,
                                 max_seconds=3.0)
    return {"fp32_gflops": fp32 / 1e9, f"{low}_gflops": low_rate / 1e9,
            "ratio": low_rate / fp32}


def bench_training(recipes: list[str], dev: torch.device, low: str, steps: int,
                   warmup: int) -> list[dict]:
    rows = []
    for recipe in recipes:
        seconds = {}
        for name in ("fp32", low):
            sets = [f"train.precision={name}", f"train.device={dev}", "train.workers=0"]
            seconds[name] = train_speed(recipe, sets, steps=steps, warmup=warmup).timing.median
        rows.append({"recipe": Path(recipe).stem, "fp32_s_per_step": seconds["fp32"],
                     f"{low}_s_per_step": seconds[low],
                     "speedup": seconds["fp32"] / seconds[low]})
    return rows


def bench_inference(models: list[tuple[str, int]], dev: torch.device, low: str,
                    repeats: int) -> list[dict]:
    rows = []
    for name, side in models:
        net = percepkit.load(name)
        x = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
        out, seconds = {}, {}
        for p in ("fp32", low):
            predictor = Predictor(net, dev, precision=p, tile=0, keep_memory=True)
            out[p] = predictor(x)
            seconds[p] = time_call(lambda pr=predictor, x=x: pr(x), dev, repeats=repeats,
                                   max_seconds=60.0).median
        drift = drift_between(out[low], out["fp32"])
        rows.append({"model": name, "input": side, "fp32_s": seconds["fp32"],
                     f"{low}_s": seconds[low], "speedup": seconds["fp32"] / seconds[low],
                     "mean_levels": drift.mean, "p999_levels": drift.p999})
    return rows


def bench_metrics(sets: list[str], names: list[str], dev: torch.device, low: str,
                  data_dir: str | None) -> list[dict]:
    fp32, _ = build_metrics(names, crop_border=4, device=dev)
    reduced, _ = build_metrics(names, crop_border=4, device=dev, precision=low)
    rows = []
    for set_name in sets:
        ds = benchmark_sets.set5(4) if set_name == "set5" else getattr(
            benchmark_sets, set_name)(4, root=data_dir, download=False)
        pairs = []
        for i in range(len(ds)):
            sample = ds.sample(i)
            pairs.append((run_transform(Bicubic(), sample.lr, dev), sample.hr))
        for name in names:
            values, seconds = {}, {}
            for label, metric in (("fp32", fp32[name]), (low, reduced[name])):
                start = time.perf_counter()
                with torch.inference_mode():
                    values[label] = [float(metric(a[None], b[None])) for a, b in pairs]
                seconds[label] = time.perf_counter() - start
            diffs = [abs(a - b) for a, b in zip(values["fp32"], values[low])]
            rows.append({"set": set_name, "metric": name, "images": len(pairs),
                         "fp32_s": seconds["fp32"], f"{low}_s": seconds[low],
                         "speedup": seconds["fp32"] / seconds[low],
                         "mean_abs_diff": sum(diffs) / len(diffs), "max_abs_diff": max(diffs)})
    return rows


def table(title: str, rows: list[dict]) -> Table:
    t = Table(title=title, title_justify="left")
    for key in rows[0]:
        t.add_column(key, justify="left" if isinstance(rows[0][key], str) else "right")
    for row in rows:
        t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--low", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--recipes", default="recipes/zoo/candy.yaml,recipes/zoo/sr_x4_feat.yaml")
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", default="candy:1024,sr_x4_feat:512",
                    help="zoo models and input sides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sets", default="set5")
    ap.add_argument("--metrics", default="lpips,dists")
    ap.add_argument("--data-dir", default=os.environ.get("PERCEPKIT_DATA"))
    ap.add_argument("--skip", default="", help="parts to skip: matmul,train,inference,metrics")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    auto = resolve_precision("auto", dev).name
    info = {"device": device_name(dev), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "native_bf16": native_bf16(dev), "auto_picks": auto,
            "load_average_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}
    console = Console()
    console.print(f"{info['device']}, torch {info['torch']}: native bf16 "
                  f"{info['native_bf16']}, --precision auto picks {auto}; load average "
                  f"{info['load_average_start']:.2f}")
    result: dict = {"machine": info}
    if "matmul" not in skip:
        result["matmul"] = bench_matmul(dev, args.low)
        console.print(table("Matrix product peaks (GFLOP/s)", [result["matmul"]]))
    if "train" not in skip:
        recipes = [str(REPO / r) for r in args.recipes.split(",")]
        result["train"] = bench_training(recipes, dev, args.low, args.train_steps, args.warmup)
        console.print(table("Training (s/step, median)", result["train"]))
    if "inference" not in skip:
        models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models.split(",")]
        result["inference"] = bench_inference(models, dev, args.low, args.repeats)
        console.print(table("Inference (s/image, median) and output drift (levels)",
                            result["inference"]))
    if "metrics" not in skip:
        result["metrics"] = bench_metrics(args.sets.split(","), args.metrics.split(","), dev,
                                          args.low, args.data_dir)
        console.print(table("Metrics: bicubic x4 outputs (s per set) and drift",
                            result["metrics"]))
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
