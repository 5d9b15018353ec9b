"""Blob share of style models stylising whole images against stylising in tiles (docs/zoo.md,
'Where the blobs come from'): tests whether the blobs come from instance-norm statistics taken
over a larger area at inference than in training (128-px crops).

    PERCEPKIT_DATA=../shared/data/benchmarks python benchmarks/blob_tiles.py

Deterministic (CPU, float32 nets, 8-bit outputs, float64 metric).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import percepkit
from percepkit.data.images import quantize, read_image
from percepkit.metrics import Blobs

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("PERCEPKIT_DATA", REPO.parent / "shared" / "data" / "benchmarks"))
PHOTOS = ("3096", "42049", "37073")
MODELS = ("udnie", "starry_night", "the_scream")
TILES = (None, 128, 256)


def tiled(model: torch.nn.Module, x: torch.Tensor, tile: int | None) -> torch.Tensor:
    """``model`` on non-overlapping ``tile``-px tiles of ``x`` (the whole image for None)."""
    if tile is None:
        return model(x)
    out = torch.zeros_like(x)
    for i in range(0, x.shape[-2], tile):
        for j in range(0, x.shape[-1], tile):
            out[..., i:i + tile, j:j + tile] = model(x[..., i:i + tile, j:j + tile])
    return out


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_zoo_gates import gate_image

    images = {"gate canvas": gate_image()}
    images |= {p: quantize(read_image(BENCH / "BSD100" / f"{p}.png")[None]) for p in PHOTOS}
    print("| model | " + " | ".join(images) + " |")
    print("| --- |" + " --- |" * len(images))
    blobs = Blobs()
    for name in MODELS:
        model = percepkit.load(name)
        cells = []
        for x in images.values():
            with torch.inference_mode():
                shares = [float(blobs(quantize(tiled(model, x, t).clamp(0, 1)).double(),
                                      x.double())) for t in TILES]
            cells.append(" / ".join(f"{v:.2f}" for v in shares))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
