"""Recipes: every shipped recipe validates; bad recipes name the key path and the expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli
from conftest import recipe_extra

from percepkit.cli import main
from percepkit.errors import RecipeError
from percepkit.recipes.recipe import load_recipe, parse_yaml, recipe_from_mapping

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
#: each shipped recipe, skipped when it needs an optional extra that is not installed
RECIPE_PARAMS = [pytest.param(p, id=p.stem, marks=[pytest.mark.extra(e)] if (e := recipe_extra(p))
                              else []) for p in RECIPES]
#: the recipes that need no optional extra (the README's install checks them all)
BASE_RECIPES = [p for p in RECIPES if recipe_extra(p) is None]
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


@pytest.mark.parametrize("path", RECIPE_PARAMS)
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
        ({"task": "stlye"}, "task: unknown task 'stlye'. Did you mean 'style'?"),
        ({"task": 4}, "task: expected a task name (percepkit list tasks), got 4"),
        ({"val": {"metrics": ["psnr", "lpisp"]}},
         "val.metrics[1]: unknown metric 'lpisp'. Did you mean 'lpips'"),
        ({"val": {"metrics": "psnr"}}, "val.metrics: expected a list of metric names"),
        ({"val": {"metrics": []}}, "val.metrics: an empty list; name at least one metric"),
        ({"train": {"best": {"metric": "lpips"}}},
         "train.best.metric: 'lpips' is not validated; add it to val.metrics (now: psnr, "
         "ssim, grid, blobs)"),
        ({"train": {"best": "ssmi"}},
         "train.best.metric: 'ssmi' is not validated (did you mean 'ssim'?)"),
        ({"train": {"best": {"metric": "ssim", "mode": "up"}}}, "train.best: key 'mode'"),
        ({"train": {"best": {"mode": "min"}}}, "train.best: missing"),
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
    main(["recipe", "check", "--skip-data", *map(str, BASE_RECIPES)])  # returns: exit code 0
    assert capsys.readouterr().out.count("ok ") == len(BASE_RECIPES)
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
    from percepkit.inference.gatys import default_losses

    style = load_recipe(next(p for p in RECIPES if p.stem == "style_johnson2016"))
    feat = load_recipe(next(p for p in RECIPES if p.stem == "sr_x4_feat"))
    assert default_losses("style") == style.raw["losses"]
    assert default_losses("sr") == feat.raw["losses"]


# -- short forms -----------------------------------------------------------------------------------
def test_parts_given_by_name_alone_are_normalised(tmp_path, capsys):
    path = tmp_path / "short.yaml"
    path.write_text("transform: bicubic\nloss_network: vgg16\noptimizer: sgd\n"
                    "scheduler: cosine\nlosses: [feature, {name: tv, weight: 1e-5}]\n"
                    "data: {train: synthetic, val: set5}\n")
    r = load_recipe(path, ["transform.scale=4", "data.train.scale=4"])
    assert r.raw["transform"] == {"name": "bicubic", "scale": 4}
    assert r.raw["losses"] == [{"name": "feature"}, {"name": "tv", "weight": 1e-5}]
    assert r.raw["loss_network"] == {"name": "vgg16"}
    assert (r.raw["optimizer"], r.raw["scheduler"]) == ({"name": "sgd"}, {"name": "cosine"})
    assert r.raw["data"]["train"] == {"name": "synthetic", "scale": 4}
    assert r.raw["data"]["val"] == {"name": "set5"}
    assert run_cli(["recipe", "show", str(path), "--set", "data.train.scale=4"]) == 0
    shown = parse_yaml(capsys.readouterr().out)
    assert shown["transform"] == {"name": "bicubic"} and shown["losses"][0] == {"name": "feature"}
    assert shown["data"]["val"] == {"name": "set5"}
    assert run_cli(["recipe", "check", str(path), "--set", "data.train.scale=4"]) == 0
    assert "ok" in capsys.readouterr().out


def test_a_feature_term_given_by_name_gets_its_loss_network():
    r = recipe_from_mapping({"transform": "bicubic", "losses": ["feature"],
                             "loss_network": {"name": "vgg16", "weights": "random"}})
    loss = r.build_loss()
    assert loss.loss_network is not None and loss.output_layers == ("relu2_2",)


def test_an_override_may_name_a_part_alone(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("transform: {name: johnson_sr, scale: 4}\nlosses: [pixel]\n")
    assert load_recipe(path, ["transform=bicubic"]).raw["transform"] == {"name": "bicubic"}


# -- what training would reject later --------------------------------------------------------------
SR = {"transform": {"name": "johnson_sr", "scale": 4}, "losses": ["pixel"]}


@pytest.mark.parametrize(("change", "expected"), [
    ({"transform": {"name": "johnson_sr", "scale": 3}},
     "transform: johnson_sr needs a power-of-two scale (2, 4, 8), got 3"),
    ({"losses": [{"name": "feature", "layers": ["relu1_3"]}]},
     "losses[0].layers: vgg16 has no layer 'relu1_3' (did you mean 'relu1_2'"),
    ({"losses": ["style"], "loss_network": {"name": "vgg19", "layers": ["relu5_5"]}},
     "loss_network.layers: vgg19 has no layer 'relu5_5' (did you mean 'relu5_4'"),
    ({"losses": [{"name": "style", "layers": ["relu1_2"], "layer_weights": [1.0, 2.0]}]},
     "losses[0].layer_weights: 2 weights for 1 layers"),
    ({"losses": ["feature"], "loss_network": "timm:resnet5"},
     "loss_network: timm has no model 'resnet5'; did you mean 'resnet50'"),
    ({"data": {"train": {"name": "set5"}}},
     "data.train: 'set5' is an evaluation set (for data.val or percepkit eval), not a training "
     "dataset; train on one of image_folder, paired_folder, sr_patches, synthetic"),
    ({"data": {"train": {"name": "synthetic"}}},
     "data.train.scale: the sr task needs LR/HR pairs; set scale: 4"),
    ({"transform": {"name": "johnson_sr", "scale": 8}, "data": {"val": "set5"}},
     "data.val.scale: 4 is not the transform's scale 8"),
    ({"transform": "johnson_style"}, "task: the recipe says 'sr' but transform 'johnson_style'"),
    ({"train": {"iterations": -5}}, "train.iterations: expected a value at least 1, got -5"),
    ({"optimizer": {"name": "adam", "lr": -0.1}}, "optimizer.lr: expected a value at least 0"),
    ({"name": 7}, "name: expected a string, got 7"),
])
def test_recipe_check_catches_what_training_would_reject(change, expected):
    with pytest.raises(RecipeError) as info:
        recipe_from_mapping({**SR, **change}, "my.yaml")
    assert expected in str(info.value)


def test_valid_scales_and_timm_names_pass():
    recipe_from_mapping({**SR, "transform": {"name": "johnson_sr", "scale": 8},
                         "data": {"train": {"name": "synthetic", "scale": 8}}})
    recipe_from_mapping({**SR, "losses": [{"name": "feature", "layers": ["stage1"]}],
                         "loss_network": "timm:resnet18"})


def test_recipe_check_loads_no_weights(isolated_weights):
    """sr_x4_feat names ImageNet VGG16 weights; with none anywhere, checking still succeeds
    (how long checking all recipes takes: benchmarks/recipe_checks.py)."""
    for path in BASE_RECIPES:
        assert load_recipe(path).raw["losses"]


def test_missing_data_folders_fail_recipe_check_unless_skipped(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("transform: {name: johnson_sr, scale: 4}\nlosses: [pixel]\n"
                    f"data: {{train: {{name: sr_patches, root: {tmp_path / 'nope'}}},\n"
                    f"       val: {{name: hr_folder, root: {tmp_path / 'gone'}}}}}\n")
    assert run_cli(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.train.root" in err and "data.val.root" in err and "no such folder" in err
    assert "Traceback" not in err
    assert run_cli(["recipe", "check", "--skip-data", str(path)]) == 0
    (tmp_path / "nope").mkdir()
    (tmp_path / "gone").mkdir()
    assert run_cli(["recipe", "check", str(path)]) == 0


# -- the JSON Schema -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def schema_validator():
    import jsonschema

    from percepkit.recipes.schema import recipe_schema

    schema = recipe_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_schema_covers_every_top_level_key_and_part(schema_validator):
    from percepkit.recipes.recipe import TOP_LEVEL
    from percepkit.registry import LOSSES, TRANSFORMS

    schema = schema_validator.schema
    assert set(schema["properties"]) == set(TOP_LEVEL)
    titles = {b.get("title") for b in schema["definitions"]["loss"]["oneOf"]}
    assert set(LOSSES.list()) <= titles
    style = next(b for b in schema["definitions"]["transform"]["oneOf"]
                 if b.get("title") == "johnson_style")
    assert style["properties"]["norm"]["enum"] == ["batch", "instance", "none"]
    assert style["properties"]["norm"]["default"] == "instance"
    assert {b.get("title") for b in schema["definitions"]["transform"]["oneOf"]} >= \
        set(TRANSFORMS.list())


def test_cli_prints_the_schema(capsys):
    import json

    assert run_cli(["recipe", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "percepkit recipe"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates_against_the_schema(path, schema_validator):
    errors = [e.message for e in schema_validator.iter_errors(parse_yaml(path.read_text()))]
    assert errors == []


SHORT = {"transform": "bicubic", "losses": ["pixel", {"name": "tv", "weight": 1e-5}],
         "data": {"train": {"name": "synthetic", "scale": 4}, "val": "set5"}}


@pytest.mark.parametrize("change", [
    {"transform": {"name": "bicubic", "scael": 4}},            # unknown key
    {"transform": "bicubc"},                                    # unknown part
    {"transform": {"name": "johnson_sr", "norm": "group"}},     # not one of a Literal
    {"losses": [{"name": "tv", "weight": "high"}]},             # wrong type
    {"losses": []},                                             # empty
    {"losses": ["pixel", "sr_patches"]},                        # a dataset used as a loss
    {"data": {"train": "sr_patches"}},                          # required root missing
    {"optimizer": {"name": "adam", "params": []}},              # supplied by percepkit
    {"train": {"iterations": -5}},                              # out of range
    {"checkpoint": {"every": 0}},
    {"scheduler": {"name": "cosine", "min_factor": 2}},
    {"loss_network": "timm"},                                   # timm needs a model
    {"trian": {"iterations": 5}},                               # unknown top-level key
    {"task": "style"},                                          # no style image
    {"name": 7},
])
def test_invalid_recipes_fail_both_recipe_check_and_the_schema(change, schema_validator):
    raw = {**SHORT, **change}
    assert list(schema_validator.iter_errors(raw)), "the schema accepted it"
    with pytest.raises(RecipeError):
        recipe_from_mapping(raw, "bad.yaml")


def test_short_forms_pass_both_recipe_check_and_the_schema(schema_validator):
    for raw in (SHORT, {**SHORT, "loss_network": "timm:resnet18", "train": None,
                        "losses": ["feature"], "optimizer": "adamw"}):
        assert [e.message for e in schema_validator.iter_errors(raw)] == []
        recipe_from_mapping(raw)


def test_loss_terms_declare_the_layers_they_read_without_being_built():
    from percepkit.metrics.lpips import LPIPS_VGG_LAYERS
    from percepkit.recipes.checks import term_layers

    assert term_layers({"name": "feature"}) == ["relu2_2"]  # the argument's default
    assert term_layers({"name": "style", "layers": ["relu1_2"]}) == ["relu1_2"]
    assert term_layers({"name": "pixel"}) == []
    # lpips has no 'layers' argument: it says itself what it reads from the loss network
    assert term_layers({"name": "lpips", "features": "loss_network"}) == list(LPIPS_VGG_LAYERS)
    assert term_layers({"name": "lpips"}) == []  # its own backbone: nothing from the recipe's


def test_recipe_check_of_a_spandrel_recipe_without_spandrel_is_one_line_naming_the_extra(
        fail_import, capsys):
    """The README's `recipe check --skip-data recipes/*.yaml` after the README's install."""
    fail_import("spandrel")
    compact = next(p for p in RECIPES if recipe_extra(p) == "models")
    assert run_cli(["recipe", "check", "--skip-data", *map(str, BASE_RECIPES), str(compact)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("ok ") == len(BASE_RECIPES)
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert compact.name in err and "pip install 'percepkit[models]'" in err
