"""Third-party networks: pytorch/examples fast_neural_style models give the same images here.

``TransformerNet`` below is pytorch/examples' published architecture
(fast_neural_style/neural_style/transformer_net.py), randomly initialised: the test checks the
key mapping and the arithmetic, not a trained model.
"""

from __future__ import annotations

import pickle

import torch
from cli_runner import run_cli
from torch import nn

import percepkit
from percepkit.checkpoint import read_metadata
from percepkit.images import read_image, write_image
from percepkit.inference import Predictor


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


def test_unknown_architecture_names_the_file_and_what_is_supported(tmp_path, capsys):
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "x.pth")
    assert run_cli(["convert", str(tmp_path / "x.pth"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "x.pth" in err and "body.0.weight" in err and "pytorch/examples" in err
