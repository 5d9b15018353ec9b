"""Transform networks: output shapes and parameter counts of every configuration.

All networks here are randomly initialised: these tests check shapes and plumbing only.
"""

from __future__ import annotations

import pytest
import torch

from percepkit.errors import RecipeError
from percepkit.nets.transforms import JohnsonStyle, _wide_tanh
from percepkit.registry import TRANSFORMS


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Counts by hand, e.g. johnson_sr x4 with batch norm (convs before BN have no bias):
# c9s1-64: 3*64*81 + 2*64(BN) = 15680; R64: 2*(64*64*9 + 128) = 73984, x4 = 295936;
# u64 (deconv): 64*64*9 + 128 = 36992, x2 = 73984; c9s1-3: 64*3*81 + 3 = 15555; total 401155.
CASES = [
    ({"name": "johnson_style"}, (2, 3, 256, 256), (2, 3, 256, 256), 1_677_635),
    ({"name": "johnson_style", "norm": "batch"}, (1, 3, 256, 256), (1, 3, 256, 256), 1_677_635),
    ({"name": "johnson_style", "upsample": "resize_conv"}, (1, 3, 64, 96), (1, 3, 64, 96),
     1_677_635),
    ({"name": "johnson_style_fast"}, (1, 3, 64, 64), (1, 3, 64, 64), 496_579),
    # norm none (the zoo's style nets): a bias (C) instead of instance norm's affine (2C) on
    # the 15 normalised convs, C summing to 32+64+64+10*64+64+32 = 896 (full net: 1600)
    ({"name": "johnson_style_fast", "norm": "none"}, (1, 3, 64, 64), (1, 3, 64, 64), 495_683),
    ({"name": "johnson_style", "norm": "none", "upsample": "resize_conv"}, (1, 3, 64, 64),
     (1, 3, 64, 64), 1_676_035),
    ({"name": "johnson_sr", "scale": 4}, (2, 3, 72, 72), (2, 3, 288, 288), 401_155),
    ({"name": "johnson_sr", "scale": 8}, (1, 3, 36, 36), (1, 3, 288, 288), 438_147),
    ({"name": "johnson_sr", "scale": 2}, (1, 3, 36, 36), (1, 3, 72, 72), 364_163),
    ({"name": "johnson_sr", "scale": 4, "upsample": "resize_conv"}, (1, 3, 20, 24),
     (1, 3, 80, 96), 401_155),
    ({"name": "johnson_sr", "scale": 4, "norm": "none", "skip": True}, (1, 3, 24, 24),
     (1, 3, 96, 96), 400_451),
    ({"name": "srcnn", "scale": 4}, (1, 3, 24, 20), (1, 3, 96, 80), 20_099),
    ({"name": "srcnn", "scale": 3}, (1, 3, 10, 10), (1, 3, 30, 30), 20_099),
    ({"name": "bicubic", "scale": 4}, (1, 3, 24, 20), (1, 3, 96, 80), 0),
    # dncnn: 3*64*9 + 64 (first conv, bias) = 1792; 15 x (64*64*9 + 128 BN) = 554880;
    # 64*3*9 (last conv) = 1728; total 558400
    ({"name": "dncnn"}, (1, 3, 20, 24), (1, 3, 20, 24), 558_400),
    # depth 10, 32 filters: 896 + 8 x (9216 + 64) + 864 = 76000
    ({"name": "dncnn", "depth": 10, "channels": 32}, (1, 3, 17, 13), (1, 3, 17, 13), 76_000),
    # norm none: biases on every conv: 896 + 8 x 9248 + 867 = 75747
    ({"name": "dncnn", "depth": 10, "channels": 32, "norm": "none"}, (1, 3, 8, 8), (1, 3, 8, 8),
     75_747),
    ({"name": "identity"}, (1, 3, 5, 7), (1, 3, 5, 7), 0),
]


@pytest.mark.parametrize(("spec", "in_shape", "out_shape", "params"), CASES,
                         ids=[str(c[0]) for c in CASES])
def test_random_init_shapes_and_parameter_counts(spec, in_shape, out_shape, params):
    torch.manual_seed(0)
    model = TRANSFORMS.build(spec).eval()
    assert _params(model) == params
    with torch.no_grad():
        y = model(torch.rand(in_shape))
    assert tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()


def test_random_init_tanh_output_stays_in_unit_range():
    model = TRANSFORMS.build({"name": "johnson_sr", "scale": 4}).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 16, 16) * 10)
    assert y.min() >= 0 and y.max() <= 1


def test_skip_net_starts_as_bicubic():
    """Zero-initialised last conv: the untrained skip net is exactly bicubic upsampling."""
    x = torch.rand(1, 3, 12, 12)
    skip = TRANSFORMS.build({"name": "johnson_sr", "scale": 4, "norm": "none", "skip": True})
    bicubic = TRANSFORMS.build({"name": "bicubic", "scale": 4})
    with torch.no_grad():
        torch.testing.assert_close(skip(x), bicubic(x))


def test_task_and_scale_attributes():
    assert TRANSFORMS.build("johnson_style").task == "style"
    sr = TRANSFORMS.build({"name": "johnson_sr", "scale": 8})
    assert (sr.task, sr.scale) == ("sr", 8)


