"""Recipe files that are not what they should be: one paragraph, exit code 2, nothing built."""

from __future__ import annotations

import pytest
from cli_runner import run_cli

from percepkit.errors import RecipeError
from percepkit.recipes.recipe import load_recipe

GOOD = """name: t
task: sr
transform: {name: bicubic, scale: 4}
losses: [{name: pixel}]
data: {train: {name: synthetic, count: 4, size: 32, scale: 4}}
train: {iterations: 2, batch_size: 2}
"""


def test_utf8_with_bom_and_utf16_recipes_load(tmp_path):
    for codec in ("utf-8-sig", "utf-16"):
        path = tmp_path / f"{codec}.yaml"
        path.write_bytes(GOOD.encode(codec))
        assert load_recipe(path).name == "t"


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
])
def test_binary_and_latin1_recipes_are_one_paragraph(tmp_path, capsys, data, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    assert run_cli(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_billion_laughs_recipe_is_refused_with_a_short_message(tmp_path, capsys):
    """How fast: benchmarks/recipe_checks.py."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert run_cli(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "YAML aliases" in err and len(err) < 1000


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(RecipeError, match="refers to itself"):
        load_recipe(path)


@pytest.mark.parametrize("override, key", [
    ("train.iterations=-5", "train.iterations"), ("train.batch_size=1e12", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"), ("checkpoint.every=0", "checkpoint.every"),
])
def test_out_of_range_settings_fail_recipe_check(tmp_path, capsys, override, key):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert run_cli(["recipe", "check", str(path), "--set", override]) == 2
    assert key in capsys.readouterr().err


def test_a_folder_given_as_recipe_says_it_is_a_folder(tmp_path, capsys):
    assert run_cli(["recipe", "check", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
