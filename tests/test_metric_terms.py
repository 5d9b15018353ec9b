"""Metric-based loss terms: values against reference implementations on real images, float32
under autocast, finite gradients, identical images -> 0, and clear refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from percepkit.errors import MissingWeightsError, PercepkitError
from percepkit.losses import LossInputs, build_loss
from percepkit.registry import LOSS_NETWORKS, LOSSES


def _pairs(size: int, names: tuple[str, ...] = ("bird", "butterfly")
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Set5 bicubic x4 reconstructions and HR crops (top-left ``size`` px), (B, 3, s, s) float32."""
    from percepkit.data.benchmark_sets import quantize
    from percepkit.data.imresize import imresize
    from percepkit.registry import DATASETS

    ds = DATASETS.build({"name": "set5", "scale": 4})
    stems = [p.stem for p in ds.hr_paths]
    outs, hrs = [], []
    for name in names:
        s = ds.sample(stems.index(name))
        outs.append(quantize(imresize(s.lr.double(), scale=4).float())[..., :size, :size])
        hrs.append(s.hr[..., :size, :size])
    return torch.stack(outs), torch.stack(hrs)


def _value_and_grad(term, out: torch.Tensor, hr: torch.Tensor, autocast: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    out = out.clone().requires_grad_(True)
    if autocast is None:
        value = term(LossInputs(out, hr))
    else:
        with torch.autocast("cpu", dtype=autocast):
            value = term(LossInputs(out, hr))
    value.backward()
    return value.detach(), out.grad


def test_ssim_loss_is_one_minus_skimage_ssim_on_rgb():
    out, hr = _pairs(64)
    term = LOSSES.build("ssim")
    value, grad = _value_and_grad(term, out, hr)
    ref = np.mean([structural_similarity(
        o.permute(1, 2, 0).numpy(), h.permute(1, 2, 0).numpy(), channel_axis=-1, data_range=1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for o, h in zip(out, hr)])
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(1 - ref, abs=1e-5)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert abs(term(LossInputs(hr, hr)).item()) < 1e-6


def test_ms_ssim_loss_matches_pytorch_msssim():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    out, hr = _pairs(176)  # a multiple of 16 that holds 5 scales
    term = LOSSES.build({"name": "ms_ssim", "weight": 2.0})
    value, grad = _value_and_grad(term, out, hr)
    ref = pytorch_msssim.ms_ssim(out, hr, data_range=1.0, size_average=True)
    assert term.weight == 2.0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(1 - ref.item(), abs=1e-5)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert abs(term(LossInputs(hr, hr)).item()) < 1e-6


@pytest.mark.parametrize("name, size", [("ssim", 64), ("ms_ssim", 176)])
def test_ssim_losses_run_in_float32_under_autocast(name, size):
    out, hr = _pairs(size)
    term = LOSSES.build(name)
    plain, _ = _value_and_grad(term, out, hr)
    for dtype in (torch.bfloat16, torch.float16):
        value, grad = _value_and_grad(term, out, hr, autocast=dtype)
        assert value.dtype == torch.float32 and value.item() == plain.item()
        assert torch.isfinite(grad).all()


def test_ms_ssim_loss_refuses_small_patches_and_terms_need_a_target():
    out, hr = _pairs(176)
    with pytest.raises(PercepkitError, match="at least 161x161 for 5 scales"):
        LOSSES.build("ms_ssim")(LossInputs(out[..., :160, :160], hr[..., :160, :160]))
    with pytest.raises(PercepkitError, match="target"):
        LOSSES.build("ssim")(LossInputs(out, None))


def test_lpips_loss_network_features_need_vgg():
    with pytest.raises(PercepkitError, match="net: vgg"):
        LOSSES.build({"name": "lpips", "net": "alex", "features": "loss_network"})


def test_network_losses_without_weights_refuse(isolated_weights):
    for spec in ("dists", {"name": "lpips", "net": "alex"},
                 {"name": "lpips", "features": "loss_network"}):
        with pytest.raises(MissingWeightsError, match="PERCEPKIT_WEIGHTS"):
            LOSSES.build(spec)


def _lpips_reference(net: str, out: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """The lpips package's LPIPS with the same real backbone (loaded as the metric does)."""
    import lpips

    from percepkit.metrics.lpips import LPIPS_ARCH
    from percepkit.models.weights import torchvision_features_state

    with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, inside lpips
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    # lpips keeps torchvision's layer index inside each slice: "slice2.3.weight" <- "features.3"
    state = torchvision_features_state(LPIPS_ARCH[net])
    model.net.load_state_dict({k: state[f"features.{k.split('.', 1)[1]}"]
                               for k in model.net.state_dict()})
    with torch.no_grad():
        return model(out * 2 - 1, hr * 2 - 1).mean()


@pytest.mark.realweights
@pytest.mark.parametrize("net, features", [("alex", "own"), ("vgg", "own"),
                                           ("vgg", "loss_network")])
def test_lpips_loss_equals_lpips_package(net, features, real_weights_dir, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    out, hr = _pairs(64)
    spec = {"name": "lpips", "net": net, "features": features}
    if features == "own":
        loss = build_loss([spec], None)
    else:  # one VGG16 pass per image serves lpips and the feature term together
        network = LOSS_NETWORKS.build("vgg16")
        loss = build_loss([spec, {"name": "feature", "layers": ["relu2_2"]}], network)
        calls = []
        network.register_forward_hook(lambda *_: calls.append(1))
    x = out.clone().requires_grad_(True)
    total, parts = loss(x, hr)
    total.backward()
    assert parts["lpips"].item() == pytest.approx(_lpips_reference(net, out, hr).item(),
                                                  abs=1e-5)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if features == "loss_network":
        assert len(calls) == 2  # output and target, once each, for both terms
    assert loss(hr, hr)[1]["lpips"].item() == 0.0


@pytest.mark.realweights
def test_lpips_on_another_loss_network_is_refused(real_weights_dir, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    out, hr = _pairs(32, names=("bird",))
    loss = build_loss([{"name": "lpips", "features": "loss_network"}],
                      LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"}))
    with pytest.raises(PercepkitError, match="other relu1_2 values"):
        loss(out, hr)


@pytest.mark.realweights
def test_dists_loss_equals_metric_with_finite_gradients(real_weights_dir, monkeypatch):
    from percepkit.registry import METRICS

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    out, hr = _pairs(64)
    term = LOSSES.build({"name": "dists", "weight": 0.5})
    value, grad = _value_and_grad(term, out, hr)
    metric = METRICS.build("dists")
    assert value.item() == pytest.approx(metric(out, hr).mean().item(), abs=1e-6)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    half, grad16 = _value_and_grad(term, out, hr, autocast=torch.float16)
    assert half.dtype == torch.float32 and torch.isfinite(grad16).all()
    assert half.item() == pytest.approx(value.item(), abs=2e-2)
    assert abs(term(LossInputs(hr, hr)).item()) < 1e-6


@pytest.mark.realweights
@pytest.mark.parametrize("spec", ["dists", {"name": "lpips", "net": "alex"}, "ssim"])
def test_terms_take_the_bf16_output_of_an_autocast_transform(spec, real_weights_dir,
                                                             monkeypatch):
    """In bf16 training the transform's output is bf16 and the composite runs the terms with
    autocast off: the terms compute in float32 (a bf16 input once crashed `dists`' convs)."""
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    out, hr = _pairs(64)
    loss = build_loss([spec], None)
    reference = loss(out.bfloat16().float(), hr)[0]
    x = out.bfloat16().requires_grad_(True)
    total = loss(x, hr)[0]
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(x.grad.float()).all()
    assert total.item() == pytest.approx(reference.item(), abs=1e-6)


# -- grid --------------------------------------------------------------------------------------
def _with_grid(x: torch.Tensor, amplitude: float) -> torch.Tensor:
    """``x`` plus a fixed period-4 dot pattern of ``amplitude`` (0..1 scale)."""
    tile = torch.zeros(1, 1, 4, 4)
    tile[..., 1, 2] = amplitude
    return x + tile.repeat(1, 1, x.shape[-2] // 4, x.shape[-1] // 4)


def test_grid_term_is_the_grid_metric_above_its_margin_and_needs_no_target():
    from percepkit.api import create_metric

    torch.manual_seed(0)
    x = _with_grid(torch.rand(2, 3, 48, 64) * 0.2 + 0.4, 0.03)
    metric = create_metric("grid", period=4)(x, x)
    term = LOSSES.build({"name": "grid", "period": 4})
    assert float(term(LossInputs(x, None))) == pytest.approx(float(metric.mean()), rel=1e-5)
    margin = float(metric.min()) + 0.5 * float(metric.max() - metric.min())
    hinge = LOSSES.build({"name": "grid", "margin": margin})(LossInputs(x, None))
    assert float(hinge) == pytest.approx(float((metric - margin).clamp(min=0).mean()), rel=1e-5)
    assert float(LOSSES.build({"name": "grid", "margin": 255})(LossInputs(x, None))) == 0
    flat = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)  # no pattern: finite gradient
    term(LossInputs(flat, None)).backward()
    assert torch.isfinite(flat.grad).all()
    with pytest.raises(PercepkitError, match="grid loss got 6x6"):
        term(LossInputs(torch.rand(1, 3, 6, 6), None))


def test_descending_the_grid_term_removes_an_injected_pattern():
    torch.manual_seed(0)
    clean = torch.rand(1, 3, 64, 64) * 0.2 + 0.4
    x = _with_grid(clean, 0.05).requires_grad_(True)
    term = LOSSES.build({"name": "grid"})
    start = float(term(LossInputs(x, None)))
    opt = torch.optim.SGD([x], lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        term(LossInputs(x, None)).backward()
        opt.step()
    assert float(term(LossInputs(x, None)).detach()) < 0.1 * start
    # the pattern's own mean |change| is 0.05 / 16 = 0.003: the image itself barely moved
    assert float((x.detach() - clean).abs().mean()) < 0.005
