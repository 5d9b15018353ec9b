"""The restoration tasks' benchmark protocols: seeding, degradations, metric conventions."""

from __future__ import annotations

import math

import pytest
import torch

from percepkit.errors import PercepkitError
from percepkit.evaluation.evaluate import build_metrics
from percepkit.evaluation.protocols import (
    ProtocolSet,
    deblur_protocol,
    denoise_protocol,
    image_seed,
    jpeg_protocol,
    make_protocol,
)
from percepkit.registry import DATASETS


def _image(seed: int = 0, channels: int = 3, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((channels, size, size), generator=g).mul(255).round().div(255)


def test_seed_is_stable_and_depends_on_task_and_name() -> None:
    # pinned: a change here changes every published number of the denoise protocol
    assert image_seed("denoise", "baby") == 4976543355861625239
    assert image_seed("denoise", "baby") != image_seed("denoise", "bird")
    assert image_seed("denoise", "baby") != image_seed("deblur", "baby")
    assert 0 <= image_seed("jpeg", "x") < 2**63


def test_denoise_same_noisy_image_twice_and_differs_across_images() -> None:
    p = denoise_protocol(25)
    x = _image()
    a, b = p.degrade(x, "baby"), denoise_protocol(25).degrade(x.clone(), "baby")
    assert torch.equal(a, b)
    c = p.degrade(x, "bird")
    assert not torch.equal(a, c)
    # the noise is N(0, 25/255) and neither clipped nor rounded (DnCNN's protocol)
    noise = (a - x) * 255
    assert abs(float(noise.std()) - 25) < 1.5 and abs(float(noise.mean())) < 1.0
    assert float(a.min()) < 0 or float(a.max()) > 1
    assert not torch.equal(a, a.mul(255).round().div(255))


def test_denoise_set_is_the_same_whatever_the_order() -> None:
    p = denoise_protocol(15)
    ds = ProtocolSet(DATASETS.build({"name": "set5"}), p)
    last = ds.sample(len(ds) - 1)
    again = ProtocolSet(DATASETS.build({"name": "set5"}), p).sample(len(ds) - 1)
    assert torch.equal(last.lr, again.lr) and torch.equal(last.hr, again.hr)
    assert last.lr.shape == last.hr.shape  # scale 1, no mod-crop
    # the input's PSNR is the noise level's: 20 log10(255 / 15) for unclipped noise
    mse = float(((last.lr - last.hr) * 255).double().pow(2).mean())
    assert abs(10 * math.log10(255**2 / mse) - 20 * math.log10(255 / 15)) < 0.05


def test_deblur_blurs_then_adds_noise() -> None:
    p = deblur_protocol()
    x = _image(1)
    y = p.degrade(x, "img")
    assert torch.equal(y, p.degrade(x, "img"))
    assert p.level == {"sigma": 1.6, "kernel_size": 25, "noise": 2.55}
    assert [s["name"] for s in p.steps] == ["gaussian_blur", "gaussian_noise"]
    # blurred: much less high-frequency energy than the random input
    assert float(y.diff(dim=-1).abs().mean()) < 0.5 * float(x.diff(dim=-1).abs().mean())


def test_jpeg_is_a_real_8bit_codec_roundtrip() -> None:
    from percepkit.data.degradations import jpeg_roundtrip

    x = _image(2)
    y = jpeg_protocol(10).degrade(x, "img")
    assert torch.equal(y, y.mul(255).round().div(255))
    assert torch.allclose(y, jpeg_roundtrip(x, 10))
    g = jpeg_protocol(10).degrade(_image(2, channels=1), "img")  # grey stays grey
    assert g.shape[0] == 1


def test_metric_conventions_rgb_no_crop_for_denoise_and_y_for_jpeg() -> None:
    for proto, channel in ((denoise_protocol(25), "rgb"), (deblur_protocol(), "rgb"),
                           (jpeg_protocol(20), "y")):
        metrics, infos = build_metrics(["psnr", "ssim"], crop_border=4,
                                       extra=proto.metric_specs(["psnr", "ssim"]))
        for name in ("psnr", "ssim"):
            assert metrics[name].channel == channel
            assert metrics[name].crop_border == 0
        assert ("RGB" if channel == "rgb" else "Y") in proto.to_dict()["scored"]
    # RGB and Y PSNR differ on a colour image whose error is not grey
    x = _image(3)
    y = denoise_protocol(25).degrade(x, "a").clamp(0, 1)
    rgb, _ = build_metrics(["psnr"], extra=denoise_protocol().metric_specs(["psnr"]))
    yy, _ = build_metrics(["psnr"], extra=jpeg_protocol().metric_specs(["psnr"]))
    assert abs(float(rgb["psnr"](y[None], x[None])) - float(yy["psnr"](y[None], x[None]))) > 0.5


@pytest.mark.parametrize("task, level, needle", [
    ("denoise", {"sigma": 300}, "sigma must be a number between 0 and 255"),
    ("jpeg", {"quality": 20.5}, "quality must be an integer"),
    ("deblur", {"kernel_size": 24}, "kernel_size must be odd"),
    ("dehaze", {}, "no restoration protocol for task 'dehaze'"),
])
def test_bad_levels_are_one_sentence(task: str, level: dict, needle: str) -> None:
    with pytest.raises(PercepkitError, match=needle):
        make_protocol(task, **level)


def test_protocol_statement_is_written_for_results_files() -> None:
    d = denoise_protocol(50).to_dict()
    assert d["task"] == "denoise" and d["sigma"] == 50
    assert d["degradations"] == [{"name": "gaussian_noise", "sigma": 50.0, "clip": False}]
    assert "not clipped" in d["input"] and "sha256" in d["seed"]


def test_kernel_blur_draws_levin_kernels_from_the_sample_generator(tmp_path) -> None:
    import numpy as np

    from percepkit.data.degradations import load_kernels
    from percepkit.registry import DEGRADATIONS

    bank = load_kernels("levin09")
    assert [k.shape[0] for k in bank] == [19, 17, 15, 27, 13, 21, 23, 23]
    assert all(abs(float(k.sum()) - 1) < 1e-12 for k in bank)
    step = DEGRADATIONS.build({"name": "kernel_blur", "index": [2, 3]})
    drawn = {step.draw_kernel(torch.Generator().manual_seed(s)).shape[0] for s in range(40)}
    assert drawn == {17, 15}  # k2 and k3 only
    x = _image(4)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(step(x, g1), step(x, g2))
    with pytest.raises(PercepkitError, match="index must be between 1 and 8"):
        DEGRADATIONS.build({"name": "kernel_blur", "index": 9})
    bad = tmp_path / "bad.npz"
    np.savez(bad, k=np.ones((4, 4)))
    with pytest.raises(PercepkitError, match="odd side"):
        load_kernels(str(bad))
    own = tmp_path / "own.npz"
    np.savez(own, a=np.ones((3, 3)), b=np.eye(5))
    assert [k.shape[0] for k in load_kernels(str(own))] == [3, 5]


def test_deblur_with_a_levin_kernel() -> None:
    p = deblur_protocol(kernel="levin09:4")
    assert p.level == {"kernel": "levin09:4", "noise": 2.55}
    assert p.steps[0] == {"name": "kernel_blur", "kernels": "levin09", "index": 4}
    assert p.label == "deblur kernel levin09:4 noise 2.55"
    x = _image(6)
    assert torch.equal(p.degrade(x, "a"), p.degrade(x, "a"))
    assert not torch.equal(p.degrade(x, "a"), deblur_protocol().degrade(x, "a"))
    with pytest.raises(PercepkitError, match="either a Gaussian blur"):
        deblur_protocol(sigma=2.0, kernel="levin09:1")
    with pytest.raises(PercepkitError, match="levin09:N with N from 1 to 8"):
        deblur_protocol(kernel="levin09:0")
