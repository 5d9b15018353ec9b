"""Artifact scores of the model zoo (the 'Artifact scores' section of docs/zoo.md).

Run from the repository root with the benchmark images of ../shared/data::

    export PERCEPKIT_DATA=../shared/data/benchmarks
    python benchmarks/artifact_scores.py                  # both tables (Markdown, stdout)
    python benchmarks/artifact_scores.py sr               # SR models on Set5, Set14, BSD100
    python benchmarks/artifact_scores.py style --image    # style models on BSD100 photos, and
                                                          # docs/images/zoo/blobs_styles.jpg

SR: ``grid`` at period 4 and ``blobs`` of the x4 outputs exactly as ``percepkit eval`` scores
them (8-bit outputs of the MATLAB-bicubic LR; ``percepkit eval --set5 --set14 --model NAME
--metrics grid,blobs --per-image`` gives the same values), with the HR images' own grid as the
calibration. Style: the outputs of the zoo's style models at the photos' size (480x320, as
``percepkit stylize`` makes them, rounded to 8 bits), ``blobs`` against the content photo and
``grid`` at period 4, with the photos' own grid. All numbers are deterministic (CPU, float32
networks, float64 metrics): machine-independent up to the last digit shown.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images" / "zoo"
BENCH = Path(os.environ.get("PERCEPKIT_DATA", REPO.parent / "shared" / "data" / "benchmarks"))
#: held-out BSD100 photos (never trained on) with flat regions: sky, walls, tarmac
STYLE_PHOTOS = ("3096", "14037", "21077", "37073", "42049", "69020", "86000", "210088")
STYLES = ("candy", "mosaic", "starry_night", "udnie", "the_scream", "rain_princess", "wave",
          "la_muse", "feathers", "composition_vii", "candy_lite", "multi@candy",
          "multi@candy:0.5,mosaic:0.5", "multi@mosaic")
"""Zoo names or checkpoint files; ``NAME@MIX`` is a multi-style model at a ``--style`` mix."""
#: the photos of the blob illustration
IMAGE_PHOTOS = ("3096", "42049")


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else \
        f"{format(lo, fmt)}–{format(hi, fmt)}"


def sr_table() -> str:
    """grid (period 4) and blobs of bicubic and every SR zoo model on Set5, Set14 and BSD100
    (x4)."""
    import percepkit
    from percepkit.evaluation.evaluate import run_transform
    from percepkit.metrics import Blobs, Grid
    from percepkit.nets.transforms import Bicubic
    from percepkit.registry import DATASETS, MODELS

    grid, blobs = Grid(period=4), Blobs()
    cpu = torch.device("cpu")
    models = {"bicubic": Bicubic(4), **{e.name: percepkit.load(e.name) for e in MODELS.entries()
                                        if e.obj.task == "sr"}}
    lines = ["| model | set | grid (levels, min–max) | grid mean | blobs (%, max) |",
             "| --- | --- | --- | --- | --- |"]
    for key in ("set5", "set14", "bsd100"):
        spec = {"name": key, "scale": 4} if key == "set5" else \
            {"name": key, "scale": 4, "root": str(BENCH), "download": False}
        ds = DATASETS.build(spec)
        samples = [ds.sample(i) for i in range(len(ds))]
        rows: dict[str, tuple[list[float], list[float]]] = {}
        rows["HR (calibration)"] = ([float(grid(s.hr[None], s.hr[None])[0]) for s in samples],
                                    [0.0])
        for name, model in models.items():
            g, b = [], []
            with torch.inference_mode():
                for s in samples:
                    out = run_transform(model, s.lr, cpu)
                    g.append(float(grid(out[None], s.hr[None])[0]))
                    b.append(float(blobs(out[None], s.hr[None])[0]))
            rows[name] = (g, b)
        label = {"set5": "Set5", "set14": "Set14", "bsd100": "BSD100"}[key]
        for name, (g, b) in rows.items():
            blob = "—" if name.startswith("HR") else format(max(b), ".3f")
            lines.append(f"| {name} | {label} | {_span(g, '.2f')} | "
                         f"{sum(g) / len(g):.2f} | {blob} |")
    return "\n".join(lines)


def _network(name: str) -> torch.nn.Module:
    """The network of ``name`` (a zoo name or checkpoint file, ``@MIX`` for a style mix)."""
    import percepkit

    base, _, mix = name.partition("@")
    net = percepkit.load(base)
    return net.blend(mix) if mix else net


def _label(name: str) -> str:
    return name if "@" in name else Path(name).stem


def _stylised(names: tuple[str, ...], photos: tuple[str, ...]
              ) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
    """The content photos and every model's 8-bit output of each."""
    from percepkit.data.images import quantize, read_image
    from percepkit.inference.predictor import Predictor

    contents = {p: read_image(BENCH / "BSD100" / f"{p}.png") for p in photos}
    outs = {}
    for name in names:
        predictor = Predictor(_network(name), "cpu")
        for p, x in contents.items():
            outs[(name, p)] = quantize(predictor(x))
    return contents, outs