def test_non_power_of_two_scale_is_rejected():
    with pytest.raises(ValueError, match="power-of-two"):
        TRANSFORMS.build({"name": "johnson_sr", "scale": 3})


def test_restoration_nets_are_residual_and_scale_one():
    """Random init (plumbing only): dncnn returns its input minus the net's output, and its
    last conv starts at zero, so the untrained net is the identity; both restoration
    transforms are task 'restore', scale 1."""
    x = torch.rand(1, 3, 9, 9) * 1.4 - 0.2  # noisy inputs leave [0, 1]
    for norm in ("batch", "none"):
        net = TRANSFORMS.build({"name": "dncnn", "depth": 3, "channels": 8, "norm": norm}).eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), x)
        torch.nn.init.normal_(net.net[-1].weight)
        with torch.no_grad():
            assert not torch.allclose(net(x), x)
    for name in ("dncnn", "identity"):
        t = TRANSFORMS.build(name)
        assert (t.task, t.scale) == ("restore", 1)
    with pytest.raises(ValueError, match="depth >= 2"):
        TRANSFORMS.build({"name": "dncnn", "depth": 1})


@pytest.mark.parametrize("name", ["johnson_style", "johnson_style_fast", "johnson_style_lite"])
def test_style_nets_take_a_linear_output_random_init_plumbing(name):
    """``output: linear`` (pytorch/examples' choice) returns the last convolution unbounded;
    the default tanh stays within [0, 1]. Randomly initialised weights: plumbing only."""
    torch.manual_seed(0)
    tanh = TRANSFORMS.build({"name": name})
    linear = TRANSFORMS.build({"name": name, "output": "linear"})
    linear.load_state_dict(tanh.state_dict())
    for p in linear.parameters():
        p.data.mul_(4)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert tanh(x).min() >= 0 and tanh(x).max() <= 1
        y = linear(x)
    assert y.min() < 0 or y.max() > 1


def test_clamp_output_stays_in_range_and_passes_the_gradient_where_saturated_random_init():
    """``output: clamp``: 0.5 + the last convolution, clamped to [0, 1]; a saturated pixel
    still gets the loss's gradient (a tanh's is ~0 there: why the tanh nets keep their white
    blobs, docs/zoo.md). Randomly initialised weights: plumbing only."""
    torch.manual_seed(0)
    net = TRANSFORMS.build({"name": "johnson_style_lite", "output": "clamp"})
    net.net[-1].weight.data.mul_(50)
    x = torch.rand(1, 3, 32, 32)
    y = net(x)
    assert y.min() == 0 and y.max() == 1
    saturated = (y.detach() == 1)
    assert saturated.any()
    (y * saturated).sum().backward()
    assert net.net[-1].bias.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(net(x), y.detach())
    with pytest.raises(RecipeError, match="'clamp', got 'sigmoid'"):
        TRANSFORMS.build({"name": "johnson_style_lite", "output": "sigmoid"})


def test_wide_tanh_output_reaches_white_at_a_finite_input_and_is_clamped_outside_training():
    """``output: tanh_wide`` (fast-neural-style's ``150 * tanh``): in training the output
    overshoots [0, 1] (the loss sees it) and the gradient at white is alive; in eval it is
    clamped to [0, 1]. The paper's ``tanh`` head reaches white only at +inf."""
    x = torch.linspace(-4, 4, 81, requires_grad=True)
    wide = JohnsonStyle(output="tanh_wide", channels=(8, 8, 8), residual_blocks=0)
    y = _wide_tanh(x, training=True)
    assert y.min() < -0.08 and y.max() > 1.08
    first_white = int((y.detach() >= 1).nonzero()[0])
    assert 1.0 < x[first_white] < 2.0  # atanh(127.5 / 150) = 1.26
    y.sum().backward()
    assert x.grad[first_white] > 0.1  # at white the gradient is alive
    torch.manual_seed(0)
    wide.net[-1].weight.data.mul_(50)
    img = torch.rand(1, 3, 32, 32)
    wide.train()
    assert wide(img).max() > 1 and wide(img).min() < 0
    wide.eval()
    assert wide(img).max() == 1 and wide(img).min() == 0


def test_he_init_starts_residual_blocks_as_identity_and_passes_the_signal():
    """``init: he`` (random init, plumbing): each residual block is the identity at the start,
    and the no-norm net's output varies with the input instead of the flat grey of torch's
    default init (std ~0.01 before tanh on a photo-like input)."""
    from percepkit.nets.transforms import JohnsonStyle, ResidualBlock

    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    he = JohnsonStyle(norm="none", upsample="resize_conv", channels=(8, 16, 32), init="he")
    default = JohnsonStyle(norm="none", upsample="resize_conv", channels=(8, 16, 32))
    assert _params(he) == _params(default)
    blocks = [m for m in he.net if isinstance(m, ResidualBlock)]
    h = torch.rand(1, 32, 8, 8)
    with torch.no_grad():
        assert all(torch.equal(b(h), h) for b in blocks)
        assert he.net(x).std() > 5 * default.net(x).std()
    with pytest.raises(ValueError, match="init must be"):
        JohnsonStyle(init="xavier")
