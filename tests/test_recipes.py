"""Recipes: every shipped recipe validates; bad recipes name the key path and the expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from percepkit.cli import main
from percepkit.errors import RecipeError
from percepkit.recipe import load_recipe, parse_yaml, recipe_from_mapping

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
GOOD = {
    "task": "sr",
    "transform": {"name": "johnson_sr", "scale": 4},
    "loss_network": {"name": "vgg16", "weights": "random"},
    "losses": [{"name": "feature", "layers": ["relu2_2"]}, {"name": "pixel", "weight": 0.1}],
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"iterations": 10},
}


def test_the_paper_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"style_johnson2016", "sr_x4_feat", "sr_x4_pixel", "sr_x8_feat", "sr_x8_pixel"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == recipe.raw.get("name", path.stem)
    assert recipe.train.iterations > 0


def test_paper_style_recipe_matches_the_paper():
    r = load_recipe(next(p for p in RECIPES if p.stem == "style_johnson2016"))
    terms = {t["name"]: t for t in r.raw["losses"]}
    assert terms["feature"]["layers"] == ["relu2_2"]
    assert terms["style"]["layers"] == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    assert "tv" in terms
    assert (r.train.batch_size, r.train.iterations, r.raw["optimizer"]["lr"]) == (4, 40000, 1e-3)


@pytest.mark.parametrize("scale", [4, 8])
def test_paper_sr_recipes_match_the_paper(scale):
    for loss in ("feat", "pixel"):
        r = load_recipe(next(p for p in RECIPES if p.stem == f"sr_x{scale}_{loss}"))
        data = r.raw["data"]["train"]
        assert (data["patch_size"], data["blur_sigma"], data["scale"]) == (288, 1.0, scale)
        assert r.raw["transform"] == {"name": "johnson_sr", "scale": scale, "norm": "batch",
                                      "upsample": "deconv", "skip": False}
        assert (r.train.batch_size, r.train.iterations) == (4, 200000)
    feat = load_recipe(next(p for p in RECIPES if p.stem == f"sr_x{scale}_feat"))
    assert feat.raw["losses"] == [{"name": "feature", "layers": ["relu2_2"], "weight": 1.0}]


def test_good_recipe_builds_its_parts():
    r = recipe_from_mapping(GOOD)
    model = r.build_transform()
    loss = r.build_loss()
    opt = r.build_optimizer(model.parameters())
    sched = r.build_scheduler(opt)
    assert list(loss.terms) == ["feature", "pixel"]
    assert opt.param_groups[0]["lr"] == 1e-3 and sched.get_last_lr() == [1e-3]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"losses": [{"name": "feature", "weight": "high"}]},
         "losses[0]: key 'weight': expected a number, got 'high'"),
        ({"losses": [{"name": "pixel"}, {"name": "styel"}]},
         "losses[1].name: unknown loss 'styel'. Did you mean 'style'"),
        ({"losses": [{"name": "feature", "layers": ["relu2_3"]}]},
         "losses[0].layers: vgg16 has no layer 'relu2_3'"),
        ({"transform": {"name": "johnson_sr", "scael": 4}},
         "transform: unknown key 'scael' (did you mean 'scale'?)"),
        ({"train": {"iterations": "many"}}, "train: key 'iterations': expected an integer"),
        ({"optimizer": {"name": "adam", "params": []}},
         "optimizer: key 'params' is set by percepkit itself"),
        ({"trian": {}}, "unknown top-level key 'trian' (did you mean 'train'?)"),
        ({"losses": []}, "losses: expected a non-empty list"),
        ({"task": "style"}, "data.style_image: a style recipe needs a style image path"),
        ({"task": "denoise"}, "task: expected 'sr' or 'style'"),
    ],
)
def test_invalid_recipe_names_key_path_and_expectation(change, expected):
    with pytest.raises(RecipeError) as info:
        recipe_from_mapping({**GOOD, **change}, "my.yaml")
    assert str(info.value).startswith("my.yaml: invalid recipe")
    assert expected in str(info.value)


def test_yaml_reads_exponent_floats():
    assert parse_yaml("lr: 1e-3\nw: 5E+4\nn: 10") == {"lr": 1e-3, "w": 5e4, "n": 10}


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("transform:\n  name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml line \d+: invalid YAML"):
        load_recipe(bad)


def test_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("transform: {name: bicubic}\nlosses:\n  - {name: pixel}\n  - {name: tv}\n")
    r = load_recipe(path, ["train.iterations=7", "losses.1.weight=0.5", "transform.scale=2",
                           "optimizer={name: sgd, lr: 0.1}"])
    assert r.train.iterations == 7
    assert r.raw["losses"][1] == {"name": "tv", "weight": 0.5}
    assert r.raw["transform"] == {"name": "bicubic", "scale": 2}
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(path, ["losses.5.weight=1"])
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        load_recipe(path, ["train.iterations"])


def test_cli_recipe_check_ok_and_bad(tmp_path, capsys):
    main(["recipe", "check", *map(str, RECIPES)])  # returns normally: exit code 0
    assert capsys.readouterr().out.count("ok ") == len(RECIPES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("transform: {name: johnson_sr}\nlosses:\n  - {name: feature, weight: x}\n")
    with pytest.raises(SystemExit) as err:
        main(["recipe", "check", str(bad)])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "losses[0]: key 'weight': expected a number" in message
    assert "Traceback" not in message


def test_optimize_defaults_are_the_paper_recipes_losses():
    """`percepkit optimize` without --recipe must use the same terms as the shipped recipes."""
    from percepkit.optimize import default_losses

    style = load_recipe(next(p for p in RECIPES if p.stem == "style_johnson2016"))
    feat = load_recipe(next(p for p in RECIPES if p.stem == "sr_x4_feat"))
    assert default_losses("style") == style.raw["losses"]
    assert default_losses("sr") == feat.raw["losses"]
