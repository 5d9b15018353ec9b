"""Build, measure and illustrate the model zoo (every number and image in docs/zoo.md).

Run from the repository root with the real VGG16/AlexNet weights and ../shared/data::

    export PERCEPKIT_WEIGHTS=../shared/weights PERCEPKIT_DATA=../shared/data/benchmarks
    python benchmarks/model_zoo.py package candy runs/candy        # -> percepkit/assets/models
    python benchmarks/model_zoo.py package sr_x4_pixel runs/sr_x4_pixel
    python benchmarks/model_zoo.py sr-table                       # eval --all of every SR model
    python benchmarks/model_zoo.py style-grids                    # docs/images/zoo/style_*.jpg
    python benchmarks/model_zoo.py sr-crops                       # docs/images/zoo/sr_x4_crops.jpg
    python benchmarks/model_zoo.py fig5 candy --iterations 200    # feed-forward vs L-BFGS

``package`` writes ``<name>.safetensors`` (weights only, the training recipe and a model card in
its metadata), ``<name>.md`` (the card as text) and the SHA-256 into ``manifest.json``. The card's
metrics are measured here: SR models with ``percepkit eval --all --model NAME`` (the command is
run as a subprocess, so the card holds exactly what users get), style models with the training
objective on the held-out content photos.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "percepkit" / "assets" / "models"
IMAGES = REPO / "docs" / "images" / "zoo"
SHARED = Path(os.environ.get("PERCEPKIT_SHARED", REPO.parent / "shared"))
CONTENT = SHARED / "data" / "content"
HELD_OUT_BSD100 = ("253027.png", "148026.png")  # textured BSD100 photos (never trained on)

STYLE_SOURCES = {  # style image -> (where it comes from, licence as stated there)
    "pytorch_examples": ("pytorch/examples fast_neural_style/images/style-images",
                         "repository BSD-3-Clause; nothing separate stated for the artwork"),
    "jcjohnson": ("jcjohnson/fast-neural-style images/styles",
                  "'free for personal or research use; for commercial use please contact me' "
                  "(repository README); nothing separate stated for the artwork"),
}


def _run_seconds(run: Path) -> float:
    """Training wall time: the last elapsed_sec of each session in log.csv."""
    total, last, previous_step = 0.0, 0.0, -1
    with open(run / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            step, elapsed = int(row["step"]), float(row["elapsed_sec"])
            if step <= previous_step or elapsed < last:  # a new session (resumed run)
                total += last
            last, previous_step = elapsed, step
    return total + last


def _checkpoint(run: Path) -> Path:
    """The newest step checkpoint of a run (the zoo ships the end of training, not 'best')."""
    steps = sorted((run / "checkpoints").glob("step_*.safetensors"))
    if not steps:
        sys.exit(f"{run}: no step checkpoints")
    return steps[-1]


def _eval_json(name: str, extra: list[str]) -> dict[str, Any]:
    out = REPO / f".zoo-eval-{name}.json"  # one per model: packages may run side by side
    cmd = ["percepkit", "eval", "--all", "--model", name, "--metrics", "psnr,ssim,lpips,dists",
           "--json", str(out), *extra]
    out.unlink(missing_ok=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    data = json.loads(out.read_text())
    out.unlink()
    return {s["name"]: {k: round(v, 4) for k, v in s["mean"].items()} for s in data["sets"]}


def _style_objective(name: str, size: int = 512) -> dict[str, Any]:
    """Mean training objective (and its terms) of the model on the held-out content photos;
    of each style for a multi-style model (``{style: {...}}``)."""
    from percepkit.data.images import list_images, read_image, resize_longer_side
    from percepkit.models.loader import load

    net, (loss, styles) = load(name), _loss_of(name)
    photos = [_mod4(resize_longer_side(read_image(p), size))[None] for p in list_images(CONTENT)]

    def objective(one: torch.nn.Module) -> dict[str, float]:
        rows = []
        with torch.no_grad():
            for x in photos:
                total, parts = loss(one(x), x)
                rows.append({"total": float(total), **{k: float(v) for k, v in parts.items()}})
        return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}

    if not getattr(net, "style_names", []):
        return objective(net)
    result = {}
    for style, image in zip(net.style_names, styles):
        loss.set_style(image[None])
        result[style] = objective(net.blend(style))
    return result


def _mod4(x: torch.Tensor) -> torch.Tensor:
    """Crop to multiples of 4 (the style net's stride), so output and input align."""
    return x[..., : x.shape[-2] // 4 * 4, : x.shape[-1] // 4 * 4]


def _loss_of(name: str) -> tuple[Any, list[torch.Tensor]]:
    """A zoo model's training loss (the first style's targets set) and its style images (from
    its recipe; one per style of a multi-style model, none for restoration)."""
    from percepkit.models.checkpoint import read_metadata
    from percepkit.models.loader import resolve
    from percepkit.recipes.recipe import parse_yaml, recipe_from_mapping
    from percepkit.train import load_style_image
    from percepkit.train.tasks import task_class

    recipe = recipe_from_mapping(parse_yaml(read_metadata(resolve(name).path)["recipe"]), name)
    loss = recipe.build_loss()
    if "style_image" not in task_class(recipe.task).required_data:
        return loss, []
    paths = recipe.data.style_image
    styles = [load_style_image(p, recipe.data.style_size)[0]
              for p in (paths if isinstance(paths, list) else [paths])]
    loss.set_style(styles[0][None])
    return loss, styles


def package(name: str, run: Path, threads: int = 1) -> None:
    """Package a finished run as a zoo model, measure it, write its card and manifest entry
    (``threads``: the OMP_NUM_THREADS the run was trained with, for the card)."""
    from percepkit.models.checkpoint import Checkpoint, read_metadata
    from percepkit.models.zoo import ZooModel
    from percepkit.models.zoo import package as write_model
    from percepkit.recipes.recipe import parse_yaml, recipe_from_mapping
    from percepkit.registry import MODELS
    from percepkit.train.tasks import task_class

    ckpt = _checkpoint(run)
    meta = read_metadata(ckpt)
    task = meta["task"]
    net = meta["transform"]["name"]
    weights = Checkpoint.read(ckpt).weights()
    size = f"{sum(v.numel() for v in weights.values()) / 1e6:.2f}M parameters"
    seconds = _run_seconds(run)
    recipe_file = f"recipes/zoo/{name}.yaml"
    card: dict[str, Any] = {
        "recipe_file": recipe_file, "steps": meta["step"], "batch_size": meta["batch_size"],
        "train_seconds": round(seconds), "threads": threads,
        "machine": f"2-core x86_64 CPU, no GPU, {meta.get('precision', 'fp32')}, "
                   f"{'one thread' if threads == 1 else f'{threads} threads'} "
                   f"(OMP_NUM_THREADS={threads}), the cores shared with other trainings and "
                   "development work (the time is an upper bound)",
        "reproduce": f"OMP_NUM_THREADS={threads} percepkit train {recipe_file} --out runs/{name}",
    }
    recipe = meta["recipe"]
    cls = task_class(task)
    if "style_image" in cls.required_data:
        paths = parse_yaml(recipe)["data"]["style_image"]
        paths = paths if isinstance(paths, list) else [paths]
        source = next(v for k, v in STYLE_SOURCES.items() if f"/{k}/" in paths[0])
        card.update(style_image=", ".join(Path(p).name for p in paths), style_source=source[0],
                    license=source[1],
                    data="random 128x128 crops of the 200 BSDS300 training photos")
        quoted = " and ".join(f"'{Path(p).stem}'" for p in paths)
        summary = f"{quoted} style{'s, blendable' if len(paths) > 1 else ''} ({net}, {size})"
    else:
        patch = parse_yaml(recipe)["data"]["train"].get("patch_size", 96)
        card.update(data=f"random {patch}x{patch} crops of the 200 BSDS300 training photos; "
                         f"input as the {task} protocol makes it ({cls.protocol_summary})",
                    license="MIT (weights trained by us)")
        loss = " + ".join(recipe_from_mapping(parse_yaml(recipe), name).loss_terms)
        what = f"x{meta['transform']['scale']} SR" if cls.uses_scale else cls.title
        variant = f"{net} skip variant" if net == "johnson_sr" else f"{net}, {size}"
        summary = f"{what}, {loss}; {variant}"

    out = MODELS_DIR / f"{name}.safetensors"
    manifest_path = MODELS_DIR / "manifest.json"

    def register(sha: str) -> None:  # read when written: another package may have run since
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        manifest[name] = {"file": out.name, "sha256": sha, "task": task, "summary": summary}
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        MODELS.add(ZooModel(name, out.name, sha, task, summary), name, override=True)

    register(write_model(ckpt, out, card))  # first without metrics, so eval finds it by name
    if cls.protocol is not None:  # a benchmark protocol: eval --all
        card["metrics"] = _eval_json(name, ["--task", task])
        s5 = card["metrics"]["set5"]
        level = f"x{meta['transform']['scale']}" if cls.uses_scale else task
        card["headline"] = (f"Set5 {level}: PSNR {s5['psnr']:.2f} dB, SSIM {s5['ssim']:.4f}, "
                            f"LPIPS {s5.get('lpips', float('nan')):.4f}")
        if "feature" in recipe:
            card["metrics_histogram_matched"] = _eval_json(name, ["--task", task,
                                                                  "--match-histogram"])
    else:
        card["objective_512px"] = _style_objective(name)
        objectives = card["objective_512px"]
        per_style = objectives if "total" not in objectives else {"": objectives}
        card["headline"] = "objective on held-out photos (512 px): " + "; ".join(
            f"{style + ' ' if style else ''}{o['total']:.2f} (content {o['feature']:.2f}, "
            f"style {o['style']:.2f})" for style, o in per_style.items())
    sha = write_model(ckpt, out, card)
    register(sha)
    (MODELS_DIR / f"{name}.md").write_text(_card_text(name, summary, card, sha, recipe))
    print(f"{name}: {out} ({out.stat().st_size / 1e6:.2f} MB) sha256 {sha}")
    print(f"  {card['headline']}")


def _card_text(name: str, summary: str, card: dict[str, Any], sha: str, recipe: str) -> str:
    lines = [f"# Model card: {name}", "", summary, "",
             "| field | value |", "| --- | --- |"]
    for key in ("recipe_file", "data", "steps", "batch_size", "train_seconds", "machine",
                "style_image", "style_source", "license", "headline", "reproduce"):
        if key in card:
            lines.append(f"| {key} | {card[key]} |")
    lines.append(f"| sha256 | `{sha}` |")
    for key in ("metrics", "metrics_histogram_matched", "objective_512px"):
        if key in card:
            lines += ["", f"{key}:", "", "```json", json.dumps(card[key], indent=2), "```"]
    lines += ["", "Recipe (also in the file's metadata):", "", "```yaml", recipe.rstrip(), "```",
              ""]
    return "\n".join(lines)


def sr_table() -> None:
    """The x4 table of docs/zoo.md: bicubic (measured now) and every SR model on
    Set5/Set14/BSD100 (Y): its card's metrics, which ``package`` measured with the same
    ``percepkit eval --all``, or measured now where the card predates a metric (DISTS)."""
    from percepkit.registry import MODELS

    rows = [("bicubic", _eval_json("bicubic", []))]
    for entry in MODELS.entries():
        if entry.obj.task == "sr":
            card = entry.obj.card()
            complete = all("dists" in m for m in card["metrics"].values())
            rows.append((entry.name, card["metrics"] if complete else _eval_json(entry.name, [])))
            if "metrics_histogram_matched" in card:
                rows.append((f"{entry.name} + histogram matching",
                             card["metrics_histogram_matched"]))
    print("| model | " + " | ".join(f"{s} PSNR / SSIM / LPIPS / DISTS" for s in rows[0][1])
          + " |")
    print("| --- |" + " --- |" * len(rows[0][1]))
    for label, sets in rows:
        cells = [f"{m['psnr']:.2f} / {m['ssim']:.4f} / {m['lpips']:.4f} / "
                 + (f"{m['dists']:.4f}" if "dists" in m else "–") for m in sets.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")


def style_grids(size: int = 512, names: list[str] | None = None) -> None:
    """content | style | output for the three content photos, one grid per style model (or
    per model in ``names``)."""
    from PIL import Image

    from percepkit.data.images import (
        image_grid,
        list_images,
        read_image,
        resize_longer_side,
        stack_rows,
        write_image,
    )
    from percepkit.inference import Predictor
    from percepkit.registry import MODELS
    from percepkit.train import load_style_image

    IMAGES.mkdir(parents=True, exist_ok=True)
    photos = [resize_longer_side(read_image(p), size) for p in list_images(CONTENT)]
    for entry in MODELS.entries():
        if entry.obj.task != "style" or (names and entry.name not in names):
            continue
        card = entry.obj.card()
        styles = [next(SHARED / "data" / "styles" / k / f for k in STYLE_SOURCES
                       if (SHARED / "data" / "styles" / k / f).is_file())
                  for f in card["style_image"].split(", ")]
        net = entry.obj()
        names = getattr(net, "style_names", [])
        # a multi-style model: first style, the half-and-half blend, second style
        mixes = [names[0], f"{names[0]}:0.5,{names[1]}:0.5", names[1]] if names else [None]
        predictors = [Predictor(net.blend(m) if m else net, "cpu") for m in mixes]
        rows = []
        for p in photos:  # photos and outputs unscaled
            shown = [load_style_image(str(s), p.shape[-2])[0] for s in styles]
            rows.append(image_grid([p, shown[0], *(pr(p) for pr in predictors), *shown[1:]],
                                   height=p.shape[-2]))
        out = write_image(IMAGES / f"style_{entry.name}.jpg", stack_rows(rows))
        with Image.open(out) as im:  # quality 85 halves the files; no visible difference
            im.load()
        im.save(out, quality=85)
        print(f"wrote {out}")


def sr_crops(crop: int = 96) -> None:
    """bicubic | l_pixel | l_feat | l_feat + GAN | HR crops (x4) of textured Set14/BSD100 images."""
    from percepkit.data.benchmark_sets import quantize
    from percepkit.data.images import image_grid, read_image, stack_rows, write_image
    from percepkit.data.imresize import imresize, mod_crop
    from percepkit.evaluation.evaluate import detail_box
    from percepkit.models.loader import load

    bench = SHARED / "data" / "benchmarks"
    names = [bench / "Set14" / "baboon.png", bench / "Set14" / "zebra.png",
             *[bench / "BSD100" / n for n in HELD_OUT_BSD100]]
    nets = {"l_pixel": load("sr_x4_pixel"), "l_feat": load("sr_x4_feat"),
            "l_feat + GAN": load("sr_x4_gan")}
    rows = []
    with torch.inference_mode():
        for path in names:
            hr = mod_crop(read_image(path), 4)
            lr = quantize(imresize(hr.double(), scale=0.25).float())
            outs = [quantize(imresize(lr.double(), scale=4).float())]
            outs += [quantize(net(lr[None])[0]) for net in nets.values()]
            outs.append(hr)
            top, left = detail_box(hr, crop)
            tiles = [o[:, top:top + crop, left:left + crop] for o in outs]
            rows.append(image_grid(tiles, labels=[f"bicubic ({path.stem})", *nets, "HR"],
                                   height=crop * 2))
    IMAGES.mkdir(parents=True, exist_ok=True)
    write_image(IMAGES / "sr_x4_crops.png", stack_rows(rows))
    print(f"wrote {IMAGES / 'sr_x4_crops.png'}")


def fig5(name: str, iterations: int, size: int, init: str = "random", project: bool = True) -> None:
    """The paper's Fig. 5: the feed-forward net's objective vs L-BFGS on the same objective.

    The paper's baseline (the defaults): L-BFGS "initialized with white noise" as its author's
    neural-style does it (the ImageNet mean plus faint noise), the pixels clipped to [0, 1]
    after every update ("projected L-BFGS"). ``init="content", project=False`` starts from the
    photo instead, unclipped: a much shorter way to the same objective. The file names say
    which: ``fig5_<name>_<size>[_<init> unless random][_unprojected]``.
    """
    from percepkit.data.images import read_image, resize_longer_side
    from percepkit.inference.gatys import stylize
    from percepkit.models.loader import load

    bench = SHARED / "data" / "benchmarks" / "BSD100"
    photos = [*sorted(CONTENT.glob("*.jpg")), *[bench / n for n in HELD_OUT_BSD100]]
    net, (loss, styles) = load(name), _loss_of(name)
    style = styles[0]
    results = []
    for path in photos:
        x = _mod4(resize_longer_side(read_image(path), size))
        with torch.no_grad():
            t0 = time.perf_counter()
            y = net(x[None])
            ff_seconds = time.perf_counter() - t0
            ff = float(loss(y, x[None])[0])
        res = stylize(x, style, loss, iterations=iterations, init=init, project=project)
        reached = next((i + 1 for i, v in enumerate(res.history) if v <= ff), None)
        results.append({"image": path.name, "size": list(x.shape[-2:]), "init": init,
                        "projected": project, "feed_forward": ff,
                        "feed_forward_seconds": ff_seconds, "lbfgs": res.history,
                        "lbfgs_seconds": res.seconds, "reached_at": reached})
        print(f"{path.name}: feed-forward {ff:.3f} in {ff_seconds:.2f} s; L-BFGS "
              f"{res.history[0]:.1f} -> {res.history[-1]:.3f} after {len(res.history)} "
              f"iterations ({res.seconds:.0f} s); reaches the feed-forward loss at "
              f"{reached or f'> {iterations}'}")
    stem = (f"fig5_{name}_{size}" + ("" if init == "random" else f"_{init}")
            + ("" if project else "_unprojected"))
    out = REPO / "docs" / "data" / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    _plot_fig5(results, name, size, stem)
    print(f"wrote {out}")


def _plot_fig5(results: list[dict[str, Any]], name: str, size: int, stem: str) -> None:
    """A small line plot (PIL only): L-BFGS curves and the feed-forward levels."""
    from PIL import Image, ImageDraw

    width, height, pad = 720, 420, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    curves = [r["lbfgs"] for r in results]
    n = max(len(c) for c in curves)
    top = max(c[0] for c in curves) * 1.1  # L-BFGS's overshoots (no line search) run off the top
    low = min(min(min(c) for c in curves), min(r["feed_forward"] for r in results)) * 0.9

    def xy(i: float, v: float) -> tuple[float, float]:
        v = min(max(v, low), top)
        return (pad + (width - 2 * pad) * i / max(1, n - 1),
                height - pad - (height - 2 * pad) * (v - low) / (top - low))

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for r, color in zip(results, colors):
        draw.line([xy(i, v) for i, v in enumerate(r["lbfgs"])], fill=color, width=2)
        y = xy(0, r["feed_forward"])[1]
        for x0 in range(pad, width - pad, 12):
            draw.line([(x0, y), (x0 + 6, y)], fill=color, width=2)
    draw.rectangle([width - pad - 178, pad + 104, width - pad - 2, pad + 116 + 14 * len(results)],
                   fill="white", outline="#999999")
    for k, (r, color) in enumerate(zip(results, colors)):  # legend
        y = pad + 110 + 14 * k
        draw.line([(width - pad - 170, y + 6), (width - pad - 150, y + 6)], fill=color, width=3)
        draw.text((width - pad - 145, y), f"{r['image']} (net {r['feed_forward']:.2f})",
                  fill="black")
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    start = {"random": "neural-style's noise", "noise": "uniform noise"}.get(results[0]["init"],
                                                                           "the photo")
    draw.text((pad, 15), f"{name}, {size} px: joint objective of L-BFGS from {start} (solid) "
                         f"vs the feed-forward net (dashed)", fill="black")
    for i in range(0, n, max(1, n // 5)):
        draw.text((xy(i, low)[0] - 5, height - pad + 5), str(i + 1), fill="black")
    draw.text((width // 2 - 30, height - 20), "L-BFGS iteration", fill="black")
    for frac in (0, 0.5, 1):
        v = low + frac * (top - low)
        draw.text((5, xy(0, v)[1] - 6), f"{v:.1f}", fill="black")
    IMAGES.mkdir(parents=True, exist_ok=True)
    img.save(IMAGES / f"{stem}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("package")
    p.add_argument("name")
    p.add_argument("run", type=Path)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the run (card)")
    sub.add_parser("sr-table")
    g = sub.add_parser("style-grids")
    g.add_argument("names", nargs="*", help="only these models (default: every style model)")
    sub.add_parser("sr-crops")
    f = sub.add_parser("fig5")
    f.add_argument("name")
    f.add_argument("--iterations", type=int, default=200)
    f.add_argument("--size", type=int, default=256)
    f.add_argument("--init", choices=["random", "noise", "content"], default="random",
                   help="L-BFGS start: neural-style's white noise (the paper's baseline), "
                        "uniform noise, or the photo")
    f.add_argument("--no-project", dest="project", action="store_false",
                   help="do not clip the pixels to [0, 1] after every L-BFGS update")
    args = parser.parse_args()
    if args.cmd == "package":
        package(args.name, args.run, args.threads)
    elif args.cmd == "sr-table":
        sr_table()
    elif args.cmd == "style-grids":
        style_grids(names=args.names)
    elif args.cmd == "sr-crops":
        sr_crops()
    else:
        fig5(args.name, args.iterations, args.size, args.init, args.project)


if __name__ == "__main__":
    main()
