"""PSNR/SSIM against scikit-image on Y and RGB arrays; MS-SSIM against pytorch_msssim and by hand;
LPIPS with real (never random) weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from percepkit.errors import MissingWeightsError, PercepkitError
from percepkit.metrics import LPIPS, MSSSIM, PSNR, SSIM, Metric, rgb_to_y
from percepkit.metrics.base import to_scored
from percepkit.metrics.fidelity import MS_SSIM_WEIGHTS, downsample_2x
from percepkit.registry import METRICS


def _pair(seed: int = 0, channels: int = 3, h: int = 40, w: int = 36) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 256, (2, channels, h, w), generator=g).double() / 255
    noise = torch.randint(-20, 21, target.shape, generator=g).double() / 255
    output = (target + noise).clamp(0, 1)
    return output, target


def _y_numpy(img: torch.Tensor) -> np.ndarray:
    """BT.601 studio-range Y, written out independently of percepkit (HxW, 0..255)."""
    r, g, b = (img[i].numpy().astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b)


SK_SSIM = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


@pytest.mark.parametrize("crop", [0, 4])
def test_y_channel_matches_skimage(crop):
    out, tgt = _pair()
    c = slice(crop, -crop) if crop else slice(None)
    psnr = PSNR(crop_border=crop)(out, tgt)
    ssim = SSIM(crop_border=crop)(out, tgt)
    assert psnr.shape == ssim.shape == (2,)
    for b in range(2):
        ya, yb = _y_numpy(out[b])[c, c], _y_numpy(tgt[b])[c, c]
        assert psnr[b].item() == pytest.approx(
            peak_signal_noise_ratio(yb, ya, data_range=255), abs=1e-10)
        assert ssim[b].item() == pytest.approx(structural_similarity(ya, yb, **SK_SSIM), abs=1e-10)


def test_rgb_matches_skimage():
    out, tgt = _pair(1)
    psnr = METRICS.build({"name": "psnr", "channel": "rgb", "crop_border": 2})(out, tgt)
    ssim = METRICS.build("ssim_rgb", crop_border=2)(out, tgt)
    for b in range(2):
        a = out[b].permute(1, 2, 0).numpy()[2:-2, 2:-2] * 255
        t = tgt[b].permute(1, 2, 0).numpy()[2:-2, 2:-2] * 255
        assert psnr[b].item() == pytest.approx(peak_signal_noise_ratio(t, a, data_range=255),
                                               abs=1e-10)
        assert ssim[b].item() == pytest.approx(
            structural_similarity(a, t, channel_axis=-1, **SK_SSIM), abs=1e-10)


def test_single_channel_scored_on_raw_values():
    out, tgt = _pair(2, channels=1)
    a, t = out[0, 0].numpy() * 255, tgt[0, 0].numpy() * 255
    assert PSNR()(out, tgt)[0].item() == pytest.approx(
        peak_signal_noise_ratio(t, a, data_range=255), abs=1e-10)
    assert SSIM()(out, tgt)[0].item() == pytest.approx(structural_similarity(a, t, **SK_SSIM),
                                                       abs=1e-10)
    # the same gray image stored as RGB is scored on studio-range Y: 219/255 of the error
    rgb = PSNR()(out.expand(-1, 3, -1, -1), tgt.expand(-1, 3, -1, -1))
    assert (rgb - PSNR()(out, tgt))[0].item() == pytest.approx(20 * math.log10(255 / 219))


def test_studio_range_y_is_1_32_db_above_full_range_yiq():
    out, tgt = _pair(3)
    ours = PSNR()(out, tgt)
    full = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    mse = ((out - tgt) * full * 255).sum(1).pow(2).flatten(1).mean(1)
    yiq = 10 * torch.log10(255**2 / mse)
    torch.testing.assert_close(ours - yiq, torch.full((2,), 20 * math.log10(255 / 219),
                                                      dtype=torch.float64))


def test_y_conversion_values():
    px = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]],
                      dtype=torch.float64).T.reshape(1, 3, 1, 3)
    torch.testing.assert_close(rgb_to_y(px).flatten(), torch.tensor(
        [16.0, 235.0, 16.0 + 65.481], dtype=torch.float64))


def test_identical_images_and_shape_errors():
    _, tgt = _pair(4)
    assert torch.isinf(PSNR()(tgt, tgt)).all()
    torch.testing.assert_close(SSIM()(tgt, tgt), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="differ in shape"):
        PSNR()(tgt, tgt[..., :-1])
    with pytest.raises(PercepkitError, match="too small"):
        SSIM(crop_border=15)(tgt, tgt)


def test_batched_equals_single_and_float32_inputs():
    out, tgt = _pair(5)
    both = SSIM(crop_border=3)(out.float(), tgt.float())
    one = SSIM(crop_border=3)(out[1:], tgt[1:])
    assert both[1].item() == pytest.approx(one[0].item(), abs=1e-9)


def test_registry_and_conventions():
    names = METRICS.list()
    for name in ("psnr", "ssim", "lpips", "psnr_rgb", "ssim_rgb", "ms_ssim", "ms_ssim_rgb",
                 "dists"):
        assert name in names
    m = METRICS.build({"name": "ssim", "crop_border": 4})
    assert isinstance(m, Metric) and m.higher_is_better
    assert "65.481" in m.convention and "11x11" in m.convention and "4 px" in m.convention
    with pytest.raises(PercepkitError, match="channel"):
        METRICS.build({"name": "psnr", "channel": "yiq"})


def test_lpips_without_weights_refuses(isolated_weights):
    with pytest.raises(MissingWeightsError, match="PERCEPKIT_WEIGHTS"):
        LPIPS()


@pytest.mark.realweights
def test_lpips_real_backbone_matches_independent_computation(real_weights_dir, monkeypatch):
    """LPIPS-alex recomputed from torchvision AlexNet + the lpips linear heads, by hand."""
    import lpips as lpips_pkg
    import torchvision

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    metric = LPIPS()
    out, tgt = _pair(6, h=64, w=64)
    out, tgt = out.float(), tgt.float()
    got = metric(out, tgt)
    assert torch.all(metric(tgt, tgt) == 0)

    from safetensors.torch import load_file

    alex = torchvision.models.alexnet(weights=None).features.eval()
    state = load_file(str(real_weights_dir / "alexnet_features_imagenet1k_v1.safetensors"))
    alex.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    heads = torch.load(f"{lpips_pkg.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        h, taps = (x * 2 - 1 - shift) / scale, []
        for i, layer in enumerate(alex):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):  # relu1..relu5
                taps.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return taps

    with torch.no_grad():
        total = sum((heads[f"lin{k}.model.1.weight"] * (fa - fb) ** 2).sum(1).mean((1, 2))
                    for k, (fa, fb) in enumerate(zip(feats(out), feats(tgt), strict=True)))
    torch.testing.assert_close(got.float(), total, atol=1e-5, rtol=1e-4)
    conv1 = metric.model.slices[0][0].weight
    torch.testing.assert_close(conv1, state["features.0.weight"])  # the real backbone, not random


def _set5_pair(name: str = "baby", multiple: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A Set5 HR image and its MATLAB-bicubic x4 reconstruction (8-bit), cropped top-left to a
    multiple of ``multiple`` (so that every MS-SSIM scale halves exactly)."""
    from percepkit.data.benchmark_sets import quantize
    from percepkit.data.imresize import imresize
    from percepkit.registry import DATASETS

    ds = DATASETS.build({"name": "set5", "scale": 4})
    sample = ds.sample([p.stem for p in ds.hr_paths].index(name))
    sr = quantize(imresize(sample.lr.double(), scale=4).float())
    h = sample.hr.shape[-2] // multiple * multiple
    w = sample.hr.shape[-1] // multiple * multiple
    return sr[None, :, :h, :w].double(), sample.hr[None, :, :h, :w].double()


