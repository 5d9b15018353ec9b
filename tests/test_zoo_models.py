"""The trained models that ship inside the package: present, intact, runnable, as measured.

The published Set5 rows of docs/zoo.md (the SR models' cards) are recomputed here with
``percepkit eval``; LPIPS needs the real AlexNet weights (skipped without them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

import percepkit
from percepkit.models.zoo import package_models_dir, sha256_file
from percepkit.registry import MODELS

MANIFEST = json.loads((package_models_dir() / "manifest.json").read_text())
SR = sorted(n for n, m in MANIFEST.items() if m["task"] == "sr")
STYLE = sorted(n for n, m in MANIFEST.items() if m["task"] == "style")


def test_the_zoo_ships_the_papers_comparison_a_gan_model_and_four_styles():
    assert {"sr_x4_pixel", "sr_x4_feat", "sr_x4_gan"} <= set(SR)
    assert len(STYLE) >= 4


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_model_file_is_intact_small_and_registered(name):
    info = MANIFEST[name]
    path = package_models_dir() / info["file"]
    assert sha256_file(path) == info["sha256"]
    # la_muse is on the paper's full style network (1.68M parameters): 6.7 MB; the others < 3 MB
    assert path.stat().st_size < (7_000_000 if name == "la_muse" else 3_000_000)
    assert name in MODELS and MODELS.get(name).path() == path
    card = MODELS.get(name).card()
    assert card["steps"] > 0 and card["headline"] and card["license"]
    assert (package_models_dir() / f"{name}.md").is_file()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_model_runs_offline_on_an_odd_sized_rgba_image(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    monkeypatch.setenv("PERCEPKIT_MODELS", str(tmp_path / "nowhere"))
    rgba = np.random.default_rng(0).integers(0, 256, (29, 37, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "odd.png")
    task = MANIFEST[name]["task"]
    out = tmp_path / "out.png"
    command = "stylize" if task == "style" else "upscale"
    styles = getattr(percepkit.load(name), "style_names", [])
    mix = ["--style", ",".join(f"{s}:1" for s in styles)] if styles else []  # an even blend
    assert run_cli([command, name, str(tmp_path / "odd.png"), "-o", str(out), "-q", *mix]) == 0
    with Image.open(out) as im:
        factor = 1 if task == "style" else 4
        assert im.size == (37 * factor, 29 * factor) and im.mode == "RGB"
    net = percepkit.load(name)
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 29, 37))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", SR)
def test_published_set5_row_is_reproduced(name, tmp_path, request, monkeypatch):
    card = MODELS.get(name).card()
    metrics = "psnr,ssim"
    try:
        weights = request.getfixturevalue("real_weights_dir")
        monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(weights))  # found beside ../shared too
        metrics += ",lpips"
    except pytest.skip.Exception:
        pass
    out = tmp_path / "e.json"
    assert run_cli(["eval", "--set5", "--model", name, "--metrics", metrics,
                    "--json", str(out)]) == 0
    mean = json.loads(out.read_text())["sets"][0]["mean"]
    for key in metrics.split(","):
        assert round(mean[key], 4) == pytest.approx(card["metrics"]["set5"][key], abs=1e-4), key


@pytest.mark.parametrize("name", STYLE)
def test_style_model_keeps_the_content_structure(name):
    """Edges of the output follow the content's: correlation of gradient magnitudes at a quarter
    of the resolution (brush texture averages out, structure stays) on the shipped Set5
    butterfly. A net that paints style over everything scores ~0.2; the zoo's 0.74-0.95."""
    from importlib import resources

    from percepkit.data.images import read_image

    x = read_image(resources.files("percepkit") / "assets" / "Set5" / "butterfly.png")[None]
    net = percepkit.load(name)
    for style in getattr(net, "style_names", []):  # a multi-style model: each of its styles
        _assert_edges_follow(x, net.blend(style))
    _assert_edges_follow(x, net)


def _assert_edges_follow(x: torch.Tensor, net: torch.nn.Module) -> None:
    with torch.inference_mode():
        y = net(x)

    def edges(im: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.avg_pool2d(im.mean(1, keepdim=True), 4)[:, 0]
        return ((g[:, 1:, 1:] - g[:, :-1, 1:]).abs() + (g[:, 1:, 1:] - g[:, 1:, :-1]).abs()
                ).flatten()

    corr = float(torch.corrcoef(torch.stack([edges(x), edges(y)]))[0, 1])
    assert corr > 0.5, corr
