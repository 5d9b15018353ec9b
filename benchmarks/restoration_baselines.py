"""Classical baselines of the restoration tasks (denoise, deblur, jpeg) under percepkit's benchmark
protocols (percepkit/evaluation/protocols.py): the degraded input and scikit-image's restorers,
scored with PSNR/SSIM (and LPIPS with --lpips) exactly as ``percepkit eval --task`` scores a model.

Usage (docs/tasks.md has our numbers and what they mean)::

    python benchmarks/restoration_baselines.py --json out.json --md out.md
    python benchmarks/restoration_baselines.py --tasks denoise --levels 25 --sets set5 --limit 2

Each baseline has at most one free parameter. It is tuned on a held-out set, never on a reported
one: the first ``--tune-images`` images of BSD200 (the BSDS300 *training* images,
``$PERCEPKIT_SHARED/data/train/BSD200``; disjoint from BSD100/CBSD68/Set5/Set14/Set12),
centre-cropped to ``--tune-size``, degraded by the same protocol; the value with the best mean
PSNR is used on every reported set. Parameters without tuning are scikit-image's documented
defaults (its gallery's settings for ``denoise_wavelet``). Outputs are clamped to [0, 1] and
rounded to 8 bits before scoring, as ``percepkit eval`` does.

Single process (the machine is shared); the JSON is rewritten after every set, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from percepkit.bench.speed_table import device_name
from percepkit.data.benchmark_sets import SRBenchmark, quantize
from percepkit.data.degradations import blur_kernel, load_kernels
from percepkit.data.images import list_images, read_image
from percepkit.evaluation.evaluate import build_metrics, score_pair
from percepkit.evaluation.protocols import LEVELS, Protocol, ProtocolSet, make_protocol
from percepkit.registry import DATASETS
from percepkit.runtime.files import atomic_write

#: which sets each task runs on, and at which levels (None: every level of the task; a level
#: is named by level_tag: the sigma, the quality, "gaussian" or the Levin kernel)
PLAN: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {
    "denoise": [("set5", None), ("set14", None), ("cbsd68", None), ("set12", None),
                ("bsd100", ("25",))],
    "deblur": [("set5", None), ("set14", ("gaussian",)), ("cbsd68", ("gaussian",)),
               ("bsd100", ("gaussian",))],
    "jpeg": [("set5", None), ("set14", None), ("cbsd68", None), ("bsd100", ("20",))],
}


def task_levels(task: str, levin: bool) -> list[dict[str, Any]]:
    """The protocol arguments of each level of ``task`` (deblur: the Gaussian, and with
    ``levin`` the 8 motion kernels of Levin et al. 2009)."""
    if task == "denoise":
        return [{"sigma": s} for s in LEVELS["denoise"]]
    if task == "jpeg":
        return [{"quality": q} for q in LEVELS["jpeg"]]
    return [{}] + ([{"kernel": f"levin09:{i}"} for i in range(1, 9)] if levin else [])


def level_tag(level: dict[str, Any]) -> str:
    """``25``, ``20``, ``gaussian`` or ``levin09:3``: how --levels and PLAN name a level."""
    for key in ("sigma", "quality"):
        if key in level:
            return f"{level[key]:g}"
    return str(level.get("kernel", "gaussian"))

Restorer = Callable[[np.ndarray, float], np.ndarray]


# -- the restorers: HxWxC (or HxW) float64 in and out ------------------------------------------
def _axis(x: np.ndarray) -> int | None:
    return -1 if x.ndim == 3 else None


def nl_means(x: np.ndarray, k: float) -> np.ndarray:
    """``denoise_nl_means`` with h = k * sigma estimated by ``estimate_sigma`` (fast mode, 5x5
    patches, distance 6: scikit-image's gallery settings, which use k = 0.8)."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(np.mean(estimate_sigma(x, channel_axis=_axis(x), average_sigmas=True)))
    return denoise_nl_means(x, h=k * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                            patch_distance=6, channel_axis=_axis(x))


def wavelet(x: np.ndarray, _: float) -> np.ndarray:
    """``denoise_wavelet``, BayesShrink, soft thresholds, sigma estimated, colour in YCbCr
    (scikit-image's gallery settings; no free parameter)."""
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(x, method="BayesShrink", mode="soft", rescale_sigma=True,
                           convert2ycbcr=x.ndim == 3, channel_axis=_axis(x))


def tv(x: np.ndarray, weight: float) -> np.ndarray:
    """``denoise_tv_chambolle`` with ``weight`` (per channel for colour images)."""
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(x, weight=weight, channel_axis=_axis(x))


def _per_channel(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], pad: int) -> np.ndarray:
    """``fn`` on each channel, reflect-padded by ``pad`` and cropped back: the protocol blurs
    with reflect padding, so the deconvolution sees the same boundary."""
    planes = x[..., None] if x.ndim == 2 else x
    out = np.empty_like(planes)
    for c in range(planes.shape[-1]):
        padded = np.pad(planes[..., c], pad, mode="reflect")
        out[..., c] = fn(padded)[pad:-pad, pad:-pad]
    return out[..., 0] if x.ndim == 2 else out


