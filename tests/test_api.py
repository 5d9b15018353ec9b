"""The public API (docs/api.md): create_loss, create_metric, load, list_*, and the examples of
docs/api.md, which run here as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli

import percepkit
from percepkit.data.images import read_image, write_image
from percepkit.errors import PercepkitError
from percepkit.losses import build_loss
from percepkit.registry import LOSS_NETWORKS, LOSSES, METRICS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_import_percepkit_stays_light_with_the_api_names():
    code = ("import sys, percepkit; names = dir(percepkit); "
            "print('load' in names and 'create_loss' in names, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        percepkit.nothing  # noqa: B018


# -- create_loss -------------------------------------------------------------------------------
def test_random_init_shared_loss_network_serves_two_losses_and_stays_whole():
    net = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})
    shallow = percepkit.create_loss("feature", net, layers=["relu2_2"])
    deep = percepkit.create_loss([{"name": "feature", "layers": ["relu4_3"]}], net)
    old_style = build_loss([{"name": "feature", "layers": ["relu1_2"]}], net)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for loss in (shallow, deep):
        value = loss(x, y)
        assert value.ndim == 0 and value > 0
    assert old_style(x, y)[0] > 0
    assert len(net.features) == 31  # never cut in place
    assert net(x, ["relu5_3"])["relu5_3"].shape == (2, 512, 2, 2)


def test_loss_gives_its_parts_and_gradients():
    loss = percepkit.create_loss([{"name": "pixel", "weight": 2.0}, {"name": "tv", "weight": 0.5}])
    out = torch.rand(1, 3, 8, 8, requires_grad=True)
    target = torch.rand(1, 3, 8, 8)
    total, parts = loss(out, target, return_parts=True)
    assert list(parts) == ["pixel", "tv"] and loss.parts is parts
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()))
    assert parts["pixel"].item() == pytest.approx(2.0 * torch.mean((out - target) ** 2).item())
    loss(out, target).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert loss.loss_network is None  # no term reads features: no network built


def test_create_loss_builds_the_default_vgg16_with_real_weights(real_weights_dir, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    loss = percepkit.create_loss("feature")
    default = LOSS_NETWORKS.build({"name": "vgg16", "weights": "imagenet"})
    expected, _ = build_loss([{"name": "feature"}], default)(x, y)
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_create_loss_refuses_arguments_with_a_list_and_bad_entries():
    with pytest.raises(PercepkitError, match="apply to one term"):
        percepkit.create_loss(["pixel", "tv"], weight=2.0)
    with pytest.raises(PercepkitError, match="term 1 is a int"):
        percepkit.create_loss(["pixel", 3])


def test_a_term_called_like_a_criterion_says_what_to_use():
    term = LOSSES.build({"name": "pixel"})
    with pytest.raises(TypeError, match=r"percepkit.create_loss\('pixel'\)"):
        term(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))


# -- create_metric -----------------------------------------------------------------------------
def test_create_metric_is_the_registered_metric():
    x, y = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    psnr = percepkit.create_metric("psnr", crop_border=2)
    assert torch.equal(psnr(x, y), METRICS.build({"name": "psnr", "crop_border": 2})(x, y))
    assert psnr.higher_is_better and psnr(x, y).shape == (2,)


@pytest.mark.parametrize("name", ["ssim", "ms_ssim_rgb"])
def test_similarity_as_loss_is_one_minus_the_metric_and_differentiable(name):
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 176, 176, generator=gen)
    near = (target + 0.05 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    far = (target + 0.3 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    metric, loss = percepkit.create_metric(name), percepkit.create_metric(name, as_loss=True)
    out = near.clone().requires_grad_()
    value = loss(out, target)
    assert value.item() == pytest.approx(1 - metric(near, target).mean().item(), abs=1e-6)
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert value < loss(far, target)  # lower is better
    value.backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_perceptual_metric_as_loss_is_the_metric(name, real_weights_dir, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, 64, 64, generator=gen)
    near = (target + 0.05 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    far = (target + 0.3 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    metric, loss = percepkit.create_metric(name), percepkit.create_metric(name, as_loss=True)
    out = near.clone().requires_grad_()
    value = loss(out, target)
    assert value.item() == pytest.approx(metric(near, target).item(), rel=1e-5)
    assert value < loss(far, target)
    value.backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_psnr_and_blobs_as_losses_are_refused_with_what_to_use():
    with pytest.raises(PercepkitError, match=r"no loss form.*create_loss\('pixel'\)"):
        percepkit.create_metric("psnr", as_loss=True)
    with pytest.raises(PercepkitError, match="blobs.*no gradient"):
        percepkit.create_metric("blobs", as_loss=True)


def test_grid_as_loss_is_the_metric_with_a_gradient():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    out = x.clone().requires_grad_()
    loss = percepkit.create_metric("grid", as_loss=True)
    value = loss(out, x)
    assert value.item() == pytest.approx(percepkit.create_metric("grid")(x, x).item(), rel=1e-5)
    value.backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


# -- list_* --------------------------------------------------------------------------------------
def test_lists_come_from_the_registries_plugins_included():
    assert {"candy", "sr_x4_feat"} <= set(percepkit.list_models())
    assert {"feature", "style", "tv", "lpips"} <= set(percepkit.list_losses())
    assert {"psnr", "ssim", "lpips", "dists"} <= set(percepkit.list_metrics())
    assert percepkit.list_metrics("psnr*") == ["psnr", "psnr_rgb"]
    with LOSSES.restored():  # undone after the block
        LOSSES.add(LOSSES.get("pixel"), "a_plugin_loss")
        assert "a_plugin_loss" in percepkit.list_losses()
    assert "a_plugin_loss" not in percepkit.list_losses()


# -- load ----------------------------------------------------------------------------------------
def _cli_output(tmp_path: Path, command: str, model: str, image: np.ndarray) -> np.ndarray:
    """``percepkit stylize|upscale MODEL`` on an 8-bit image, in fp32 (what ``auto`` is on a
    CPU without bf16 units), as 8-bit values."""
    src, out = tmp_path / f"{model}_in.png", tmp_path / f"{model}_out.png"
    write_image(src, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert run_cli([command, model, str(src), "-o", str(out), "-q", "--device", "cpu",
                    "--precision", "fp32"]) == 0
    return (read_image(out) * 255).round().to(torch.int16).numpy()


@pytest.mark.parametrize(("model", "command", "size"), [
    ("candy", "stylize", (321, 481)),   # the odd size
    ("candy", "stylize", (7, 10)),      # smaller than the padding: replicated
    ("sr_x4_feat", "upscale", (29, 37)),
    ("sr_x4_feat", "upscale", (7, 10)),
])
def test_load_has_the_input_size_and_the_cli_output_within_one_level(model, command, size,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    cli = _cli_output(tmp_path, command, model, image)
    net = percepkit.load(model)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = net(x)[0]
    factor = net.scale
    assert y.shape == (3, size[0] * factor, size[1] * factor)
    ours = (y.clamp(0, 1) * 255).round().to(torch.int16).numpy()
    assert np.abs(ours - cli).max() <= 1  # everywhere, edges included


def test_load_checks_task_and_scale(monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    with pytest.raises(PercepkitError, match="a .style. network, not one for the .sr. task"):
        percepkit.load("candy", task="sr")
    with pytest.raises(PercepkitError, match="scales x4, not x2"):
        percepkit.load("sr_x4_pixel", task="sr", scale=2)
    net = percepkit.load("sr_x4_pixel", task="sr", scale=4)
    assert net.task == "sr" and net.scale == 4 and not net.training


@pytest.mark.extra("export")
@pytest.mark.parametrize("size", [(45, 67), (7, 10)])
def test_exported_onnx_takes_any_size_and_equals_the_cli(size, tmp_path, monkeypatch):
    """The file pads and crops inside (docs/inference.md, Export): fed the image as it is."""
    import onnxruntime as ort
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    path = tmp_path / "candy.onnx"
    assert run_cli(["export", "candy", "--format", "onnx", "-o", str(path)]) == 0
    image = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    cli = _cli_output(tmp_path, "stylize", "candy", image)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255
    y = session.run(None, {"image": x})[0][0]
    assert y.shape == (3, *size)
    ours = np.round(np.clip(y, 0, 1) * 255).astype(np.int16)
    assert np.abs(ours - cli).max() <= 1


def test_predictor_takes_the_loaded_module(monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    net = percepkit.load("candy")
    predictor = percepkit.Predictor(net, "cpu", precision="fp32", tile=32)  # several tiles
    x = torch.rand(1, 3, 45, 70)
    with torch.inference_mode():
        assert (predictor(x) - net(x)).abs().max() < 1e-3


# -- docs/api.md ---------------------------------------------------------------------------------
def test_api_page_examples_run(real_weights_dir, monkeypatch, tmp_path):
    """Every ```python block of docs/api.md, in order, in one namespace."""
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))  # precision calibrations
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md[python block {i + 1}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/api.md python block {i + 1} failed: {e!r}\n{block}") from e
