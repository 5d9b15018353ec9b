"""Third-party networks: pytorch/examples fast_neural_style models give the same images here.

``TransformerNet`` below is pytorch/examples' published architecture
(fast_neural_style/neural_style/transformer_net.py), randomly initialised: the test checks the
key mapping and the arithmetic, not a trained model.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console
from torch import nn

import percepkit
from percepkit.data.images import read_image, write_image
from percepkit.inference import Predictor
from percepkit.models.checkpoint import read_metadata


class ConvLayer(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, stride):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel_size, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.in1(self.conv1(x)))
        return self.in2(self.conv2(out)) + x


class UpsampleConvLayer(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel_size, stride)

    def forward(self, x):
        if self.upsample:
            x = nn.functional.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = ConvLayer(3, 32, 9, 1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, 3, 2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, 3, 2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (ResidualBlock(128)
                                                                 for _ in range(5))
        self.deconv1 = UpsampleConvLayer(128, 64, 3, 1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, 3, 1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def _random_examples_model(path):
    torch.manual_seed(0)
    net = TransformerNet().eval()
    for m in net.modules():  # non-trivial affine parameters and biases
        if isinstance(m, nn.InstanceNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(40)  # outputs spanning [0, 255] like a trained model
        net.deconv3.conv2d.bias.fill_(128)
    torch.save(net.state_dict(), path)
    return net


def _theirs(net, image):
    """pytorch/examples' stylize(): [0, 255] in, clamp(0, 255) out."""
    with torch.no_grad():
        return net(image[None] * 255).clamp(0, 255)[0] / 255


def test_random_init_transformer_net_gives_the_same_image(tmp_path):
    net = _random_examples_model(tmp_path / "candy.pth")
    image = torch.rand(3, 44, 60)  # multiples of 4: theirs returns 48x64 for 45x62, ours 45x62
    ours = percepkit.load(tmp_path / "candy.pth")
    with torch.no_grad():
        plain = ours(image[None])[0].clamp(0, 1)
    torch.testing.assert_close(plain, _theirs(net, image), atol=2e-5, rtol=0)
    fast = Predictor(ours, "cpu")(image).clamp(0, 1)  # fused fast path
    torch.testing.assert_close(fast, _theirs(net, image), atol=2e-5, rtol=0)
    tiled = Predictor(ours, "cpu", tile=24)(image).clamp(0, 1)  # tiler, exact statistics
    torch.testing.assert_close(tiled, _theirs(net, image), atol=1e-4, rtol=0)