def richardson_lucy(kernel: np.ndarray) -> Restorer:
    """``restoration.richardson_lucy`` with the true kernel, ``num_iter`` iterations; the
    input clipped to [0, 1] first (its update needs non-negative values)."""
    from skimage.restoration import richardson_lucy as rl

    def run(x: np.ndarray, num_iter: float) -> np.ndarray:
        return _per_channel(np.clip(x, 0, 1), lambda p: rl(p, kernel, num_iter=int(num_iter),
                                                            clip=True), kernel.shape[0])
    return run


def wiener(kernel: np.ndarray) -> Restorer:
    """``restoration.wiener`` with the true kernel and regularisation weight ``balance``
    (its default Laplacian regulariser)."""
    from skimage.restoration import wiener as wiener_filter

    def run(x: np.ndarray, balance: float) -> np.ndarray:
        return _per_channel(x, lambda p: wiener_filter(p, kernel, balance, clip=True),
                            kernel.shape[0])
    return run


def unsupervised_wiener(kernel: np.ndarray) -> Restorer:
    """``restoration.unsupervised_wiener`` with the true kernel: its regularisation and noise
    levels are sampled (Gibbs sampler, ``rng=0``), so it has no free parameter."""
    from skimage.restoration import unsupervised_wiener as uw

    def run(x: np.ndarray, _: float) -> np.ndarray:
        return _per_channel(x, lambda p: uw(p, kernel, clip=True, rng=0)[0], kernel.shape[0])
    return run


def methods(protocol: Protocol) -> dict[str, tuple[Restorer, tuple[float, ...]]]:
    """The baselines of a task: name -> (restorer, grid of its free parameter; one value
    = not tuned)."""
    if protocol.task == "denoise":
        return {"denoise_nl_means": (nl_means, (0.4, 0.5, 0.6, 0.8, 1.0)),
                "denoise_wavelet": (wavelet, (0.0,)),
                "denoise_tv_chambolle": (tv, (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.14, 0.2,
                                                  0.28, 0.4, 0.56))}
    if protocol.task == "deblur":
        lv = protocol.level
        if "kernel" in lv:
            k = load_kernels("levin09")[int(str(lv["kernel"]).split(":")[1]) - 1].numpy()
        else:
            k = blur_kernel(int(lv["kernel_size"]), lv["sigma"], lv["sigma"], 0.0).numpy()
        return {"richardson_lucy": (richardson_lucy(k), (5, 10, 20, 30, 40, 60)),
                "wiener": (wiener(k), (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)),
                "unsupervised_wiener": (unsupervised_wiener(k), (0.0,))}
    if protocol.task == "jpeg":
        return {"denoise_tv_chambolle": (tv, (0.005, 0.01, 0.02, 0.03, 0.05, 0.08)),
                "denoise_wavelet": (wavelet, (0.0,))}
    raise SystemExit(f"no baselines for task {protocol.task}")


