"""The core CLI: version, list, and one-paragraph errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from percepkit import __version__
from percepkit.cli import main


def run(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and __version__ in out


def test_list_shows_every_kind_of_part_with_descriptions(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for name in ("johnson_style", "johnson_sr", "srcnn", "bicubic", "vgg16", "vgg19",
                 "timm:<model>", "pixel", "feature", "style", "tv", "adam", "cosine"):
        assert name in out
    assert "The paper's style-transfer network" in out


def test_list_one_kind_with_wildcard(capsys):
    code, out, _ = run(["list", "lossnets", "--filter", "vgg*"], capsys)
    assert code == 0 and "vgg19" in out and "timm" not in out


def test_unknown_kind_is_a_usage_error(capsys):
    code, _, err = run(["list", "lossnet"], capsys)
    assert code == 2 and "lossnets" in err


def test_console_script_unknown_name_is_one_paragraph_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("transform: {name: johnson_srr}\nlosses: [{name: pixel}]\n")
    proc = subprocess.run([sys.executable, "-m", "percepkit.cli", "recipe", "check", str(recipe)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown transform 'johnson_srr'. Did you mean 'johnson_sr'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["recipe", "check", "does-not-exist.yaml"],
                                  ["recipe", "show", "does-not-exist.yaml"]])
def test_missing_recipe_file(args, capsys):
    code, _, err = run(args, capsys)
    assert code == 2 and "no such recipe file" in err


def test_missing_weights_is_one_paragraph_exit_2(isolated_weights, tmp_path, capsys):
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml")
    code, _, err = run(["train", recipe, "--set", "loss_network.weights=imagenet",
                        "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == 2
    assert "ImageNet weights for vgg16 (" in err and "not found in" in err
    assert "PERCEPKIT_WEIGHTS" in err
    assert "Traceback" not in err


def test_list_one_part_shows_docstring_aliases_source_and_arguments(capsys):
    code, out, _ = run(["list", "losses", "feature"], capsys)
    assert code == 0
    assert "aliases: content, perceptual" in out
    assert "percepkit.losses.perceptual.FeatureLoss" in out
    assert "Feature reconstruction loss" in out
    for row in (("layers", "a list of strings", '["relu2_2"]'), ("weight", "a number", "1.0"),
                ("layer_weights", "a list of numbers or null", "null")):
        line = next(line for line in out.splitlines() if f" {row[0]} " in line)
        assert row[1] in line and row[2] in line
    code, out, _ = run(["list", "transforms", "johnson_style"], capsys)
    assert "one of 'batch', 'instance', 'none'" in out and "output=\"tanh\"" in out  # whole doc
    code, out, _ = run(["list", "optimizers", "adam"], capsys)
    assert "set by percepkit, not by recipes: params" in out and "│ params" not in out
    code, out, _ = run(["list", "datasets", "sr_patches"], capsys)
    assert "root" in out and "required" in out


def test_list_one_part_of_every_kind(capsys):
    from percepkit.registry import REGISTRIES

    for kind, registry in REGISTRIES.items():
        entry = registry.entries()[0]
        code, out, err = run(["list", kind, entry.name], capsys)
        assert code == 0, err
        assert entry.name in out and entry.description.split()[0] in out


def test_list_unknown_part_suggests_and_exits_2(capsys):
    code, out, err = run(["list", "losses", "featur"], capsys)
    assert code == 2 and "unknown loss 'featur'. Did you mean 'feature'" in err
    assert "Traceback" not in err


def test_piped_messages_are_not_wrapped_at_80_columns(tmp_path):
    """Not a terminal: paths and commands in messages and errors stay on one line."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = tmp_path / ("a_run_directory_with_a_long_name_" + "x" * 60)
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml")
    proc = subprocess.run([sys.executable, "-m", "percepkit.cli", "train", recipe, "--out",
                           str(out), "--set", "train.iterations=1", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"last checkpoint: {out}/checkpoints/step_00000001.safetensors\n" in proc.stdout
    missing = tmp_path / ("missing_" + "y" * 90 + ".yaml")
    proc = subprocess.run([sys.executable, "-m", "percepkit.cli", "recipe", "check",
                           str(missing)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert str(missing) in proc.stderr
