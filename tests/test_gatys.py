"""The optimisation baseline: iterations, losses going down, both tasks, the command.

Loss networks here have random weights unless a test asks for the real ones: these tests check
the optimisation plumbing, not image quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

from percepkit.data.images import resize_longer_side
from percepkit.errors import PercepkitError
from percepkit.inference.gatys import (
    build_objective,
    default_losses,
    optimize_image,
    stylize,
    upscale,
)
from percepkit.losses import build_loss
from percepkit.nets.lossnets import VGG

RANDOM_VGG = {"name": "vgg16", "weights": "random"}


@pytest.fixture(scope="module")
def style_loss():
    torch.manual_seed(0)
    return build_objective("style", loss_network=RANDOM_VGG)


@pytest.fixture(scope="module")
def sr_loss():
    torch.manual_seed(0)
    return build_objective("sr", loss_network=RANDOM_VGG)


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_style_transfer_lowers_the_loss(style_loss, method):
    torch.manual_seed(0)
    content, style = torch.rand(3, 32, 40), torch.rand(3, 24, 24)
    result = stylize(content, style, style_loss, iterations=6, method=method)
    assert result.iterations == len(result.history) == 6
    assert result.history[-1] < 0.5 * result.history[0]
    assert result.image.shape == (3, 32, 40)
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert len(result.iteration_times) == 6
    assert result.iteration_times == sorted(result.iteration_times)


def test_lbfgs_makes_one_loss_evaluation_per_iteration():
    """The paper's iteration counts are L-BFGS iterations with one evaluation each."""
    torch.manual_seed(0)
    net = VGG(weights="random")
    loss = build_loss([{"name": "feature", "layers": ["relu1_2"]}], net)
    calls = [0]
    original = loss.forward

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    loss.forward = counting
    x = torch.rand(1, 3, 24, 24)
    optimize_image(loss, torch.rand(1, 3, 24, 24), x, iterations=4)
    assert calls[0] == 4


def test_noise_init_and_max_seconds(style_loss):
    result = stylize(torch.rand(3, 24, 24), torch.rand(3, 24, 24), style_loss, iterations=3,
                     init="noise")
    assert result.iterations == 3 and result.history[-1] < result.history[0]
    stopped = optimize_image(style_loss, torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24),
                             iterations=1000, max_seconds=0.0, min_iterations=3)
    assert stopped.iterations == 3


def test_sr_with_and_without_target(sr_loss):
    torch.manual_seed(0)
    low, high = torch.rand(3, 12, 10), torch.rand(3, 48, 40)
    with_target = upscale(low, 4, sr_loss, target=high, iterations=4)
    assert with_target.image.shape == (3, 48, 40)
    assert with_target.history[-1] < with_target.history[0]
    alone = upscale(low, 4, sr_loss, iterations=4)
    assert alone.image.shape == (3, 48, 40)
    assert alone.history[-1] < alone.history[0]
    with pytest.raises(PercepkitError, match="target is"):
        upscale(low, 4, sr_loss, target=torch.rand(3, 40, 40), iterations=1)


def test_bad_requests_are_user_errors(style_loss, sr_loss):
    with pytest.raises(PercepkitError, match="no style term"):
        stylize(torch.rand(3, 16, 16), torch.rand(3, 16, 16), sr_loss, iterations=1)
    with pytest.raises(PercepkitError, match="unknown optimiser"):
        stylize(torch.rand(3, 16, 16), torch.rand(3, 16, 16), style_loss, iterations=1,
                method="sgd")
    with pytest.raises(PercepkitError, match="at least 1"):
        stylize(torch.rand(3, 16, 16), torch.rand(3, 16, 16), style_loss, iterations=0)


def test_default_losses_are_the_papers_and_copies():
    style = default_losses("style")
    assert [s["name"] for s in style] == ["feature", "style", "tv"]
    assert style[1]["layers"] == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    assert default_losses("sr") == [{"name": "feature", "layers": ["relu2_2"], "weight": 1.0}]
    style[0]["weight"] = 123
    assert default_losses("style")[0]["weight"] == 1.0


