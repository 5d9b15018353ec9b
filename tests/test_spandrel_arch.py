"""spandrel architectures as percepkit transforms: registered, trained, resumed, exported.

Every network here is small and randomly initialised: the tests check plumbing (keys, shapes,
exact resume, that spandrel's own loader detects the saved file and gives the same output),
not image quality.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console

from percepkit.errors import PercepkitError, RecipeError
from percepkit.models.checkpoint import load_checkpoint, load_transform
from percepkit.recipes.recipe import load_recipe
from percepkit.registry import TRANSFORMS
from percepkit.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
QUIET = ["train.log_every=1", "train.sample_every=1000", "train.val_every=1000"]
COMPACT = "{name: 'spandrel:Compact', scale: 4, num_feat: 8, num_conv: 2}"
SPAN = "{name: 'spandrel:SPAN', scale: 4, feature_channels: 8}"

#: One tiny configuration per registered architecture.
TINY = {
    "spandrel:Compact": {"num_feat": 8, "num_conv": 2},
    "spandrel:SPAN": {"feature_channels": 8},
    "spandrel:ESRGAN": {"num_filters": 8, "num_blocks": 1},
    "spandrel:SwinIR": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4,
                        "img_size": 16},
    "spandrel:HAT": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4,
                     "img_size": 16, "compress_ratio": 3, "squeeze_factor": 3},
    "spandrel:PLKSR": {"dim": 8, "n_blocks": 1, "kernel_size": 5},
}
#: Architectures without their own entry, through {name: spandrel, arch: ID}.
OTHER = {"OmniSR": {"num_feat": 8, "window_size": 4},
         "RCAN": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 8, "reduction": 4}}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def train(out, *overrides, resume=None):
    rec = load_recipe(TINY_SR, [*QUIET, "train.sample_images=1", *overrides])
    return Trainer(rec, out=out, resume=resume, console=quiet(), progress=False).run()


@pytest.mark.extra("models")
@pytest.mark.parametrize("name", [*TINY, *OTHER])
def test_spandrel_transforms_save_weights_that_spandrel_loads_random_init(name, tmp_path):
    import spandrel

    from percepkit.models.checkpoint import save_weights

    spec = {"name": name, **TINY[name]} if name in TINY else \
        {"name": "spandrel", "arch": name, **OTHER[name]}
    model = TRANSFORMS.build({**spec, "scale": 4}).eval()
    arch = name.split(":")[-1]
    assert model.task == "sr" and model.scale == 4 and model.arch_id == arch
    assert set(model.state_dict()) == set(model.model.state_dict())  # the architecture's keys
    save_weights(tmp_path / "w.safetensors", model.state_dict())
    theirs = spandrel.ModelLoader().load_from_file(str(tmp_path / "w.safetensors"))
    assert theirs.architecture.id == arch and theirs.scale == 4
    x = torch.rand(1, 3, 20, 20)
    before = x.clone()
    with torch.no_grad():
        ours = model(x).clamp(0, 1)
    assert torch.equal(x, before)  # RCAN changes its input in place; the transform must not
    torch.testing.assert_close(ours, theirs(x), atol=1e-5, rtol=0)


@pytest.mark.extra("models")
@pytest.mark.slow
@pytest.mark.parametrize("name", ["spandrel:SPAN", "spandrel:SwinIR", "spandrel:HAT"])
def test_architectures_whose_defaults_percepkit_sets_build_with_them_random_init(name):
    """spandrel's own SwinIR/HAT defaults (window 7, image 64) cannot be built; ours can."""
    model = TRANSFORMS.build({"name": name, "scale": 2})
    assert model.scale == 2 and model.training


@pytest.mark.extra("models")
def test_a_y_only_transform_takes_rgb_and_trains_random_init():
    model = TRANSFORMS.build({"name": "spandrel:Compact", "scale": 2, "num_in_ch": 1,
                              "num_out_ch": 1, "num_feat": 8, "num_conv": 2})
    assert model.channels == 1
    x = torch.rand(2, 3, 10, 12)
    y = model(x)
    assert y.shape == (2, 3, 20, 24)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.extra("models")