# -- running -----------------------------------------------------------------------------------
def to_numpy(x: torch.Tensor) -> np.ndarray:
    a = x.to(torch.float64).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def to_tensor(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
    return quantize(t[None] if t.dim() == 2 else t.permute(2, 0, 1))


class TuneSet(SRBenchmark):
    """The held-out tuning images: centre crops of the first BSD200 training images."""

    def __init__(self, folder: Path, n: int, size: int) -> None:
        super().__init__("bsd200_train", list_images(folder)[:n], 1, source=str(folder))
        self.size = size

    def sample(self, index: int) -> Any:
        from percepkit.data.benchmark_sets import Sample

        path = self.hr_paths[index]
        x = quantize(read_image(path, mode="keep"))
        h, w = x.shape[-2:]
        top, left = max(0, (h - self.size) // 2), max(0, (w - self.size) // 2)
        x = x[:, top:top + self.size, left:left + self.size].contiguous()
        return Sample(name=path.stem, hr=x, lr=x, path=path)


def score_set(ds: ProtocolSet, restorers: dict[str, tuple[Restorer, float | None]],
              metrics: dict, infos: list, limit: int | None) -> dict[str, dict[str, Any]]:
    """Mean scores of the input and of each restorer (at its chosen parameter) on ``ds``."""
    rows: dict[str, dict[str, Any]] = {}
    sums: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    n = min(len(ds), limit or len(ds))
    for i in range(n):
        sample = ds.sample(i)
        outputs = {"input": (lambda s=sample: quantize(s.lr.clamp(0, 1)))}
        for name, (fn, param) in restorers.items():
            outputs[name] = (lambda fn=fn, param=param, s=sample:
                             to_tensor(fn(to_numpy(s.lr), param)))
        for name, make in outputs.items():
            start = time.perf_counter()
            out = make()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            values = score_pair(metrics, infos, out, sample.hr)
            for k, v in values.items():
                sums.setdefault(name, {}).setdefault(k, []).append(float(v))
    for name, vals in sums.items():
        param = restorers[name][1] if name in restorers else None
        rows[name] = {"param": param, "images": n, "seconds_per_image": seconds[name] / n,
                      **{k: float(np.mean(v)) for k, v in vals.items()}}
    return rows


def tune(protocol: Protocol, tune_set: TuneSet, metrics: dict, infos: list
         ) -> dict[str, dict[str, Any]]:
    """Each baseline's parameter: the grid value with the best mean PSNR on the tuning set."""
    samples = [_tuning_sample(tune_set, protocol, i) for i in range(len(tune_set))]
    chosen = {}
    for name, (fn, grid) in methods(protocol).items():
        if len(grid) == 1:
            chosen[name] = {"param": grid[0], "tuned": False, "grid": {}}
            continue
        scores = {}
        for value in grid:
            vals = [score_pair(metrics, infos, to_tensor(fn(to_numpy(s.lr), value)), s.hr)["psnr"]
                    for s in samples]
            scores[value] = float(np.mean(vals))
        best = max(scores, key=lambda v: scores[v])
        chosen[name] = {"param": best, "tuned": True, "grid": scores}
    return chosen


def _tuning_sample(base: TuneSet, protocol: Protocol, i: int) -> Any:
    from percepkit.data.benchmark_sets import Sample

    s = base.sample(i)
    return Sample(s.name, s.hr, protocol.degrade(s.hr, s.name), s.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="denoise,deblur,jpeg")
    ap.add_argument("--levels", default=None,
                    help="only these levels: sigma, quality, gaussian or levin09:N")
    ap.add_argument("--levin", action="store_true",
                    help="deblur also with the 8 Levin et al. 2009 kernels (on Set5)")
    ap.add_argument("--sets", default=None, help="only these sets (default: the plan)")
    ap.add_argument("--limit", type=int, default=None, help="images per set (for a quick look)")
    ap.add_argument("--lpips", action="store_true", help="also LPIPS (AlexNet, whole image)")
    ap.add_argument("--tune-images", type=int, default=6)
    ap.add_argument("--tune-size", type=int, default=256)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None, help="also write the tables as Markdown")
    ap.add_argument("--append", action="store_true",
                    help="keep the results already in --json (a row measured again replaces its "
                         "old one); the machine record lists every run")
    args = ap.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    shared = Path(os.environ.get("PERCEPKIT_SHARED", "../shared"))
    tune_set = TuneSet(shared / "data" / "train" / "BSD200", args.tune_images, args.tune_size)
    only_levels = set(args.levels.split(",")) if args.levels else None
    only_sets = set(args.sets.split(",")) if args.sets else None
    import skimage

    result: dict[str, Any] = {
        "machine": {"cpu": device_name(torch.device("cpu")), "torch": torch.__version__,
                    "skimage": skimage.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "load_average_start": os.getloadavg()[0]},
        "tuning": {"set": f"{tune_set.source}: first {len(tune_set)} images, centre "
                          f"{args.tune_size}x{args.tune_size} crops",
                   "criterion": "mean PSNR under the protocol"},
        "results": []}
    if args.append and args.json.is_file():
        old = json.loads(args.json.read_text())
        result["results"] = old["results"]
        runs = old.get("runs", [old["machine"]])
        result["runs"] = [*runs, result["machine"]]
    for task in args.tasks.split(","):
        for level in task_levels(task, args.levin):
            tag = level_tag(level)
            if only_levels and tag not in only_levels:
                continue
            protocol = make_protocol(task, **level)
            names = ["psnr", "ssim"] + (["lpips"] if args.lpips else [])
            metrics, infos = build_metrics(names, extra=protocol.metric_specs(names))
            started = time.perf_counter()
            chosen = tune(protocol, tune_set, metrics, infos)
            print(f"{protocol.label}: tuned {({k: v['param'] for k, v in chosen.items()})} in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            restorers = {name: (fn, chosen[name]["param"])
                         for name, (fn, _) in methods(protocol).items()}
            for set_name, set_levels in PLAN[task]:
                if only_sets and set_name not in only_sets:
                    continue
                if set_levels is not None and tag not in set_levels:
                    continue
                ds = ProtocolSet(DATASETS.build({"name": set_name, "download": False}
                                                if set_name != "set5" else {"name": "set5"}),
                                 protocol)
                started = time.perf_counter()
                rows = score_set(ds, restorers, metrics, infos, args.limit)
                entry = {"task": task, "protocol": protocol.to_dict(), "set": set_name,
                         "tuning": chosen, "rows": rows,
                         "seconds": time.perf_counter() - started}
                result["results"] = [e for e in result["results"] if _key(e) != _key(entry)]
                result["results"].append(entry)
                result["results"].sort(key=_order)
                print(format_entry(entry), flush=True)
                result["machine"]["load_average_end"] = os.getloadavg()[0]
                write(args.json, json.dumps(result, indent=1))
                if args.md:
                    write(args.md, markdown(result))
    return 0


def _key(entry: dict) -> tuple:
    return entry["task"], json.dumps(entry["protocol"], sort_keys=True), entry["set"]


def _order(entry: dict) -> tuple:
    """Tasks in PLAN order, then level, then the set's place in the plan."""
    tasks = list(PLAN)
    sets = [name for name, _ in PLAN.get(entry["task"], [])]
    p = entry["protocol"]
    number = p.get("sigma", p.get("quality", 0))
    level = (1, p["kernel"]) if "kernel" in p else (0, f"{number:08.2f}")
    return (tasks.index(entry["task"]) if entry["task"] in tasks else 99, level,
            sets.index(entry["set"]) if entry["set"] in sets else 99)


def write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def format_entry(entry: dict) -> str:
    p = entry["protocol"]
    level = p.get("kernel", p.get("sigma", p.get("quality", "")))
    lines = [f"{entry['set']}: {entry['task']} {level} ({entry['seconds']:.0f} s)"]
    for name, row in entry["rows"].items():
        vals = " ".join(f"{k} {row[k]:.4f}" for k in ("psnr", "ssim", "lpips") if k in row)
        lines.append(f"  {name:22s} param={row['param']} {vals} "
                     f"({row['seconds_per_image']:.2f} s/image)")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """One table per task: a row per (set, level), a column group per method."""
    out = [f"Measured {result['machine']['date']} on {result['machine']['cpu']} (scikit-image "
           f"{result['machine']['skimage']}); tuning: {result['tuning']['set']}.", ""]
    by_task: dict[str, list[dict]] = {}
    for e in result["results"]:
        by_task.setdefault(e["task"], []).append(e)
    for task, entries in by_task.items():
        names = list(entries[0]["rows"])
        has_lpips = "lpips" in entries[0]["rows"]["input"]
        cell = "PSNR / SSIM" + (" / LPIPS" if has_lpips else "")
        out.append(f"**{task}** ({cell})")
        out.append("")
        out.append("| set | level | " + " | ".join(names) + " |")
        out.append("| --- | --- | " + " | ".join("---" for _ in names) + " |")
        for e in entries:
            p = e["protocol"]
            if task == "denoise":
                level = f"σ {p['sigma']:g}"
            elif task == "jpeg":
                level = f"q {p['quality']}"
            elif "kernel" in p:
                level = f"Levin k{p['kernel'].split(':')[1]}, noise {p['noise']:g}"
            else:
                level = f"Gaussian σ {p['sigma']:g}, noise {p['noise']:g}"
            cells = []
            for n in names:
                r = e["rows"][n]
                txt = f"{r['psnr']:.2f} / {r['ssim']:.4f}"
                if has_lpips:
                    txt += f" / {r['lpips']:.4f}"
                cells.append(txt)
            out.append(f"| {e['set']} ({e['rows']['input']['images']}) | {level} | "
                       + " | ".join(cells) + " |")
        out.append("")
        params = []
        for e in entries:
            p = e["protocol"]
            lv = p.get("kernel", p.get("sigma", p.get("quality")))
            for n, t in e["tuning"].items():
                item = f"{n} {t['param']:g}" + ("" if t["tuned"] else " (not tuned)")
                tag = f"{lv:g}: " if isinstance(lv, (int, float)) else f"{lv}: "
                if f"{tag}{item}" not in params:
                    params.append(f"{tag}{item}")
        out.append("Parameters (level: method value): " + "; ".join(params) + ".")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
