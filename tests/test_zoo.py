"""The model zoo: names resolve to verified files, wherever a checkpoint is accepted.

The zoo mechanics are tested with small randomly initialised networks packaged in the tests
(plumbing only); the shipped, trained models are tested in test_zoo_models.py.
"""

from __future__ import annotations

import pytest
import torch
from cli_runner import run_cli

import percepkit
from percepkit.data.images import read_image, write_image
from percepkit.errors import CheckpointError
from percepkit.models.checkpoint import (
    EMA_MODEL,
    MODEL,
    OPTIMIZER,
    Checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from percepkit.models.hub import hash_prefix
from percepkit.models.loader import resolve
from percepkit.models.zoo import ZooModel, cache_dir, package
from percepkit.registry import MODELS, TRANSFORMS


@pytest.fixture(autouse=True)
def _models_restored():
    """Models registered by a test are removed after it."""
    with MODELS.restored():
        yield


def _random_style_checkpoint(path):
    """A training-style checkpoint (weights + optimiser state) of a random-init style net."""
    spec = {"name": "johnson_style", "channels": [8, 8, 8], "residual_blocks": 1}
    torch.manual_seed(0)
    net = TRANSFORMS.build(spec)
    opt = torch.optim.Adam(net.parameters())
    return save_checkpoint(path, {MODEL: net.state_dict(), OPTIMIZER: opt.state_dict()},
                           {"task": "style", "transform": spec, "recipe": "name: x\n", "step": 7})


def _register(monkeypatch, tmp_path, name="tiny_random_style", sha=None, url=None):
    """Package a random net into a PERCEPKIT_MODELS folder and register it under ``name``."""
    folder = tmp_path / "models"
    digest = package(_random_style_checkpoint(tmp_path / "train.safetensors"),
                     folder / f"{name}.safetensors", {"headline": "plumbing only"})
    monkeypatch.setenv("PERCEPKIT_MODELS", str(folder))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    MODELS.add(ZooModel(name, f"{name}.safetensors", sha or digest, "style", "a test model",
                        url=url), name, override=True)
    return folder / f"{name}.safetensors"


def test_package_keeps_weights_recipe_and_card_but_no_optimizer_state(tmp_path):
    ckpt = _random_style_checkpoint(tmp_path / "t.safetensors")
    package(ckpt, tmp_path / "m.safetensors", {"steps": 7, "metrics": {"a": 1.5}})
    state, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert set(state) == {MODEL}
    assert meta["card"] == {"steps": 7, "metrics": {"a": 1.5}}
    assert meta["recipe"] == "name: x\n" and meta["step"] == 7


def test_random_init_package_keeps_the_ema_weights_when_the_run_has_them(tmp_path):
    spec = {"name": "johnson_style", "channels": [8, 8, 8], "residual_blocks": 1}
    weights = TRANSFORMS.build(spec).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    ckpt = save_checkpoint(tmp_path / "t.safetensors", {MODEL: weights, EMA_MODEL: ema},
                           {"task": "style", "transform": spec})
    package(ckpt, tmp_path / "m.safetensors", {})
    packaged = Checkpoint.read(tmp_path / "m.safetensors")
    assert set(packaged.state) == {MODEL}
    for key, value in ema.items():
        assert torch.equal(packaged.weights()[key], value), key


def test_random_init_model_by_name_through_python_api_and_cli(monkeypatch, tmp_path):
    path = _register(monkeypatch, tmp_path)
    assert resolve("tiny_random_style").path == path
    net = percepkit.load("tiny_random_style")
    assert not net.training
    image = tmp_path / "in.png"
    write_image(image, torch.rand(3, 21, 30))
    out = tmp_path / "out.png"
    assert run_cli(["stylize", "tiny_random_style", str(image), "-o", str(out), "-q"]) == 0
    assert read_image(out).shape == (3, 21, 30)
    assert run_cli(["export", "tiny_random_style", "--format", "torchscript",
                    "-o", str(tmp_path / "m.pt")]) == 0


def test_damaged_model_file_is_one_paragraph_and_exit_2(monkeypatch, tmp_path, capsys):
    _register(monkeypatch, tmp_path, sha="0" * 64)
    assert run_cli(["stylize", "tiny_random_style", str(tmp_path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and "expected 0000" in err and "Traceback" not in err


def test_missing_model_file_names_the_folders_and_what_to_do(monkeypatch, tmp_path, capsys):
    path = _register(monkeypatch, tmp_path, url="https://example.invalid/m.safetensors")
    path.unlink()
    assert run_cli(["upscale", "tiny_random_style", str(tmp_path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "PERCEPKIT_MODELS" in err and "PERCEPKIT_OFFLINE=1" in err and "example.invalid" in err
    _register(monkeypatch, tmp_path).unlink()  # no address at all
    assert run_cli(["stylize", "tiny_random_style", str(tmp_path), "-o", str(tmp_path)]) == 2
    assert "no download address" in capsys.readouterr().err


def test_unknown_name_suggests_models(capsys, tmp_path):
    assert run_cli(["stylize", "candyy", str(tmp_path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint file or model name" in err


def test_a_folder_is_not_a_checkpoint(tmp_path):
    try:
        resolve(tmp_path)
    except CheckpointError as e:
        assert "is a folder" in str(e)
    else:
        raise AssertionError("a folder resolved")


def test_list_models_shows_the_card_headline(monkeypatch, tmp_path, capsys):
    _register(monkeypatch, tmp_path)
    assert run_cli(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "tiny_random_style" in out and "plumbing only" in out
    assert read_metadata(resolve("tiny_random_style").path)["card"]["headline"] == "plumbing only"


def test_file_names_carry_a_hash_only_as_hex_digits():
    assert hash_prefix("vgg16-397923af.pth") == "397923af"
    assert hash_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert hash_prefix("my-style.safetensors") is None
    assert hash_prefix("net-cafe.pth") is None  # hex, but shorter than 8 digits
    assert hash_prefix("candy.safetensors") is None


def test_random_init_model_named_with_a_dash_downloads_checked_against_its_manifest_hash(
        monkeypatch, tmp_path):
    server = tmp_path / "server" / "my-style.safetensors"
    packaged = _register(monkeypatch, tmp_path, name="my-style", url=server.as_uri())
    server.parent.mkdir()
    packaged.rename(server)
    monkeypatch.delenv("PERCEPKIT_OFFLINE")
    assert resolve("my-style").path == cache_dir() / "my-style.safetensors"
    (cache_dir() / "my-style.safetensors").unlink()
    server.write_bytes(b"not the model")  # the manifest's hash rejects other bytes
    with pytest.raises(CheckpointError, match="download from .* failed"):
        resolve("my-style")
    assert not (cache_dir() / "my-style.safetensors").exists()
