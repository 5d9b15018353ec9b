"""Artifact gates: every shipped model is scored with ``grid`` and ``blobs`` on a fixed image,
and a score above the one recorded in ``data/zoo_artifact_gates.json`` fails (a regression).

The image: a 720x480 canvas with a smooth sky gradient and a flat wall, the flat regions where
instance-norm style models painted their white blobs, and amber.jpg (pytorch/examples,
BSD 3-Clause) at 320 px.
Style models run on it at that size; SR models get its MATLAB-bicubic /4 (8-bit) and are scored
against it. A new or retrained model records its scores with::

    python tests/test_zoo_gates.py          # rewrites data/zoo_artifact_gates.json

and the diff of that file shows what changed (docs/zoo.md has the goals: blobs <= 0.1 %, grid
at or below the HR photos' own).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import percepkit
from percepkit.data.images import quantize, read_image
from percepkit.data.imresize import imresize
from percepkit.metrics import Blobs, Grid
from percepkit.models.zoo import package_models_dir

DATA = Path(__file__).parent / "data"
GATES = DATA / "zoo_artifact_gates.json"
MANIFEST = json.loads((package_models_dir() / "manifest.json").read_text())
#: a recorded score may be exceeded by this much (float differences across CPUs and BLAS)
RELATIVE, ABSOLUTE = 0.05, 0.01


def gate_image() -> torch.Tensor:
    """The fixed 1x3x480x720 8-bit image the gates score (see the module docstring)."""
    amber = read_image(DATA / "images" / "amber.jpg")[None]
    amber = torch.nn.functional.interpolate(amber, size=(320, 320), mode="area")
    h, w = 480, 720
    t = torch.linspace(0, 1, h)[:, None].expand(h, w)
    canvas = torch.stack([0.45 + 0.25 * t, 0.62 + 0.2 * t, 0.85 + 0.08 * t])[None].clone()
    canvas[..., h - 320:, 40:360] = amber
    canvas[..., h - 200:, 400:680] = torch.tensor([0.35, 0.3, 0.25])[:, None, None]
    return quantize(canvas)


def artifact_scores(name: str, image: torch.Tensor) -> dict[str, float]:
    """``grid`` (period 4) and ``blobs`` of zoo model ``name`` on ``image`` (8-bit outputs);
    of a multi-style model, the worst of its first style, the half-and-half blend and its
    second style."""
    model = percepkit.load(name)
    names = getattr(model, "style_names", [])
    nets = [model.blend(mix) for mix in (names[0], f"{names[0]}:0.5,{names[1]}:0.5",
                                         names[1])] if names else [model]
    source = image if MANIFEST[name]["task"] == "style" else \
        quantize(imresize(image, scale=1 / model.scale).clamp(0, 1))
    ref = image.double()
    scores = {"grid": 0.0, "blobs": 0.0}
    for net in nets:
        with torch.inference_mode():
            out = quantize(net(source).clamp(0, 1)).double()
        scores["grid"] = max(scores["grid"], round(float(Grid(period=4)(out, ref)), 4))
        scores["blobs"] = max(scores["blobs"], round(float(Blobs()(out, ref)), 4))
    return scores


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return gate_image()


def test_every_shipped_model_has_a_recorded_gate():
    assert sorted(json.loads(GATES.read_text())) == sorted(MANIFEST), \
        "run `python tests/test_zoo_gates.py` after adding or retraining a zoo model"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_model_scores_no_worse_than_its_recorded_artifact_gate(name, image):
    recorded = json.loads(GATES.read_text())[name]
    got = artifact_scores(name, image)
    for metric, limit in recorded.items():
        assert got[metric] <= limit * (1 + RELATIVE) + ABSOLUTE, \
            f"{name}: {metric} {got[metric]} above its gate {limit}"


def test_the_gate_image_shows_the_artifacts_the_gates_are_for(image):
    """The gate image can fail a model: a white droplet the size of those the instance-norm
    style nets painted into its sky (about 1 % of the image) counts, the image itself does not,
    and bicubic has no grid on it."""
    assert float(Blobs()(image.double(), image.double())) == 0.0
    yy, xx = torch.meshgrid(torch.arange(480), torch.arange(720), indexing="ij")
    droplet = image.clone()
    droplet[..., (yy - 80) ** 2 + (xx - 500) ** 2 < 33 ** 2] = 1.0
    assert float(Blobs()(droplet.double(), image.double())) > 0.3
    bicubic = quantize(imresize(quantize(imresize(image, scale=0.25).clamp(0, 1)), scale=4)
                       .clamp(0, 1)).double()
    assert float(Grid(period=4)(bicubic, image.double())) < 0.1


if __name__ == "__main__":
    img = gate_image()
    scores = {name: artifact_scores(name, img) for name in sorted(MANIFEST)}
    GATES.write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