def test_resize_longer_side():
    assert resize_longer_side(torch.rand(3, 40, 100), 50).shape == (3, 20, 50)
    assert resize_longer_side(torch.rand(3, 100, 40), 50).shape == (3, 50, 20)
    x = torch.rand(3, 7, 9)
    assert resize_longer_side(x, None) is x


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    (tmp_path / "bad.png").write_text("not an image")
    return tmp_path


@pytest.mark.realweights
def test_optimize_command_with_real_weights(two_images, real_weights_dir, monkeypatch, capsys):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    d = two_images
    code = run_cli(["optimize", str(d / "c.png"), str(d / "bad.png"), "--style", str(d / "s.png"),
                 "-o", str(d / "out"), "--iters", "2", "-q"])
    assert code == 1  # bad.png failed, c.png was written
    assert "bad.png: not an image file" in capsys.readouterr().err
    assert Image.open(d / "out" / "c.png").size == (30, 24)
    assert run_cli(["optimize", str(d / "c.png"), "--scale", "2", "-o", str(d / "sr.png"),
                 "--iters", "2", "--optimizer", "adam", "-q"]) == 0
    assert Image.open(d / "sr.png").size == (60, 48)
    assert run_cli(["optimize", str(d / "c.png"), "--style", str(d / "s.png"), "-o",
                    str(d / "paper"), "--iters", "2", "--init", "random", "--project", "-q"]) == 0
    assert Image.open(d / "paper" / "c.png").size == (30, 24)


def test_optimize_command_user_errors(two_images, isolated_weights, capsys):
    d = two_images
    assert run_cli(["optimize", str(d / "c.png"), "-o", str(d / "o")]) == 2
    assert "--style STYLE" in capsys.readouterr().err
    assert run_cli(["optimize", str(d / "c.png"), "--style", str(d / "s.png"), "--scale", "2",
                 "-o", str(d / "o")]) == 2
    assert run_cli(["optimize", str(d / "c.png"), "--style", str(d / "s.png"), "--target",
                 str(d / "s.png"), "-o", str(d / "o")]) == 2
    capsys.readouterr()
    assert run_cli(["optimize", str(d / "c.png"), "--style", str(d / "s.png"), "-o",
                 str(d / "o")]) == 2
    err = capsys.readouterr().err
    assert "weights" in err and "Traceback" not in err


def test_projected_lbfgs_keeps_every_evaluated_image_in_range():
    """``project`` (the paper's baseline): the loss is only ever evaluated on pixels in [0, 1].

    A pixel loss towards 1.5 everywhere: unprojected L-BFGS walks out of range and drives the
    loss to ~0; projected, every evaluated image is clipped, so the loss stays at or above the
    floor (1.5 - 1)^2 = 0.25.
    """
    net = VGG(weights="random")
    loss = build_loss([{"name": "pixel", "kind": "l2"}], net)
    start, target = torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 1.5)
    free = optimize_image(loss, start, target, iterations=5)
    projected = optimize_image(loss, start, target, iterations=5, project=True)
    assert free.history[-1] < 0.05
    assert min(projected.history) >= 0.25 - 1e-6 and projected.history[-1] < 0.26


def test_random_init_starts_at_the_imagenet_mean_as_neural_style(style_loss, monkeypatch):
    """``init="random"``: neural-style's start (ImageNet mean + noise of 0.001 levels)."""
    import percepkit.inference.gatys as gatys

    seen = []

    def spy(loss, start, target, **kwargs):
        seen.append(start)
        return optimize_image(loss, start, target, **kwargs)

    monkeypatch.setattr(gatys, "optimize_image", spy)
    stylize(torch.rand(3, 20, 20), torch.rand(3, 20, 20), style_loss, iterations=1, init="random")
    per_channel = seen[0][0].mean(dim=(1, 2))
    assert torch.allclose(per_channel, torch.tensor([0.485, 0.456, 0.406]), atol=1e-5)
    assert 0 < float(seen[0].std(dim=(2, 3)).max()) < 1e-4
    with pytest.raises(PercepkitError, match="content, noise or random"):
        stylize(torch.rand(3, 16, 16), torch.rand(3, 16, 16), style_loss, iterations=1,
                init="zeros")
