"""safetensors checkpoints: round trip of nested state, atomic writes, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from percepkit.errors import CheckpointError, PercepkitError
from percepkit.models.checkpoint import (
    load_checkpoint,
    load_transform,
    read_metadata,
    save_checkpoint,
    save_model,
)
from percepkit.registry import TRANSFORMS


def _trained_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_of_nested_training_state(tmp_path):
    model, opt = _trained_optimizer()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate()},
        "misc": [1, 2.5, None, "x", (3, 4)],
    }
    path = save_checkpoint(tmp_path / "ckpt.safetensors", state, {"step": 7, "recipe": "a: 1\n"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 7, "recipe": "a: 1\n"}
    torch.testing.assert_close(loaded["model"]["weight"], model.state_dict()["weight"])
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.8, 0.9)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"],
                               opt.state_dict()["state"][0]["exp_avg"])
    np.random.set_state(loaded["rng"]["numpy"])
    random.setstate(loaded["rng"]["python"])
    assert loaded["misc"] == [1, 2.5, None, "x", (3, 4)]
    assert read_metadata(path)["step"] == 7
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_file_is_safetensors_not_pickle(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_len < path.stat().st_size


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1000)}, {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04\x95pickle"])
def test_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "c.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable percepkit checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_recognised(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a percepkit checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_random_init_transform_rebuilds_from_metadata_alone(tmp_path):
    spec = {"name": "johnson_sr", "scale": 2, "norm": "none", "skip": True}
    model = TRANSFORMS.build(spec)
    torch.nn.init.normal_(model.net[-1].weight, std=0.01)
    path = save_model(tmp_path / "m.safetensors", model.state_dict(),
                      {"transform": spec, "task": "sr"})
    rebuilt = load_transform(path)
    assert not rebuilt.training
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))


def test_weights_that_do_not_fit_the_spec(tmp_path):
    model = TRANSFORMS.build({"name": "johnson_sr", "scale": 2})
    path = save_model(tmp_path / "m.safetensors", model.state_dict(),
                      {"transform": {"name": "johnson_sr", "scale": 4}})
    with pytest.raises(CheckpointError, match="weights do not fit johnson_sr"):
        load_transform(path)


def test_written_files_get_normal_permissions_not_temp_file_ones(tmp_path):
    import os

    from percepkit.data.images import write_image

    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1)}, {})
        image = write_image(tmp_path / "i.png", torch.rand(3, 4, 4))
    finally:
        os.umask(old)
    assert oct(ckpt.stat().st_mode & 0o777) == oct(0o644)
    assert oct(image.stat().st_mode & 0o777) == oct(0o644)


def test_a_folder_given_as_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_checkpoint_readers_name_what_a_checkpoint_holds(tmp_path):
    from percepkit.models.checkpoint import EMA_MODEL, MODEL, RNG, Checkpoint, training_metadata

    model, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    meta = training_metadata(
        task="sr", transform={"name": "bicubic", "scale": 2}, recipe="name: r\n",
        recipe_name="r", step=12, iterations=20, batch_size=4, world_size=1, seed=0,
        samples_per_rank=48, best_metric="psnr", best_value=30.5, best_step=10,
        val={"psnr": 30.5}, device="cpu", precision="fp32")
    path = save_checkpoint(tmp_path / "c.safetensors",
                           {MODEL: model, EMA_MODEL: ema, RNG: {"rank0": {"seed": 3}}}, meta)
    ckpt = Checkpoint.read(path)
    assert (ckpt.task, ckpt.step, ckpt.recipe_name) == ("sr", 12, "r")
    assert ckpt.recipe_text == "name: r\n"
    assert ckpt.transform == {"name": "bicubic", "scale": 2} and ckpt.best == (30.5, 10)
    assert (ckpt.world_size, ckpt.batch_size, ckpt.samples_per_rank) == (1, 4, 48)
    assert torch.equal(ckpt.weights()["w"], ema["w"])             # EMA weights by default
    assert torch.equal(ckpt.weights(ema=False)["w"], model["w"])
    assert ckpt.rng(0) == {"seed": 3} and ckpt.rng(1) is None
    bare = Checkpoint.read(save_checkpoint(tmp_path / "b.safetensors", {MODEL: model},
                                           {"recipe": "  "}), tensors=False)
    assert bare.step is None and bare.transform is None and bare.recipe_text is None
    assert bare.best == (None, None) and bare.state == {}


# -- full disks and specs that do not fit ----------------------------------------------------------
def test_a_full_disk_during_a_save_keeps_the_old_checkpoint_and_leaves_no_partial_file(
        tmp_path, full_disk):
    from percepkit.errors import WriteError

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(1000)}, {"step": 1})
    full_disk("ckpt.safetensors")
    with pytest.raises(WriteError) as e:
        save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 2})
    assert str(path) in str(e.value) and "disk is full" in str(e.value)
    assert "\n" not in str(e.value)
    state, meta = load_checkpoint(path)  # the old one, whole
    assert meta["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    full_disk(None)  # space freed: saving works again
    save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 2})
    assert read_metadata(path)["step"] == 2


def test_a_full_disk_during_an_append_leaves_the_file_as_it_was(tmp_path, full_disk):
    from percepkit.errors import WriteError
    from percepkit.runtime.files import append_text

    log = tmp_path / "log.csv"
    append_text(log, "step,loss\n1,0.5\n")
    full_disk("log.csv")
    with pytest.raises(WriteError, match="log.csv"):
        append_text(log, "2,0.25\n")
    assert log.read_text() == "step,loss\n1,0.5\n"  # no half row


def test_writes_under_a_regular_file_name_it(tmp_path):
    from percepkit.errors import WriteError
    from percepkit.runtime.files import atomic_write

    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match=r"f is a file, not a folder"):
        atomic_write(tmp_path / "f" / "sub" / "a.bin", lambda f: f.write(b"1"))


def test_a_spec_asking_for_huge_channels_is_refused_before_building(tmp_path):
    small = TRANSFORMS.build({"name": "johnson_sr", "scale": 4, "channels": 8,
                              "residual_blocks": 1})
    spec = {"name": "johnson_sr", "scale": 4, "channels": 100000, "residual_blocks": 1}
    path = save_checkpoint(tmp_path / "huge.safetensors", {"model": small.state_dict()},
                           {"task": "sr", "transform": spec})
    with pytest.raises(CheckpointError) as e:  # 1.3 TiB of parameters would be allocated
        load_transform(path)
    assert "(100000, 3, 9, 9) in the spec" in str(e.value) and "TiB" in str(e.value)
    bad_scale = save_checkpoint(tmp_path / "s5.safetensors", {"model": small.state_dict()},
                                {"task": "sr", "transform": {**spec, "scale": 5}})
    with pytest.raises(CheckpointError, match="power-of-two"):
        load_transform(bad_scale)


def test_a_network_larger_than_the_memory_is_refused_with_the_estimate(tmp_path, monkeypatch):
    from percepkit.inference import memory

    spec = {"name": "johnson_sr", "scale": 4, "channels": 8, "residual_blocks": 1}
    net = TRANSFORMS.build(spec)
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": net.state_dict()},
                           {"task": "sr", "transform": spec})
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    with pytest.raises(PercepkitError) as e:
        load_transform(path)
    assert "parameters" in str(e.value) and "available" in str(e.value)
