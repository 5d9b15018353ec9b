"""Registry behaviour: registration, lookup with suggestions, argument checks, plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from typing import Literal

import pytest

from percepkit import registry as reg
from percepkit.errors import PercepkitError, RecipeError
from percepkit.registry import LOSSES, Registry
from percepkit.registry import arguments as argspec


@pytest.fixture
def toy() -> Registry:
    r = Registry("toy", plugins=False)  # a throwaway registry the plugin loader never sees

    @r.register("alpha", aliases=("a",))
    class Alpha:
        """First toy."""

        def __init__(self, size: int, rate: float = 0.5, mode: Literal["x", "y"] = "x",
                     layers: list[str] | None = None) -> None:
            self.size, self.rate, self.mode, self.layers = size, rate, mode, layers

    @r.register("beta_model", prefix_arg="model")
    def beta(model: str, depth: int = 1) -> tuple:
        """Second toy."""
        return (model, depth)

    return r


def test_build_with_checked_arguments(toy):
    obj = toy.build({"name": "alpha", "size": 3, "rate": 1})
    assert (obj.size, obj.rate, obj.mode) == (3, 1, "x")
    assert toy.build({"name": "a", "size": 2}).size == 2  # alias


def test_prefix_argument(toy):
    assert toy.build("beta_model:resnet", where="net") == ("resnet", 1)
    assert toy.entry("beta_model:anything").display_name == "beta_model:<model>"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "alph", "size": 1}, "Did you mean 'alpha'"),
        ({"name": "alpha", "sise": 1}, "unknown key 'sise' (did you mean 'size'?)"),
        ({"name": "alpha"}, "missing required key 'size'"),
        ({"name": "alpha", "size": "big"}, "key 'size': expected an integer, got 'big'"),
        ({"name": "alpha", "size": 1, "mode": "z"}, "expected one of 'x', 'y'"),
        ({"name": "alpha", "size": 1, "layers": [1]}, "expected a list of strings or null"),
        ({"size": 1}, "missing key 'name'"),
    ],
)
def test_bad_specs_give_one_clear_error(toy, spec, expected):
    with pytest.raises(RecipeError) as info:
        toy.build(spec, where="block")
    assert expected in str(info.value)
    assert str(info.value).startswith("block")


def test_duplicates_need_explicit_override(toy):
    with pytest.raises(PercepkitError, match="already registered"):
        toy.add(lambda: None, "alpha")
    with pytest.raises(PercepkitError, match="already registered"):
        toy.add(lambda: None, "other", aliases=("a",))
    toy.add(lambda size: size, "alpha", override=True)
    assert toy.build({"name": "alpha", "size": 5}) == 5
    assert "a" not in toy.names()  # the replaced entry's aliases went with it


def test_wildcard_listing(toy):
    assert toy.list("al*") == ["alpha"]
    assert toy.list("*") == ["alpha", "beta_model"]
    assert toy.list("a") == ["alpha"]  # aliases match too
    assert toy.list("zzz*") == []


def test_builtin_registries_have_every_part():
    from percepkit.registry import LOSS_NETWORKS, TRANSFORMS

    assert {"johnson_style", "johnson_sr", "srcnn", "bicubic"} <= set(TRANSFORMS.list())
    assert {"vgg16", "vgg19", "timm"} <= set(LOSS_NETWORKS.list())
    assert {"pixel", "feature", "style", "tv"} <= set(LOSSES.list())
    assert LOSS_NETWORKS.list("vgg*") == ["vgg16", "vgg19"]


def test_import_percepkit_is_light():
    heavy = "('torch', 'torchvision', 'timm', 'lpips')"
    code = ("import sys, percepkit, percepkit.cli, percepkit.registry; "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- plugins ----------------------------------------------------------------------------------
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A sys.path entry that plugins can be dropped into; plugin loading reset around it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.reset_plugins_for_tests()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("percepkit_plugins", "pk_test_"))]:
        del sys.modules[name]
    reg.reset_plugins_for_tests()


def _fake_distribution(root, name, entry_points):
    """A minimal installed distribution (dist-info) so importlib.metadata finds entry points."""
    info = root / f"{name}-0.1.dist-info"
    _write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    _write(info / "entry_points.txt", "[percepkit.plugins]\n" + "".join(
        f"{k} = {v}\n" for k, v in entry_points.items()))


def test_entry_point_plugin_registers_a_loss(plugin_env):
    _write(plugin_env / "pk_test_epplugin.py", """
        from percepkit.losses import LossTerm
        from percepkit.registry import LOSSES

        @LOSSES.register("pk_test_ep_loss")
        class EpLoss(LossTerm):
            '''A loss from an entry point.'''
            def forward(self, inputs):
                return (inputs.output - inputs.target).abs().mean()
    """)
    _fake_distribution(plugin_env, "pk_test_epplugin", {"epplugin": "pk_test_epplugin"})
    reg.load_plugins()
    entry = LOSSES.entry("pk_test_ep_loss")
    assert entry.source == "epplugin"
    assert entry.description == "A loss from an entry point."


def test_namespace_plugin_is_found(plugin_env):
    _write(plugin_env / "percepkit_plugins" / "pk_ns_metric.py", """
        from percepkit.losses import LossTerm
        from percepkit.registry import LOSSES

        @LOSSES.register("pk_test_ns_loss")
        class NsLoss(LossTerm):
            '''A loss from the namespace package.'''
    """)
    reg.load_plugins()
    assert LOSSES.entry("pk_test_ns_loss").source == "percepkit_plugins.pk_ns_metric"


def test_broken_plugin_warns_and_the_rest_works(plugin_env):
    _write(plugin_env / "pk_test_broken.py", "import a_module_that_does_not_exist\n")
    _fake_distribution(plugin_env, "pk_test_broken", {"broken": "pk_test_broken"})
    with pytest.warns(UserWarning, match="plugin 'broken'.*failed to load.*ModuleNotFoundError"):
        reg.load_plugins()
    assert "style" in LOSSES


def test_plugin_cannot_silently_replace_a_builtin(plugin_env):
    _write(plugin_env / "pk_test_thief.py", """
        from percepkit.losses import LossTerm
        from percepkit.registry import LOSSES

        @LOSSES.register("style")
        class Thief(LossTerm):
            pass
    """)
    _fake_distribution(plugin_env, "pk_test_thief", {"thief": "pk_test_thief"})
    with pytest.warns(UserWarning, match="plugin 'thief'.*already registered"):
        reg.load_plugins()
    assert LOSSES.entry("style").source == "percepkit"


def test_plugin_override_is_explicit_and_warned(plugin_env):
    with LOSSES.restored():  # the built-in 'tv' is back after the block
        _write(plugin_env / "pk_test_override.py", """
            from percepkit.losses import TVLoss
            from percepkit.registry import LOSSES

            @LOSSES.register("tv", aliases=("total_variation",), override=True)
            class MyTV(TVLoss):
                '''Replaced TV.'''
        """)
        _fake_distribution(plugin_env, "pk_test_override", {"override": "pk_test_override"})
        reg.reset_plugins_for_tests()  # plugins were loaded when the block started
        with pytest.warns(UserWarning, match="plugin override replaces the built-in loss 'tv'"):
            reg.load_plugins()
        assert LOSSES.entry("tv").source == "override"
    assert LOSSES.entry("tv").source == "percepkit"


def test_plugin_that_exits_halfway_leaves_nothing_registered(plugin_env, capsys):
    _write(plugin_env / "pk_test_exits.py", '''
        import sys
        from percepkit.losses import LossTerm
        from percepkit.registry import LOSSES

        @LOSSES.register("pk_test_half_registered")
        class Half(LossTerm):
            """Registered before the plugin gave up."""

        sys.exit(3)
    ''')
    _fake_distribution(plugin_env, "pk_test_exits", {"exits": "pk_test_exits"})
    from cli_runner import run_cli

    with pytest.warns(UserWarning, match=r"plugin 'exits'.*skipped \(exit\(3\)\)"):
        assert run_cli(["list", "losses"]) == 0
    assert "pk_test_half_registered" not in LOSSES and "style" in LOSSES

    # the CLI's warning format (set by percepkit.cli.main): no source line under a warning
    assert warnings.formatwarning("plugin x failed", UserWarning, "f.py", 3) == \
        "warning: plugin x failed\n"


def test_close_matches_prefers_the_same_block():
    from percepkit.nets.lossnets import vgg_layer_names

    names = vgg_layer_names("vgg16")
    assert argspec.close_matches("relu1_3", names)[0] == "relu1_2"
    assert argspec.close_matches("relu3_4", names)[0] == "relu3_3"
    assert argspec.close_matches("styel", ["style", "tv", "pixel"]) == ["style"]
    assert argspec.close_matches("zzz", names) == []


def test_arguments_describe_the_constructor(toy):
    args = {a.name: a for a in argspec.arguments(toy.get("alpha"))}
    assert list(args) == ["size", "rate", "mode", "layers"]
    assert args["size"].required and args["size"].type_text == "an integer"
    assert (args["rate"].default, args["rate"].type_text) == (0.5, "a number")
    assert args["mode"].type_text == "one of 'x', 'y'"
    assert args["layers"].type_text == "a list of strings or null"
    assert toy.entry("alpha").doc == "First toy."


def test_a_plugin_part_is_in_the_schema_list_and_recipe_check(plugin_env, capsys):
    import jsonschema

    from percepkit.cli import main
    from percepkit.recipes.recipe import recipe_from_mapping
    from percepkit.recipes.schema import recipe_schema

    _write(plugin_env / "percepkit_plugins" / "pk_schema_loss.py", """
        from typing import Literal

        from percepkit.losses import LossTerm
        from percepkit.registry import LOSSES

        @LOSSES.register("pk_test_schema_loss")
        class SchemaLoss(LossTerm):
            '''A plugin loss with a choice.

            Its second paragraph.
            '''
            def __init__(self, weight: float = 1.0, mode: Literal["a", "b"] = "a") -> None:
                super().__init__(weight)
    """)
    reg.load_plugins()
    validator = jsonschema.Draft7Validator(recipe_schema())
    good = {"transform": "bicubic", "losses": [{"name": "pk_test_schema_loss", "mode": "b"}]}
    bad = {"transform": "bicubic", "losses": [{"name": "pk_test_schema_loss", "mode": "c"}]}
    assert list(validator.iter_errors(good)) == [] and list(validator.iter_errors(bad))
    recipe_from_mapping(good)
    with pytest.raises(RecipeError, match="key 'mode': expected one of 'a', 'b', got 'c'"):
        recipe_from_mapping(bad)
    main(["list", "losses", "pk_test_schema_loss"])
    out = capsys.readouterr().out
    assert "Its second paragraph." in out and "percepkit_plugins.pk_schema_loss" in out
    assert "one of 'a', 'b'" in out


def test_restored_undoes_additions_and_removals_and_remove_checks_the_name():
    with LOSSES.restored():
        LOSSES.add(LOSSES.get("pixel"), "tmp_loss", aliases=("tmp_alias",))
        LOSSES.remove("tv")
        assert "tmp_alias" in LOSSES and "tv" not in LOSSES
    assert "tmp_loss" not in LOSSES and "tmp_alias" not in LOSSES and "tv" in LOSSES
    with pytest.raises(PercepkitError, match="unknown loss"):
        LOSSES.remove("no_such_loss")