@pytest.mark.parametrize("name", ["bird", "woman"])
def test_ms_ssim_matches_pytorch_msssim_on_real_images(name):
    """Sizes that halve exactly at every scale: pytorch_msssim (data_range 255, 11x11, 1.5) on
    the same Y planes. Its window is built in float32, hence 1e-6 rather than 1e-10."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    out, hr = _set5_pair(name)
    got = MSSSIM()(out, hr)
    ya, yb = to_scored(out, "y", 0), to_scored(hr, "y", 0)
    ref = pytorch_msssim.ms_ssim(ya, yb, data_range=255, size_average=False, win_size=11,
                                 win_sigma=1.5, weights=list(MS_SSIM_WEIGHTS))
    assert 0.9 < got.item() < 1
    assert got.item() == pytest.approx(ref.item(), abs=1e-6)
    rgb = MSSSIM(channel="rgb")(out, hr)
    ref_rgb = pytorch_msssim.ms_ssim(out * 255, hr * 255, data_range=255, size_average=False)
    assert rgb.item() == pytest.approx(ref_rgb.item(), abs=1e-6)


def test_ms_ssim_by_hand_on_odd_sizes():
    """MATLAB msssim.m downsampling: imfilter(x, ones(2)/4, 'symmetric', 'same'), x(1:2:end)."""
    x = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    torch.testing.assert_close(downsample_2x(x), torch.tensor([[[[3.0, 4.5], [7.5, 9.0]]]],
                                                             dtype=torch.float64))
    out, hr = _set5_pair("woman", multiple=1)  # 344x228: odd sizes at the coarser scales
    m = MSSSIM(crop_border=4)
    value = m(out, hr)
    # the product of per-scale factors, rebuilt from the single-scale SSIM metric's map
    from percepkit.metrics.fidelity import gaussian_window, ssim_terms

    a, b = to_scored(out, "y", 4), to_scored(hr, "y", 4)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total = 1.0
    for level, w in enumerate(MS_SSIM_WEIGHTS):
        if level:
            a, b = downsample_2x(a), downsample_2x(b)
        ssim_map, cs_map = ssim_terms(a, b, gaussian_window(), c1, c2)
        total *= float((ssim_map if level == 4 else cs_map).mean()) ** w
        if level == 0:  # the first factor's SSIM map is the SSIM metric's
            assert float(ssim_map.mean()) == pytest.approx(SSIM(crop_border=4)(out, hr).item(),
                                                           abs=1e-12)
    assert value.item() == pytest.approx(total, abs=1e-12)


def test_ms_ssim_identical_is_one_and_small_images_are_refused():
    out, hr = _set5_pair("bird")
    torch.testing.assert_close(MSSSIM()(hr, hr), torch.ones(1, dtype=torch.float64))
    assert MSSSIM()(out, hr).item() < 1
    small = hr[..., :170, :170]
    MSSSIM()(small[..., :161, :161], small[..., :161, :161])  # 161 px: the smallest that fits
    with pytest.raises(PercepkitError, match=r"too small for 5 scales|161x161"):
        MSSSIM(crop_border=5)(small, small)  # 160x160 after the crop
    m = METRICS.build({"name": "ms_ssim", "crop_border": 4})
    assert m.higher_is_better and "msssim.m" in m.convention and "0.0448" in m.convention


@pytest.mark.parametrize("shape", [(2, 3, 150, 97), (1, 1, 75, 2100), (1, 1, 11, 11)])
def test_strip_ssim_equals_whole_plane_maps(shape):
    """The cache-sized strips (in reused buffers) give the means of the whole-plane maps:
    several strips and a short last one, the 16-row floor of a wide image, a single window."""
    from percepkit.metrics.fidelity import gaussian_window, ssim_means, ssim_terms

    g = torch.Generator().manual_seed(3)
    a = torch.rand(shape, generator=g, dtype=torch.float64) * 255
    b = (a + torch.randn(shape, generator=g, dtype=torch.float64) * 20).clamp(0, 255)
    window, c1, c2 = gaussian_window(), 6.5025, 58.5225
    ssim_map, cs_map = ssim_terms(a, b, window, c1, c2)
    with torch.inference_mode():
        s, cs = ssim_means(a, b, window, c1, c2)
    torch.testing.assert_close(s, ssim_map.mean(dim=(-2, -1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(cs, cs_map.mean(dim=(-2, -1)), rtol=0, atol=1e-12)
    a.requires_grad_(True)  # a gradient to record: the whole-plane path, differentiable
    s_grad, _ = ssim_means(a, b, window, c1, c2)
    s_grad.sum().backward()
    torch.testing.assert_close(s_grad.detach(), s, rtol=0, atol=1e-12)
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_multi_strip_ssim_matches_skimage():
    out, tgt = _pair(7, h=230, w=190)  # several strips of rows
    ours = SSIM(crop_border=2)(out, tgt)
    for i in range(2):
        ya = _y_numpy(out[i])[2:-2, 2:-2]
        yb = _y_numpy(tgt[i])[2:-2, 2:-2]
        ref = structural_similarity(ya, yb, **SK_SSIM)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


def test_score_pair_converts_each_image_once(monkeypatch):
    """PSNR, SSIM and MS-SSIM on the same Y planes share one conversion and give the values of
    separate metric calls; a metric that is asked for but not built is None."""
    from percepkit.evaluation.evaluate import MetricInfo, build_metrics, score_pair
    from percepkit.metrics import base

    out, tgt = _pair(9, h=200, w=180)
    metrics, infos = build_metrics(["psnr", "ssim", "ms_ssim"], crop_border=4)
    calls = []
    real = base.to_scored
    monkeypatch.setattr(base, "to_scored", lambda *a: calls.append(1) or real(*a))
    values = score_pair(metrics, [*infos, MetricInfo("lpips", False, "", ".4f")], out[0], tgt[0])
    assert len(calls) == 2  # output and target, once each
    monkeypatch.undo()
    for name, metric in metrics.items():
        assert values[name] == pytest.approx(metric(out[:1], tgt[:1]).item(), abs=1e-12)
    assert values["lpips"] is None
    with pytest.raises(ValueError, match="differ in shape"):  # as a metric call refuses them
        score_pair(metrics, infos, out[0], tgt[0, :, :-1])