def test_constructor_arguments_are_checked_like_any_recipe_key():
    def problems(spec):
        with pytest.raises(RecipeError) as e:
            TRANSFORMS.build(spec)
        return str(e.value)

    assert "did you mean 'feature_channels'" in problems({"name": "spandrel:SPAN",
                                                          "feature_channel": 8})
    assert "one of 'CNA', 'NAC', 'CNAC'" in problems({"name": "spandrel:RRDB", "mode": "X"})
    # leaves no trace in the weights: spandrel would rebuild another network from them
    assert "different network" in problems({"name": "spandrel:SPAN", "feature_channels": 8,
                                            "img_range": 1.0})
    assert "Did you mean 'spandrel:Compact'" in problems({"name": "spandrel:Compcat"})
    assert "did you mean Compact" in problems({"name": "spandrel", "arch": "Compcat"})
    assert "not a trainable super-resolution" in problems({"name": "spandrel", "arch": "DnCNN"})
    assert "did you mean 'num_feat'" in problems({"name": "spandrel", "arch": "OmniSR",
                                                  "num_feats": 8})


def test_without_spandrel_the_names_are_listed_and_building_says_how_to_install(
        monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if not installed
    assert run_cli(["list", "transforms"]) == 0
    listed = capsys.readouterr().out
    for name in ("spandrel:Compact", "spandrel:SPAN", "spandrel:ESRGAN", "arch: DAT"):
        assert name in listed, name
    with pytest.raises(PercepkitError, match=r"pip install 'percepkit\[models\]'"):
        TRANSFORMS.build({"name": "spandrel:Compact", "scale": 4})


@pytest.mark.extra("models")
@pytest.mark.parametrize("transform", [COMPACT, SPAN])
def test_spandrel_transform_trains_resumes_exactly_and_exports_for_spandrel_random_init(
        transform, tmp_path):
    import spandrel

    losses = ["losses=[{name: pixel, weight: 1.0}, {name: feature, layers: [relu1_2], "
              "weight: 0.1}, {name: tv, weight: 1.0}]"]
    steps = [f"transform={transform}", *losses, "train.iterations=3", "checkpoint.every=2",
             "checkpoint.keep_last=0"]
    full = train(tmp_path / "full", *steps)
    first = train(tmp_path / "split", *steps[:-3], "train.iterations=2", "checkpoint.every=2")
    assert first.losses == full.losses[:2]
    second = train(None, *steps, resume=tmp_path / "split")
    assert second.start_step == 2 and second.losses == full.losses[2:]
    a, meta = load_checkpoint(full.last_checkpoint)
    b = load_checkpoint(second.last_checkpoint)[0]
    assert meta["transform"]["name"].startswith("spandrel:")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    out = tmp_path / "exported.safetensors"
    assert run_cli(["export", str(full.last_checkpoint), "--format", "safetensors",
                    "-o", str(out)]) == 0
    theirs = spandrel.ModelLoader().load_from_file(str(out))
    ours = load_transform(full.last_checkpoint)
    assert theirs.architecture.id == ours.arch_id
    x = torch.rand(1, 3, 17, 21)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).clamp(0, 1), theirs(x), atol=1e-5, rtol=0)


def test_without_spandrel_importable_a_mismatched_torchvision_is_one_paragraph(fail_import,
                                                                              capsys):
    """A CPU torch with a PyPI torchvision of another build: torchvision's import raises
    RuntimeError, and with it spandrel's; the user gets what to reinstall, not 60 lines."""
    fail_import("spandrel", RuntimeError("operator torchvision::nms does not exist"))
    with pytest.raises(PercepkitError) as e:
        TRANSFORMS.build({"name": "spandrel:Compact", "scale": 4})
    text = str(e.value)
    assert "spandrel" in text and "torchvision::nms" in text and "torchvision (" in text
    assert "\n" not in text
    assert run_cli(["upscale", "spandrel:Compact", "x.png", "-o", "out/"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "do not match" in err