def palette_distance(image: torch.Tensor, painting: torch.Tensor, bins: int = 8) -> float:
    """Hellinger distance (0 = same colours, 1 = none shared) between the RGB histograms
    (``bins`` levels per channel) of two (3, H, W) images in [0, 1]."""
    def histogram(x: torch.Tensor) -> torch.Tensor:
        q = (x.clamp(0, 1) * (bins - 1e-6)).long().flatten(1)
        h = torch.bincount((q[0] * bins + q[1]) * bins + q[2], minlength=bins ** 3).double()
        return h / h.sum()
    bc = (histogram(image) * histogram(painting)).sqrt().sum()
    return float((1 - bc).clamp_min(0).sqrt())


def _painting(name: str) -> torch.Tensor:
    """The style image a style model (zoo name or checkpoint file) was trained on, at the
    training size (its recipe's ``style_image`` and ``style_size``); for a mix of a multi-style
    model, that of the style with the largest weight."""
    from percepkit.models.checkpoint import read_metadata
    from percepkit.models.zoo import package_models_dir
    from percepkit.nets.conditional import style_weights
    from percepkit.recipes.recipe import parse_yaml
    from percepkit.train import load_style_image

    base, _, mix = name.partition("@")
    file = Path(base) if base.endswith(".safetensors") else \
        package_models_dir() / f"{base}.safetensors"
    recipe = parse_yaml(read_metadata(file)["recipe"])
    data = recipe["data"]
    style = data["style_image"]
    if isinstance(style, list):  # one per name of transform.styles
        style = style[int(style_weights(recipe["transform"]["styles"], mix).argmax())]
    return load_style_image(str(REPO / style), data.get("style_size", 512))[0]


def style_table(image: bool = False, names: tuple[str, ...] = STYLES) -> str:
    """blobs (vs the content photo), grid (period 4) and the palette's distance to the painting
    of the style models (zoo names or checkpoint files) on BSD100 photos."""
    from percepkit.metrics import Blobs, Grid

    grid, blobs = Grid(period=4), Blobs()
    contents, outs = _stylised(names, STYLE_PHOTOS)
    lines = ["| model | blobs (%, mean) | blobs (%, min–max) | photos with blobs > 0.1 % | "
             "grid (levels, min–max) | palette to the painting: photo → output (mean) |",
             "| --- | --- | --- | --- | --- | --- |"]
    g = [float(grid(x[None], x[None])[0]) for x in contents.values()]
    lines.append(f"| the photos (calibration) | — | — | — | {_span(g, '.2f')} | — |")
    for name in names:
        b = [float(blobs(outs[(name, p)][None], contents[p][None])[0]) for p in STYLE_PHOTOS]
        g = [float(grid(outs[(name, p)][None], contents[p][None])[0]) for p in STYLE_PHOTOS]
        over = sum(v > 0.1 for v in b)
        painting = _painting(name)
        before = [palette_distance(contents[p], painting) for p in STYLE_PHOTOS]
        after = [palette_distance(outs[(name, p)], painting) for p in STYLE_PHOTOS]
        closer = sum(a < c for a, c in zip(after, before))
        lines.append(f"| `{_label(name)}` | {sum(b) / len(b):.2f} | {_span(b, '.2f')} | "
                     f"{over} of {len(b)} | {_span(g, '.2f')} | {sum(before) / len(before):.2f} "
                     f"→ {sum(after) / len(after):.2f} (closer on {closer} of {len(after)}) |")
    if image:
        blob_image({k: v for k, v in contents.items() if k in IMAGE_PHOTOS}, outs, names)
    return "\n".join(lines)


def blob_image(contents: dict[str, torch.Tensor], outs: dict[tuple[str, str], torch.Tensor],
               names: tuple[str, ...] = STYLES, height: int = 160) -> Path:
    """content | every style model, the detected blobs outlined in magenta, one row a photo."""
    import torch.nn.functional as F

    from percepkit.data.images import image_grid, stack_rows, write_image
    from percepkit.metrics import Blobs
    from percepkit.metrics.artifacts import blob_mask

    metric = Blobs()
    magenta = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    rows = []
    for p, x in contents.items():
        tiles, labels = [x], [f"BSD100 {p}"]
        for name in names:
            out = outs[(name, p)]
            mask = blob_mask(out[None], x[None], metric.level, metric.reference_margin,
                             metric.min_size, metric.thickness).to(torch.float32)[:, None]
            ring = (F.max_pool2d(mask, 7, stride=1, padding=3) - mask)[0] > 0  # a 3 px outline
            tiles.append(torch.where(ring, magenta, out))
            share = float(mask.mean()) * 100
            labels.append(f"{_label(name)} {share:.1f}%")
        small = [F.interpolate(t[None], size=(height, round(t.shape[-1] * height / t.shape[-2])),
                               mode="area")[0] for t in tiles]
        rows.append(image_grid(small, labels=labels))
    file = "blobs_styles.jpg" if names == STYLES else "blobs_" + "_".join(
        Path(n).stem for n in names if "@" not in n) + ".jpg"
    path = write_image(IMAGES / file, stack_rows(rows))
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KB)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["all", "sr", "style"], default="all")
    parser.add_argument("--image", action="store_true",
                        help="also write docs/images/zoo/blobs_styles.jpg")
    parser.add_argument("--models", nargs="+", default=list(STYLES),
                        help="style models to score: zoo names or checkpoint files")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.what in ("all", "sr"):
        print(sr_table(), end="\n\n")
    if args.what in ("all", "style"):
        print(style_table(args.image, tuple(args.models)))


if __name__ == "__main__":
    main()
