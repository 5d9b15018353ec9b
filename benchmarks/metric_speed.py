"""Speed of percepkit's PSNR/SSIM evaluation vs BasicSR-style numpy metric code, same images.

Usage (2 CPU cores in our measurements; see docs/evaluation.md)::

    python benchmarks/metric_speed.py --data-dir ../shared/data/benchmarks [--scale 4]

It evaluates bicubic on Set5 + Set14 + BSD100 and times:

1. ``percepkit`` end to end: read PNGs, mod-crop, MATLAB bicubic down/up, 8-bit rounding,
   PSNR + SSIM on Y (``percepkit.evaluation.evaluate.evaluate``);
2. the metric step alone on identical uint8 outputs, percepkit (torch, float64);
3. the same metric step written the way BasicSR's ``calculate_psnr``/``calculate_ssim``
   (``test_y_channel=True``) are: per image, numpy float64, ``cv2.filter2D`` for the Gaussian
   window (without OpenCV: the separable form, two ``scipy.ndimage.correlate1d`` passes; the
   output says which).

Both metric implementations must agree to 1e-6 dB / 1e-6 SSIM, or the script fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from percepkit.bench.speed_table import PeakMemory
from percepkit.data.benchmark_sets import hr_folder, quantize
from percepkit.data.images import to_uint8
from percepkit.data.imresize import imresize
from percepkit.evaluation.evaluate import build_metrics, evaluate, score_pair

try:  # BasicSR uses OpenCV for the SSIM window
    import cv2

    def _filter(img: np.ndarray, window: np.ndarray) -> np.ndarray:
        return cv2.filter2D(img, -1, window)

    FILTER = f"cv2.filter2D (OpenCV {cv2.__version__})"
except ImportError:  # pragma: no cover - depends on the environment
    from scipy.ndimage import correlate1d

    def _filter(img: np.ndarray, window: np.ndarray) -> np.ndarray:
        # the 11x11 Gaussian window is the outer product of one 1-D Gaussian: two 1-D passes
        g = window[window.shape[0] // 2] / window[window.shape[0] // 2].sum()
        return correlate1d(correlate1d(img, g, axis=0, mode="reflect"), g, axis=1,
                           mode="reflect")

    FILTER = "scipy.ndimage.correlate1d, separable, float64 (OpenCV not installed)"


# -- BasicSR-style reference (numpy, one image at a time, HWC uint8 in [0, 255]) --------------
def _to_y(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        x = img.astype(np.float32) / 255.0
        y = np.dot(x, [65.481, 128.553, 24.966]) + 16.0  # RGB order
        return (y * 1.0)[..., None]
    return img[..., None] if img.ndim == 2 else img


def basicsr_psnr(img: np.ndarray, img2: np.ndarray, crop: int) -> float:
    img, img2 = img[crop:-crop, crop:-crop], img2[crop:-crop, crop:-crop]
    a, b = _to_y(img).astype(np.float64), _to_y(img2).astype(np.float64)
    if img.ndim == 2 or img.shape[-1] == 1:
        a, b = a.astype(np.float64), b.astype(np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 * 255.0 / mse)


def _ssim_plane(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1 = _filter(a, window)[5:-5, 5:-5]
    mu2 = _filter(b, window)[5:-5, 5:-5]
    s1 = _filter(a * a, window)[5:-5, 5:-5] - mu1**2
    s2 = _filter(b * b, window)[5:-5, 5:-5] - mu2**2
    s12 = _filter(a * b, window)[5:-5, 5:-5] - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def basicsr_ssim(img: np.ndarray, img2: np.ndarray, crop: int) -> float:
    img, img2 = img[crop:-crop, crop:-crop], img2[crop:-crop, crop:-crop]
    a, b = _to_y(img).astype(np.float64), _to_y(img2).astype(np.float64)
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)
    return float(np.mean([_ssim_plane(a[..., i], b[..., i], window) for i in range(a.shape[2])]))


def _sets(data_dir: Path, scale: int) -> list:
    return [hr_folder(str(data_dir / name), scale=scale, name=name)
            for name in ("Set5", "Set14", "BSD100")]


def main() -> int:
    default = os.environ.get("PERCEPKIT_DATA") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(default))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="best of N runs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    datasets = _sets(args.data_dir, args.scale)
    n = sum(len(d) for d in datasets)
    metrics, infos = build_metrics(["psnr", "ssim"], crop_border=args.scale)

    def bicubic(x: torch.Tensor) -> torch.Tensor:
        return imresize(x, scale=args.scale)

    pairs = []  # identical uint8 inputs for both metric implementations
    for ds in datasets:
        for i in range(len(ds)):
            s = ds.sample(i)
            sr = quantize(imresize(s.lr.double()[None], scale=args.scale)[0]).float()
            pairs.append((sr, s.hr, to_uint8(sr), to_uint8(s.hr)))

    def ours() -> list[tuple[float, float]]:  # the engine's scoring path
        with torch.inference_mode():
            return [tuple(score_pair(metrics, infos, sr, hr).values()) for sr, hr, _, _ in pairs]

    def reference() -> list[tuple[float, float]]:
        return [(basicsr_psnr(a, b, args.scale), basicsr_ssim(a, b, args.scale))
                for _, _, a, b in pairs]

    # interleaved, so that load from other processes hits all three alike
    times: dict[str, list[float]] = {"end to end": [], "percepkit": [], "basicsr-style": []}
    peak = dict.fromkeys(times, 0.0)  # MB, the process while each ran
    values = {}
    for _ in range(args.repeat):
        with PeakMemory() as mem:
            result = evaluate(bicubic, datasets, metrics, infos, model_name="bicubic")
        times["end to end"].append(result.seconds)
        peak["end to end"] = max(peak["end to end"], mem.mb)
        for name, fn in (("percepkit", ours), ("basicsr-style", reference)):
            with PeakMemory() as mem:
                t = time.perf_counter()
                values[name] = fn()
                times[name].append(time.perf_counter() - t)
            peak[name] = max(peak[name], mem.mb)
    means = {s.name: (s.mean("psnr"), s.mean("ssim")) for s in result.sets}
    diff_p = max(abs(a[0] - b[0]) for a, b in zip(values["percepkit"], values["basicsr-style"],
                                                 strict=True))
    diff_s = max(abs(a[1] - b[1]) for a, b in zip(values["percepkit"], values["basicsr-style"],
                                                 strict=True))

    print(f"{n} images, x{args.scale}, torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs; best (median) of {args.repeat} runs; peak resident memory of "
          f"the process while each ran")
    for name, (ps, ss) in means.items():
        print(f"  bicubic {name:7s} PSNR {ps:.4f}  SSIM {ss:.4f}")
    labels = {"end to end": "percepkit end to end (read + LR + bicubic + PSNR + SSIM)",
              "percepkit": "metrics only, percepkit (torch)",
              "basicsr-style": "metrics only, BasicSR-style numpy"}
    for name, runs in times.items():
        print(f"{labels[name]:58s}: {min(runs):6.2f} s (median {statistics.median(runs):.2f}), "
              f"{peak[name]:.0f} MB")
    print(f"metric step, numpy / percepkit: "
          f"{min(times['basicsr-style']) / min(times['percepkit']):.2f}x")
    print(f"reference filter: {FILTER}")
    print(f"max |difference| percepkit vs basicsr-style: PSNR {diff_p:.2e} dB, SSIM {diff_s:.2e}")
    return 0 if diff_p < 1e-6 and diff_s < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
