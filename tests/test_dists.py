"""DISTS: the shipped alpha/beta are the authors' file; values equal the reference implementation
(DISTS_pytorch.DISTS) on real images; no weights -> a clear refusal, never a random network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import percepkit.metrics.dists as dists_module
from percepkit.errors import MissingWeightsError
from percepkit.metrics import DISTS
from percepkit.metrics.dists import dists_alpha_beta
from percepkit.registry import METRICS


def _set5(names: tuple[str, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(bicubic x4 reconstruction, HR) pairs of Set5 images, (1, 3, H, W) float32 in [0, 1]."""
    from percepkit.data.benchmark_sets import quantize
    from percepkit.data.imresize import imresize
    from percepkit.registry import DATASETS

    ds = DATASETS.build({"name": "set5", "scale": 4})
    stems = [p.stem for p in ds.hr_paths]
    pairs = []
    for name in names:
        s = ds.sample(stems.index(name))
        pairs.append((quantize(imresize(s.lr.double(), scale=4).float())[None], s.hr[None]))
    return pairs


def _reference_package() -> Path:
    ref = pytest.importorskip("DISTS_pytorch.DISTS_pt", reason="needs the reference package "
                              "dists-pytorch (pip install 'percepkit[dev]')")
    return Path(ref.__file__).parent


def test_shipped_alpha_beta_equal_the_authors_file():
    alpha, beta = dists_alpha_beta()
    assert alpha.shape == beta.shape == (1, 1475, 1, 1)
    source = torch.load(_reference_package() / "weights.pt", map_location="cpu",
                        weights_only=True)
    assert torch.equal(alpha, source["alpha"]) and torch.equal(beta, source["beta"])


def test_damaged_alpha_beta_refuse(monkeypatch, tmp_path):
    bad = tmp_path / "dists_alpha_beta.safetensors"
    good = dists_module.asset_path("dists", "dists_alpha_beta.safetensors")
    bad.write_bytes(good.read_bytes()[:-4] + b"\x01\x02\x03\x04")
    monkeypatch.setattr(dists_module, "asset_path", lambda *parts: bad)
    with pytest.raises(MissingWeightsError, match="damaged"):
        dists_alpha_beta()


def test_dists_without_weights_refuses(isolated_weights):
    with pytest.raises(MissingWeightsError, match="PERCEPKIT_WEIGHTS"):
        DISTS()
    from percepkit.evaluation.evaluate import build_metrics

    built, infos = build_metrics(["psnr", "dists"], crop_border=4)
    assert "dists" not in built and "PERCEPKIT_WEIGHTS" in infos[1].unavailable


@pytest.mark.realweights
def test_dists_matches_reference_implementation(real_weights_dir, monkeypatch):
    """DISTS_pytorch.DISTS with torchvision's VGG16 carrying the same ImageNet weights."""
    ref_dir = _reference_package()
    import torchvision
    from DISTS_pytorch import DISTS_pt

    from percepkit.models.weights import torchvision_features_state

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    state = torchvision_features_state("vgg16")
    original = torchvision.models.vgg16

    def vgg16_with_shared_weights(pretrained: bool = False, **_: object) -> torch.nn.Module:
        net = original(weights=None)
        net.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        return net

    monkeypatch.setattr(DISTS_pt.models, "vgg16", vgg16_with_shared_weights)  # no download
    ref = DISTS_pt.DISTS(load_weights=False)  # its loader reads sys.prefix/weights.pt
    weights = torch.load(ref_dir / "weights.pt", map_location="cpu", weights_only=True)
    ref.alpha.data, ref.beta.data = weights["alpha"], weights["beta"]
    metric = METRICS.build("dists")
    assert metric.higher_is_better is False and "whole image" in metric.convention
    for out, hr in _set5(("bird", "butterfly")):
        got = metric(out, hr)
        with torch.no_grad():
            expected = ref(out, hr)  # RGB in [0, 1]; require_grad=False, batch_average=False
        assert got.dtype == torch.float64 and got.shape == (1,)
        assert got.item() == pytest.approx(expected.item(), abs=1e-4)
        assert 0.1 < got.item() < 0.4
    assert metric(hr, hr).abs().item() < 1e-6
    cropped = METRICS.build({"name": "dists", "crop_border": 4})
    assert cropped(out, hr).item() != got.item() and "4 px border" in cropped.convention


@pytest.mark.realweights
def test_eval_prints_every_convention(real_weights_dir, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from percepkit.cli import cli

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", "--set5", "--metrics", "psnr,ssim,lpips,dists,ms_ssim",
                                 "--json", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "MS-SSIM as MATLAB msssim.m" in r.output and "LPIPS/DISTS: whole image" in r.output
    data = json.loads(out.read_text())
    mean = data["sets"][0]["mean"]
    assert set(data["convention"]["metrics"]) == {"psnr", "ssim", "lpips", "dists", "ms_ssim"}
    assert round(mean["dists"], 4) == 0.2121 and round(mean["ms_ssim"], 4) == 0.9618
    assert round(mean["lpips"], 4) == 0.3407 and round(mean["psnr"], 2) == 28.43
