"""The CPU demonstrations of the restoration tasks (docs/tasks.md): an l_pixel and an
l_pixel + l_feat model of one task scored on a benchmark set exactly as ``percepkit eval --task``
scores them, beside the degraded input and the scikit-image baselines (their rows, tuned
parameters included, from ``restoration_baselines.py``'s JSON), and a grid of crops that shows
them side by side.

Usage (docs/tasks.md has our numbers)::

    python benchmarks/restoration_demos.py denoise --level sigma=25 \\
        --pixel runs/demos/denoise_sigma25 --feat runs/demos/denoise_sigma25_feat \\
        --json benchmarks/results/DATE-restoration_demos-denoise.json \\
        --grid docs/images/tasks/denoise_sigma25.jpg

``--pixel`` / ``--feat`` take a run directory (its ``checkpoints/best.safetensors``: chosen by
PSNR for the pixel recipe, by LPIPS for the feat one) or a checkpoint file. The grid shows, per
image, a crop of: the degraded input | the best baseline by PSNR | l_pixel | l_pixel + l_feat |
the clean image, enlarged 2x (nearest) so that the pixels stay visible.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import restoration_baselines as rb  # noqa: E402  (the baselines' restorers and tuned values)

from percepkit.data.images import (  # noqa: E402
    image_grid,
    quantize,
    read_image,
    stack_rows,
    write_image,
)
from percepkit.evaluation.protocols import make_protocol  # noqa: E402
from percepkit.registry import DATASETS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASELINES = REPO / "benchmarks" / "results" / "2026-12-03-restoration_baselines-amd-epyc.json"


def checkpoint(path: Path) -> Path:
    """A run directory's best checkpoint, or the file itself."""
    return path / "checkpoints" / "best.safetensors" if path.is_dir() else path


def parse_level(items: list[str]) -> dict[str, Any]:
    """``["sigma=25"]`` -> ``{"sigma": 25.0}`` (numbers where they are numbers)."""
    level: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            level[key] = float(value) if "." in value else int(value)
        except ValueError:
            level[key] = value
    return level


def score_model(task: str, level: dict[str, Any], set_name: str, ckpt: Path
                ) -> dict[str, float]:
    """Mean PSNR/SSIM/LPIPS of a checkpoint from ``percepkit eval --task`` (its own numbers)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = ["percepkit", "eval", "--task", task, f"--{set_name}", "--checkpoint", str(ckpt),
               "--metrics", "psnr,ssim,lpips", "--json", str(out)]
        for key, value in level.items():
            cmd += [f"--{key}", str(value)]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    # the protocol's channel is in the key (psnr_rgb, ssim_y); the baselines' rows say psnr
    return {k.removesuffix("_rgb").removesuffix("_y"): float(v)
            for k, v in data["sets"][0]["mean"].items()}


def baseline_rows(task: str, set_name: str, protocol_level: dict[str, Any]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The input and baseline rows of ``restoration_baselines.py`` for this task, set and level,
    and their tuning record (the parameter each baseline uses)."""
    results = json.loads(BASELINES.read_text())["results"]
    for entry in results:
        level = {k: entry["protocol"].get(k) for k in protocol_level}
        if entry["task"] == task and entry["set"] == set_name and level == protocol_level:
            return entry["rows"], entry["tuning"]
    raise SystemExit(f"{BASELINES.name} has no {task} {protocol_level} rows for {set_name}; "
                     f"run benchmarks/restoration_baselines.py for them first")


def grid(task: str, level: dict[str, Any], set_name: str, nets: dict[str, torch.nn.Module],
         baseline: tuple[str, Any], images: list[str], crop: int, path: Path) -> Path:
    """Crops of input | best baseline | models | clean for each named image of the set."""
    protocol = make_protocol(task, **level)
    restore = rb.methods(protocol)[baseline[0]][0]
    dataset = DATASETS.build({"name": set_name, "scale": 1})
    paths = {p.stem: p for p in dataset.hr_paths}
    rows = []
    for stem in images:
        clean = quantize(read_image(paths[stem], mode="keep"))
        degraded = protocol.degrade(clean, stem)
        outputs = [rb.to_tensor(restore(rb.to_numpy(degraded), baseline[1]))]
        with torch.inference_mode():
            for net in nets.values():
                outputs.append(quantize(net(degraded[None])[0]))
        h, w = clean.shape[-2:]
        top, left = (h - crop) // 2, (w - crop) // 2
        tiles = [t[..., top:top + crop, left:left + crop].clamp(0, 1)
                 for t in (degraded, *outputs, clean)]
        labels = [f"{stem}: input", baseline[0], *nets, "clean"]
        rows.append(image_grid(tiles, labels, height=2 * crop))
    return write_image(path, stack_rows(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["denoise", "deblur", "jpeg"])
    parser.add_argument("--level", nargs="*", default=[], help="protocol level: sigma=25, ...")
    parser.add_argument("--pixel", type=Path, required=True)
    parser.add_argument("--feat", type=Path, required=True)
    parser.add_argument("--set", default="bsd100")
    parser.add_argument("--images", nargs="*", default=["119082", "302008"],
                        help="image stems of the grid")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None)
    args = parser.parse_args()
    level = parse_level(args.level)
    protocol = make_protocol(args.task, **level)
    rows_in, tuning = baseline_rows(args.task, args.set, dict(protocol.level))
    models = {"l_pixel": checkpoint(args.pixel), "l_pixel + l_feat": checkpoint(args.feat)}
    rows: dict[str, dict[str, Any]] = {name: dict(row) for name, row in rows_in.items()}
    for name, ckpt in models.items():
        rows[name] = {**score_model(args.task, level, args.set, ckpt),
                      "checkpoint": str(ckpt)}
    print(f"{protocol.label} on {args.set}: PSNR / SSIM / LPIPS\n")
    print("| method | parameter | PSNR | SSIM | LPIPS |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        param = tuning.get(name, {}).get("param", "")
        print(f"| {name} | {param} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
              f"{row['lpips']:.4f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"protocol": protocol.label, "set": args.set,
                                         "rows": rows}, indent=2) + "\n")
    if args.grid:
        import percepkit

        classical = [n for n in rows_in if n != "input"]
        best = max(classical, key=lambda n: rows_in[n]["psnr"])
        nets = {name: percepkit.load(str(ckpt)).eval() for name, ckpt in models.items()}
        out = grid(args.task, level, args.set, nets, (best, tuning[best]["param"]),
                   args.images, args.crop, args.grid)
        print(f"\ngrid: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