def test_stylize_export_and_convert_a_pth_random_init(tmp_path):
    net = _random_examples_model(tmp_path / "mosaic.pth")
    image = torch.rand(3, 40, 52)
    write_image(tmp_path / "in.png", image)
    assert run_cli(["stylize", str(tmp_path / "mosaic.pth"), str(tmp_path / "in.png"),
                    "-o", str(tmp_path / "out.png"), "-q"]) == 0
    expected = _theirs(net, read_image(tmp_path / "in.png"))
    assert (read_image(tmp_path / "out.png") - expected).abs().max() <= 1 / 255 + 1e-6
    out = tmp_path / "mosaic.safetensors"
    assert run_cli(["convert", str(tmp_path / "mosaic.pth"), str(out)]) == 0
    meta = read_metadata(out)
    assert meta["transform"]["output"] == "linear" and meta["converted_from"] == "mosaic.pth"
    with torch.no_grad():
        converted = percepkit.load(out)(image[None])[0].clamp(0, 1)
    torch.testing.assert_close(converted, _theirs(net, image), atol=2e-5, rtol=0)
    assert run_cli(["export", str(tmp_path / "mosaic.pth"), "--format", "torchscript",
                    "-o", str(tmp_path / "m.pt")]) == 0


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.conv2d.weight": _Payload()}))
    assert run_cli(["stylize", str(path), str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "pickled code ran" not in captured.out + captured.err
    assert "never runs pickled code" in captured.err.replace("\n", " ")


@pytest.mark.extra("models")
def test_convert_of_an_unknown_architecture_names_the_file_and_what_is_supported(tmp_path,
                                                                                capsys):
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "x.pth")
    assert run_cli(["convert", str(tmp_path / "x.pth"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "x.pth" in err and "body.0.weight" in err and "pytorch/examples" in err


# -- super-resolution checkpoints of other projects, through spandrel (optional extra) ----------
def _spandrel_nets():
    """Small randomly initialised spandrel networks of three families (plumbing only)."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    return {"compact": Compact(num_feat=8, num_conv=2, upscale=4),
            "rrdb": ESRGAN(num_filters=8, num_blocks=1, scale=4),
            "span": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4)}


def _save(net, path, layout):
    state = net.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"params": state, "params_ema": state} if layout == "params_ema"
                   else {"params": state} if layout == "params" else state, path)


@pytest.mark.extra("models")
def test_random_init_spandrel_sr_models_eval_and_upscale_like_spandrel(tmp_path):
    import spandrel
    image = torch.rand(3, 23, 30)
    write_image(tmp_path / "lr.png", image)
    image = read_image(tmp_path / "lr.png")
    layouts = ["plain", "params", "params_ema", "safetensors"]
    for (name, net), layout in zip(_spandrel_nets().items(), layouts[1:] + layouts[:1]):
        path = tmp_path / f"{name}.{'safetensors' if layout == 'safetensors' else 'pth'}"
        _save(net, path, layout)
        reference = spandrel.ModelLoader().load_from_file(str(path))
        with torch.inference_mode():
            expected = reference(image[None])[0].clamp(0, 1)
        ours = percepkit.load(path)
        assert ours.scale == 4 and ours.architecture == reference.architecture.name
        with torch.inference_mode():
            torch.testing.assert_close(ours(image[None])[0].clamp(0, 1), expected,
                                       atol=1e-5, rtol=0)
        out = tmp_path / f"{name}_x4.png"
        assert run_cli(["upscale", str(path), str(tmp_path / "lr.png"), "-o", str(out),
                        "-q"]) == 0
        assert (read_image(out) - expected).abs().max() <= 1 / 255 + 1e-6, name
        assert run_cli(["eval", "--set5", "--checkpoint", str(path), "--metrics", "psnr",
                        "--json", str(tmp_path / f"{name}.json")]) == 0
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["model_info"]["architecture"] == reference.architecture.name
        assert len(record["model_info"]["sha256"]) == 64
        assert "bicubic" in record["model_info"]["degradation"]


@pytest.mark.extra("models")
def test_spandrel_refuses_a_scale_mismatch_and_unknown_files(tmp_path, capsys):
    _save(_spandrel_nets()["compact"], tmp_path / "c.pth", "plain")
    assert run_cli(["eval", "--set5", "--checkpoint", str(tmp_path / "c.pth"),
                    "--scale", "2"]) == 2
    assert "upscales x4" in capsys.readouterr().err
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "x.pth")
    assert run_cli(["upscale", str(tmp_path / "x.pth"), str(tmp_path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "x.pth" in err and "spandrel" in err and "body.0.weight" in err


def test_without_spandrel_a_foreign_sr_file_says_how_to_install_it(tmp_path, capsys,
                                                                    monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if not installed
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "x.pth")
    assert run_cli(["upscale", str(tmp_path / "x.pth"), str(tmp_path), "-o", str(tmp_path)]) == 2
    assert "pip install 'percepkit[models]'" in capsys.readouterr().err.replace("\n", " ")


# -- convert: third-party SR files become spandrel:ARCH checkpoints ------------------------------
@pytest.mark.extra("models")
def test_convert_spandrel_sr_files_gives_their_output_and_trains_from_it_random_init(tmp_path):
    import spandrel

    from percepkit.models.checkpoint import load_checkpoint

    image = torch.rand(3, 19, 22)
    write_image(tmp_path / "lr.png", image)
    image = read_image(tmp_path / "lr.png")
    layouts = ["params_ema", "safetensors", "plain"]
    for (name, net), layout in zip(_spandrel_nets().items(), layouts):
        path = tmp_path / f"{name}.{'safetensors' if layout == 'safetensors' else 'pth'}"
        _save(net, path, layout)
        reference = spandrel.ModelLoader().load_from_file(str(path))
        with torch.inference_mode():
            expected = reference(image[None])[0]
        out = tmp_path / f"{name}_converted.safetensors"
        assert run_cli(["convert", str(path), str(out)]) == 0
        state, meta = load_checkpoint(out)
        assert meta["transform"]["name"] == f"spandrel:{reference.architecture.id}"
        assert meta["transform"]["scale"] == 4 and meta["task"] == "sr"
        assert set(state["model"]) == set(reference.model.state_dict())  # the arch's own keys
        with torch.inference_mode():
            ours = percepkit.load(out)(image[None])[0].clamp(0, 1)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
        assert run_cli(["upscale", str(out), str(tmp_path / "lr.png"), "-o",
                        str(tmp_path / f"{name}.png"), "-q"]) == 0
        assert (read_image(tmp_path / f"{name}.png") - expected).abs().max() <= 1 / 255 + 1e-6

    # fine-tuning from the converted file: its weights, a fresh optimiser, one step
    from percepkit.recipes.recipe import load_recipe
    from percepkit.train import Trainer

    compact = tmp_path / "compact_converted.safetensors"
    spec = read_metadata(compact)["transform"]
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml"
    rec = load_recipe(recipe, [f"transform={json.dumps(spec)}", f"train.init={compact}",
                               "train.iterations=1", "train.sample_every=1000",
                               "train.val_every=1000", "optimizer.lr=0"])
    result = Trainer(rec, out=tmp_path / "ft", progress=False,
                     console=Console(file=io.StringIO())).run()
    assert result.step == 1
    source = percepkit.load(compact).net.state_dict()
    tuned = percepkit.load(result.last_checkpoint).net.state_dict()  # learning rate 0: unchanged
    assert tuned.keys() == source.keys()
    for key, value in tuned.items():
        assert torch.equal(value, source[key]), key


@pytest.mark.extra("models")
def test_y_only_sr_model_gets_the_srcnn_protocol_random_init(tmp_path):
    """A one-channel model runs on MATLAB Y; Cb/Cr are bicubic (scikit-image's conversions)."""
    import spandrel
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    from spandrel.architectures.Compact import Compact

    from percepkit.data.imresize import imresize
    from percepkit.metrics import rgb_to_y
    from percepkit.nets.ychannel import rgb_to_ycbcr, ycbcr_to_rgb

    rgb = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    ycc = rgb_to_ycbcr(rgb)
    theirs = rgb2ycbcr(rgb[0].permute(1, 2, 0).numpy()) / 255
    torch.testing.assert_close(ycc[0].permute(1, 2, 0), torch.from_numpy(theirs))
    torch.testing.assert_close(ycc[:, :1] * 255, rgb_to_y(rgb))  # the metric's Y
    torch.testing.assert_close(ycbcr_to_rgb(ycc), rgb)

    torch.manual_seed(0)
    net = Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=4)
    _save(net, tmp_path / "y.pth", "params")
    reference = spandrel.ModelLoader().load_from_file(str(tmp_path / "y.pth")).model.eval()
    image = torch.rand(3, 18, 21)  # >= 16 px: the tiler pads smaller inputs, which moves the
    write_image(tmp_path / "lr.png", image)  # bicubic chroma of the last rows
    image = read_image(tmp_path / "lr.png")
    ycc = rgb2ycbcr(image.permute(1, 2, 0).numpy().astype("float64")) / 255
    ycc = torch.from_numpy(ycc).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        y = reference(ycc[:, :1])
    cbcr = imresize(ycc[:, 1:], scale=4)
    up = torch.cat([y, cbcr], 1)[0].permute(1, 2, 0).double().numpy() * 255
    expected = torch.from_numpy(ycbcr2rgb(up)).permute(2, 0, 1).float()

    model = percepkit.load(tmp_path / "y.pth")
    assert model.channels == 1
    with torch.no_grad():
        torch.testing.assert_close(model(image[None])[0], expected, atol=2e-5, rtol=0)
    assert run_cli(["upscale", str(tmp_path / "y.pth"), str(tmp_path / "lr.png"), "-o",
                    str(tmp_path / "up.png"), "-q"]) == 0
    assert (read_image(tmp_path / "up.png") - expected.clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6

    # eval: the same output is scored, and the record names the protocol
    from percepkit.data.benchmark_sets import quantize
    from percepkit.metrics import psnr

    (tmp_path / "hr").mkdir()
    (tmp_path / "lrs").mkdir()
    hr = torch.rand(3, 72, 84)
    write_image(tmp_path / "hr" / "a.png", hr)
    write_image(tmp_path / "lrs" / "a.png", image)
    assert run_cli(["convert", str(tmp_path / "y.pth"), str(tmp_path / "y.safetensors")]) == 0
    for ckpt in ("y.pth", "y.safetensors"):
        assert run_cli(["eval", "--hr-dir", str(tmp_path / "hr"), "--lr-dir",
                        str(tmp_path / "lrs"), "--checkpoint", str(tmp_path / ckpt),
                        "--metrics", "psnr", "--json", str(tmp_path / f"{ckpt}.json")]) == 0
        record = json.loads((tmp_path / f"{ckpt}.json").read_text())
        want = float(psnr(crop_border=4)(quantize(expected.clamp(0, 1))[None],
                                         read_image(tmp_path / "hr" / "a.png")[None]))
        assert record["sets"][0]["mean"]["psnr"] == pytest.approx(want, abs=1e-6), ckpt
        assert "SRCNN protocol" in record["model_info"]["protocol"]


@pytest.mark.extra("models")
def test_a_third_party_model_scored_on_given_lr_files_does_not_claim_matlab_bicubic(tmp_path):
    import numpy as np
    from PIL import Image

    _save(_spandrel_nets()["compact"], tmp_path / "c.pth", "plain")
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "hr/a.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "lr/a.png")
    assert run_cli(["eval", "--checkpoint", str(tmp_path / "c.pth"), "--hr-dir",
                    str(tmp_path / "hr"), "--lr-dir", str(tmp_path / "lr"), "--metrics", "psnr",
                    "--json", str(tmp_path / "r.json")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert "--lr-dir" in record["model_info"]["degradation"]
    assert "MATLAB" not in record["convention"]["data"].split("LR = ")[1].split(";")[0]
