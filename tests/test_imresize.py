"""MATLAB-compatible bicubic imresize: against an independent numpy port and hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from percepkit.data.imresize import imresize, mod_crop, output_size, resize_matrix


# -- an independent, deliberately naive port of MATLAB's imresize (one output pixel at a time) --
def _keys_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _resize_axis_ref(a: np.ndarray, n_out: int, scale: float, antialias: bool) -> np.ndarray:
    """Resize the first axis of ``a`` (float64) with MATLAB's rules, by explicit loops."""
    n_in = a.shape[0]
    shrink = scale < 1 and antialias
    width = 4.0 / scale if shrink else 4.0
    pad = int(math.ceil(width)) + 2
    # symmetric padding: MATLAB mirrors with the edge pixel repeated; np.pad 'symmetric' does too,
    # but one mirror is not enough for tiny inputs, so repeat the mirrored period.
    period = np.concatenate([a, a[::-1]], axis=0)
    reps = pad // n_in + 2
    tiled = np.concatenate([period] * (2 * reps), axis=0)
    offset = reps * 2 * n_in  # tiled[offset + i] == a[i] for 0 <= i < n_in
    out = np.zeros((n_out,) + a.shape[1:])
    for k in range(n_out):
        centre = (k + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
        first = math.floor(centre - width / 2)
        acc = np.zeros(a.shape[1:])
        total = 0.0
        for j in range(first, first + pad):  # 1-based input index j
            d = centre - j
            w = scale * _keys_cubic(d * scale) if shrink else _keys_cubic(d)
            acc = acc + w * tiled[offset + j - 1]
            total += w
        out[k] = acc / total
    return out


def matlab_imresize_ref(img: np.ndarray, scale: float | None = None,
                        size: tuple[int, int] | None = None,
                        antialias: bool = True) -> np.ndarray:
    """HxW numpy reference (rows first, as MATLAB does for equal scales)."""
    h, w = img.shape
    if scale is not None:
        oh, ow = math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9)
        sh = sw = scale
    else:
        oh, ow = size
        sh, sw = oh / h, ow / w
    out = _resize_axis_ref(img.astype(np.float64), oh, sh, antialias)
    return _resize_axis_ref(out.T, ow, sw, antialias).T


CASES = [
    ((24, 20), dict(scale=1 / 4)),
    ((24, 21), dict(scale=1 / 3)),
    ((18, 22), dict(scale=1 / 2)),
    ((7, 9), dict(scale=2)),
    ((6, 5), dict(scale=3)),
    ((5, 6), dict(scale=4)),
    ((13, 17), dict(scale=0.7)),
    ((11, 8), dict(scale=1.3)),
    ((16, 16), dict(size=(9, 23))),
    ((20, 24), dict(scale=1 / 4, antialias=False)),
    ((3, 2), dict(scale=1 / 2)),  # tiny: mirrored taps repeat
    ((1, 1), dict(scale=4)),
]


@pytest.mark.parametrize(("shape", "kwargs"), CASES)
def test_matches_naive_matlab_port(shape, kwargs):
    rng = np.random.default_rng(sum(shape))
    img = rng.random(shape)
    ref = matlab_imresize_ref(img, **kwargs)
    out = imresize(torch.from_numpy(img), **kwargs).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_known_weights_for_x2_upscaling():
    # Interior x2 weights of the a=-0.5 kernel at distances 1.75, 0.75, 0.25, 1.25.
    m = resize_matrix(8, 16)
    row = m[6]  # output 7 (1-based): centre 3.75 -> inputs 2, 3, 4, 5 (1-based)
    np.testing.assert_allclose(row[1:5], [-0.0234375, 0.2265625, 0.8671875, -0.0703125])
    assert row[[0, 5, 6, 7]].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_constant_and_ramp_known_values():
    const = torch.full((2, 3, 37, 41), 0.3, dtype=torch.float64)
    for s in (1 / 4, 1 / 3, 0.55, 2, 3):
        np.testing.assert_allclose(imresize(const, scale=s).numpy(), 0.3, atol=1e-14)
    # Keys' kernel reproduces linear functions: interior samples land exactly on the ramp.
    ramp = torch.arange(32, dtype=torch.float64).view(1, 32).expand(4, 32)
    up = imresize(ramp, size=(4, 64))[0]  # output k (1-based) sits at input (k/2 + 1/4), 1-based
    k = torch.arange(1, 65, dtype=torch.float64)
    np.testing.assert_allclose(up[4:-4].numpy(), (k / 2 + 0.25 - 1)[4:-4].numpy(), atol=1e-12)
    down = imresize(ramp, size=(4, 8))[0]  # antialiased /4: mean position of each 4-pixel block
    np.testing.assert_allclose(down[2:-2].numpy(), (4 * torch.arange(8.0) + 1.5)[2:-2].numpy(),
                               atol=1e-12)


def test_symmetric_padding_edge():
    # A step at the very edge: symmetric padding repeats the edge pixel, replicate would not
    # differ here but reflect (no repeat) would; check against the naive port at the border.
    img = np.zeros((1, 12))
    img[0, 0] = 1.0
    ref = matlab_imresize_ref(img, scale=2)
    out = imresize(torch.from_numpy(img), scale=2).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert out[0, 0] > 1.0  # overshoot of the cubic kernel, not clamped


def test_output_size_is_ceil_and_robust_to_round_off():
    assert output_size(510, 1 / 3) == 170
    assert output_size(511, 1 / 3) == 171
    assert output_size(30, 0.1) == 3
    assert output_size(7, 4) == 28
    x = torch.rand(3, 511, 1021)
    assert imresize(x, scale=1 / 4).shape == (3, 128, 256)


def test_batched_dtypes_and_grad():
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    y = imresize(x, scale=1 / 4)
    assert y.shape == (2, 3, 5, 6)
    for b in range(2):
        torch.testing.assert_close(imresize(x[b], scale=1 / 4), y[b])
    y32 = imresize(x.float(), scale=1 / 4)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y, atol=1e-6, rtol=0)
    small = torch.rand(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, scale=2), (small,))


def test_round_trip_identity_and_errors():
    x = torch.rand(3, 8, 8)
    torch.testing.assert_close(imresize(x, scale=1), x)
    with pytest.raises(TypeError, match="floating-point"):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), scale=2)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, scale=2, size=(4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="positive"):
        imresize(x, scale=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.rand(2, 3, 40, 36)
    torch.testing.assert_close(imresize(x.cuda(), scale=1 / 4).cpu(), imresize(x, scale=1 / 4),
                               atol=1e-5, rtol=0)


def test_mod_crop():
    x = torch.rand(2, 3, 23, 17)
    assert mod_crop(x, 4).shape == (2, 3, 20, 16)
    assert mod_crop(x, 1).shape == x.shape
    torch.testing.assert_close(mod_crop(x, 3), x[..., :21, :15])
    with pytest.raises(ValueError):
        mod_crop(x, 0)
