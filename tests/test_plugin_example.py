"""The shipped example plugin (examples/plugin-example): found through its entry point, listed,
and usable by name in a recipe that trains."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from percepkit import registry as reg
from percepkit.cli import main
from percepkit.models.checkpoint import load_transform
from percepkit.registry import LOSSES

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin-example"


@pytest.fixture
def charbonnier_plugin(tmp_path, monkeypatch):
    """The example plugin: its entry point from the pip-installed copy (as in CI) or a faked
    installation, its code from this checkout (so a stale installed copy cannot hide a change)."""
    try:
        metadata.distribution("percepkit-charbonnier")
    except metadata.PackageNotFoundError:
        info = tmp_path / "percepkit_charbonnier-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: percepkit-charbonnier\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(
            "[percepkit.plugins]\ncharbonnier = percepkit_charbonnier\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "percepkit_charbonnier", raising=False)
    reg.reset_plugins_for_tests()
    yield
    reg.reset_plugins_for_tests()


def test_example_plugin_is_listed_beside_the_builtin_charbonnier(charbonnier_plugin, capsys):
    main(["list", "losses"])
    out = capsys.readouterr().out
    assert "example_charbonnier" in out and "Example plugin's Charbonnier" in out
    assert LOSSES.entry("example_charbonnier").source == "charbonnier"
    assert LOSSES.entry("charbonnier").source == "percepkit"


def test_recipe_using_the_plugin_loss_by_name_trains(charbonnier_plugin, tmp_path):
    recipe = tmp_path / "charbonnier_sr.yaml"
    recipe.write_text("""
task: sr
transform: {name: johnson_sr, scale: 2, norm: none, skip: true, channels: 8, residual_blocks: 1}
losses:
  - {name: example_charbonnier, weight: 1.0, eps: 1.0e-3}
data:
  train: {name: synthetic, count: 8, size: 32, scale: 2, seed: 0}
optimizer: {name: adam, lr: 1.0e-3}
train: {iterations: 4, batch_size: 2, device: cpu, workers: 0, log_every: 2,
        sample_every: 100, val_every: 100}
checkpoint: {every: 4, keep_last: 1}
""")
    out = tmp_path / "run"
    try:
        main(["train", str(recipe), "--out", str(out), "--no-progress"])
    except SystemExit as e:
        assert e.code in (0, None)
    ckpts = sorted(out.rglob("*.safetensors"))
    assert ckpts, "training wrote no checkpoint"
    model = load_transform(ckpts[-1])
    assert model.scale == 2
    log = next(out.rglob("*.csv")).read_text()
    assert "example_charbonnier" in log.splitlines()[0]
