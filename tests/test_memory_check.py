"""The training memory estimate: fitting recipes pass, absurd ones are refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from percepkit.errors import RecipeError
from percepkit.recipes.recipe import load_recipe
from percepkit.registry import DATASETS
from percepkit.train import Trainer
from percepkit.train.memory_check import check_training_memory, estimate_training_memory
from percepkit.train.tasks import make_task

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _check(recipe_path: Path, overrides: list[str] = ()):  # noqa: ANN202
    recipe = load_recipe(recipe_path, list(overrides))
    item = DATASETS.build(recipe.data.train, where="data.train")[(0, 0)]
    return check_training_memory(recipe, item, make_task(recipe, CPU), CPU)


def test_tiny_recipes_fit():  # the estimate's cost: benchmarks/recipe_checks.py
    for name in ("tiny_sr.yaml", "tiny_style.yaml"):
        estimate = _check(REPO / "recipes" / name)
        assert estimate is not None and 0 < estimate.total < 1024**3


def test_estimate_scales_with_batch_and_input_area():
    recipe = load_recipe(REPO / "recipes" / "tiny_sr.yaml")
    small = estimate_training_memory(recipe, (3, 12, 12), (3, 48, 48))
    large = estimate_training_memory(recipe, (3, 24, 24), (3, 96, 96))
    assert small is not None and large is not None
    assert 3.5 < large.activations_per_image / small.activations_per_image < 4.5
    assert large.parameters == small.parameters
    batch8 = estimate_training_memory(load_recipe(REPO / "recipes" / "tiny_sr.yaml",
                                                  ["train.batch_size=8"]), (3, 12, 12), (3, 48, 48))
    assert batch8.total - small.total == 4 * (small.activations_per_image
                                              + small.batch_per_image)


@pytest.mark.parametrize("overrides", [
    ["train.batch_size=4096", "data.train.size=512"],
    ["transform.channels=60000"],
])
def test_absurd_recipe_is_refused_by_the_estimate_before_anything_is_written(overrides,
                                                                            tmp_path):
    """The time it takes: benchmarks/recipe_checks.py."""
    recipe = load_recipe(REPO / "recipes" / "tiny_sr.yaml", overrides)
    out = tmp_path / "run"
    with pytest.raises(RecipeError) as info:
        Trainer(recipe, out=out, progress=False).run()
    message = str(info.value)
    assert "available" in message and "train.batch_size" in message
    assert "channels" in message and "\n" not in message
    assert not out.exists()


def test_zoo_recipes_fit_on_this_machine(shared_data, monkeypatch):
    if shared_data.parent.name != "shared":
        pytest.skip("the zoo recipes name ../shared; the shared folder is named otherwise")
    monkeypatch.chdir(shared_data.parent)  # ../shared from here is the shared folder
    zoo = sorted((REPO / "recipes" / "zoo").glob("*.yaml"))
    assert zoo
    for path in zoo:
        assert _check(path) is not None, path


def test_structural_terms_are_estimated_on_the_meta_device_random_init():
    """ssim / ms_ssim turn autocast off and build their Gaussian window: both must work on
    'meta', or such recipes silently skip the estimate."""
    tiny = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml"
    for term in ("ssim", "ms_ssim"):
        recipe = load_recipe(tiny, [f"losses=[{{name: pixel}}, {{name: {term}, weight: 0.1}}]"])
        estimate = estimate_training_memory(recipe, (3, 48, 48), (3, 192, 192))
        assert estimate is not None and estimate.total > 0, term


@pytest.mark.parametrize("recipe, key", [("tiny_sr", "data.train.size"),
                                         ("tiny_sr", "data.val.size"),
                                         ("tiny_style", "data.style_size")])
def test_an_image_size_beyond_the_ram_is_refused_before_any_image_is_made(recipe, key, tmp_path,
                                                                         capsys):
    from cli_runner import run_cli

    out = tmp_path / "run"
    assert run_cli(["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--out", str(out),
                    "--no-progress", "--set", f"{key}=100000000"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "100000000x100000000" in err and "PiB" in err and "available" in err
    assert "Traceback" not in err and not out.exists()
