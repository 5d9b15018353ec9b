"""percepkit.models.loader: one precedence from a name or a file to a network (existing file >
trained model's name > registered transform's name), the same in the CLI and the Python API.

Networks here are randomly initialised (plumbing only) or parameter-free (bicubic)."""

from __future__ import annotations

import pytest
import torch
from cli_runner import run_cli

import percepkit
from percepkit.data.images import write_image
from percepkit.data.imresize import imresize
from percepkit.errors import CheckpointError, PercepkitError
from percepkit.models.checkpoint import MODEL, save_checkpoint
from percepkit.models.loader import FILE, TRANSFORM, load_network, resolve
from percepkit.models.loader import MODEL as MODEL_KIND
from percepkit.models.zoo import ZooModel, package
from percepkit.registry import MODELS, TRANSFORMS

TINY_STYLE = {"name": "johnson_style", "channels": [8, 8, 8], "residual_blocks": 1}


@pytest.fixture(autouse=True)
def _models_restored():
    """Models registered by a test are removed after it."""
    with MODELS.restored():
        yield


def _style_file(path, seed=0):
    torch.manual_seed(seed)
    net = TRANSFORMS.build(TINY_STYLE)
    return save_checkpoint(path, {MODEL: net.state_dict()}, {"task": "style",
                                                             "transform": TINY_STYLE})


def _register_model(monkeypatch, tmp_path, name):
    """A random style net packaged as the zoo model ``name`` (undone after the test)."""
    folder = tmp_path / "models"
    digest = package(_style_file(tmp_path / "t.safetensors"), folder / f"{name}.safetensors", {})
    monkeypatch.setenv("PERCEPKIT_MODELS", str(folder))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    MODELS.add(ZooModel(name, f"{name}.safetensors", digest, "style", "test"), name,
               override=True)
    return folder / f"{name}.safetensors"


def test_an_existing_file_wins_over_a_model_name_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _style_file(tmp_path / "candy", seed=1)  # a file called like the shipped model
    source = resolve("candy")
    assert source.kind == FILE and source.path.name == "candy"
    loaded = load_network("candy")
    ref = TRANSFORMS.build(TINY_STYLE)
    ref.load_state_dict(loaded.net.state_dict())  # the tiny net, not the shipped candy
    assert loaded.source.name == "candy" and loaded.untrained_parameters == 0


def test_a_model_name_wins_over_a_transform_name_random_init(tmp_path, monkeypatch):
    path = _register_model(monkeypatch, tmp_path, "johnson_style")
    source = resolve("johnson_style")
    assert (source.kind, source.path) == (MODEL_KIND, path)
    MODELS.remove("johnson_style")
    assert resolve("johnson_style").kind == TRANSFORM


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (3, 40), (15, 15)])
def test_a_small_image_is_not_padded_for_a_net_of_local_layers(size):
    """Bicubic (and the SR nets) have no stride or instance norm: a tiny image is run as it
    is, so its edges are MATLAB's bicubic in percepkit.load and in the CLI's Predictor."""
    x = torch.rand(1, 3, *size)
    net = percepkit.load("bicubic", scale=4)
    assert torch.allclose(net(x), imresize(x, scale=4), atol=1e-6)
    predictor = percepkit.Predictor(net, "cpu", precision="fp32")
    assert torch.allclose(predictor(x), imresize(x, scale=4), atol=1e-6)


def test_a_transform_name_is_built_with_the_scale():
    net = percepkit.load("bicubic", scale=3)
    x = torch.rand(1, 3, 17, 19)
    assert net.scale == 3 and net(x).shape == (1, 3, 51, 57)
    assert torch.allclose(net(x), imresize(x, scale=3))
    assert percepkit.load("bicubic").scale == 4  # the default scale
    with pytest.warns(UserWarning, match="random weights"):
        assert percepkit.load("johnson_sr", scale=2).scale == 2
    loaded = load_network("srcnn", scale=2)
    assert loaded.source.kind == TRANSFORM and loaded.untrained_parameters > 0


def test_transform_names_only_where_allowed_and_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file or model name"):
        load_network("bicubic", transforms=False)
    with pytest.raises(CheckpointError, match="Did you mean 'bicubic'"):
        load_network("bicubc")
    with pytest.raises(CheckpointError, match="no such checkpoint file$"):
        load_network(str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_network(tmp_path)
    with pytest.raises(PercepkitError, match="a 'style' network, not one for the 'sr' task"):
        load_network("johnson_style", task="sr")
    with pytest.raises(PercepkitError, match="has no scale"):
        load_network("johnson_style", scale=2)
    with pytest.raises(PercepkitError, match="power-of-two"):
        load_network("johnson_sr", scale=3)


def test_task_and_scale_are_checked_for_files_random_init(tmp_path):
    path = _style_file(tmp_path / "s.safetensors")
    with pytest.raises(PercepkitError, match="a 'style' network, not one for the 'sr' task$"):
        load_network(path, task="sr")
    with pytest.raises(PercepkitError, match="trained for the 'style' task, but --task sr"):
        load_network(path, task="sr", asked_by="--task sr")  # its recorded task, before loading
    with pytest.raises(PercepkitError, match="upscales x1, not x4"):
        load_network(path, scale=4)
    assert load_network(path, task="style", scale=1).task == "style"


def test_every_command_takes_the_same_names_random_init(tmp_path, monkeypatch, capsys):
    _register_model(monkeypatch, tmp_path, "tiny_loader_style")
    image = tmp_path / "in.png"
    write_image(image, torch.rand(3, 9, 11))
    out = tmp_path / "out"
    assert run_cli(["stylize", "tiny_loader_style", str(image), "-o", str(out), "-q"]) == 0
    assert run_cli(["upscale", "tiny_loader_style", str(image), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a 'style' network, not one for the 'sr' task" in err and "percepkit stylize" in err
    assert run_cli(["upscale", "bicubic", str(image), "--scale", "2", "-o", str(out), "-q",
                    "--overwrite"]) == 0
    assert run_cli(["export", "bicubic", "--format", "torchscript"]) == 2
    assert "no such checkpoint file or model name" in capsys.readouterr().err
    assert run_cli(["convert", "tiny_loader_style", str(tmp_path / "c.safetensors")]) == 2
    assert "already a percepkit checkpoint" in capsys.readouterr().err
    assert run_cli(["bench", "--checkpoint", "sr_x4_feat", "--sizes", "16"]) == 2
    assert "bench times style networks" in capsys.readouterr().err


def test_eval_model_takes_a_file_and_checkpoint_refuses_transform_names_random_init(
        tmp_path, capsys, isolated_weights):
    spec = {"name": "johnson_sr", "scale": 2, "channels": 8, "residual_blocks": 1}
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "sr.safetensors",
                           {MODEL: TRANSFORMS.build(spec).state_dict()},
                           {"task": "sr", "transform": spec})
    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", torch.rand(3, 24, 24))
    assert run_cli(["eval", "--model", str(ckpt), "--hr-dir", str(tmp_path / "hr"),
                    "--metrics", "psnr", "--json", str(tmp_path / "r.json")]) == 0
    assert '"scale": 2' in (tmp_path / "r.json").read_text()
    capsys.readouterr()
    assert run_cli(["eval", "--checkpoint", "bicubic", "--metrics", "psnr"]) == 2
    assert "no such checkpoint file or model name" in capsys.readouterr().err
