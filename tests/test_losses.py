"""Loss terms against values computed by hand on tiny tensors and against reference packages."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from percepkit.errors import MissingWeightsError, PercepkitError, RecipeError
from percepkit.losses import CompositeLoss, LossInputs, build_loss, gram_matrix
from percepkit.nets.lossnets import LossNetwork
from percepkit.registry import BUILTIN, LOSSES


class CountingNet(LossNetwork):
    """A fake loss network: 'id' is the input, 'double' is 2x the input; counts its calls."""

    layer_names = ["id", "double"]

    def __init__(self) -> None:
        super().__init__((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.calls = 0
        self.truncated_to = None

    def truncated(self, layers):
        self.truncated_to = self.check_layers(layers)
        return self

    def forward(self, x, layers):
        self.calls += 1
        return {k: {"id": x, "double": 2 * x}[k] for k in self.check_layers(layers)}


def test_pixel_l2_and_l1_by_hand():
    out = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    tgt = torch.tensor([[[[1.0, 0.0], [3.0, 8.0]]]])
    l2 = build_loss([{"name": "pixel"}], None)
    l1 = build_loss([{"name": "pixel", "kind": "l1"}], None)
    assert l2(out, tgt)[0].item() == pytest.approx((0 + 4 + 0 + 16) / 4)
    assert l1(out, tgt)[0].item() == pytest.approx((0 + 2 + 0 + 4) / 4)


def test_feature_loss_is_squared_distance_over_chw_averaged_over_batch():
    net = CountingNet()
    loss = build_loss([{"name": "feature", "layers": ["id", "double"],
                        "layer_weights": [1.0, 0.5]}], net)
    out = torch.zeros(2, 1, 1, 2)
    tgt = torch.tensor([[[[1.0, 1.0]]], [[[3.0, 0.0]]]])
    # image 1: |1,1|^2/2 = 1; image 2: |3,0|^2/2 = 4.5; batch mean 2.75 for 'id'.
    # 'double' doubles features: 4x the distance, i.e. 11.0, weighted 0.5.
    assert loss(out, tgt)[0].item() == pytest.approx(2.75 + 0.5 * 11.0)


def test_gram_matrix_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # B=1, C=2, H=1, W=2
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / (2 * 1 * 2)
    torch.testing.assert_close(gram_matrix(f), expected)


def test_style_loss_is_squared_frobenius_distance_of_grams():
    net = CountingNet()
    loss = build_loss([{"name": "style", "layers": ["id"], "weight": 2.0}], net)
    style = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    loss.set_style(style)
    out = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    g_out = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) / 4
    g_sty = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4
    expected = 2.0 * ((g_out - g_sty) ** 2).sum()
    total, parts = loss(out, None)
    assert total.item() == pytest.approx(expected.item())
    assert parts["style"].item() == pytest.approx(expected.item())


def test_style_image_may_have_another_size():
    net = CountingNet()
    loss = build_loss([{"name": "style", "layers": ["id"]}], net)
    loss.set_style(torch.rand(1, 3, 37, 53))
    total, _ = loss(torch.rand(2, 3, 16, 16), None)
    assert total.ndim == 0 and torch.isfinite(total)


def test_tv_by_hand():
    y = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # horizontal diffs 1, 2; vertical 2, 3
    tv_sum = build_loss([{"name": "tv", "reduction": "sum"}], None)
    tv_mean = build_loss([{"name": "tv"}], None)
    assert tv_sum(y, None)[0].item() == pytest.approx(1 + 4 + 4 + 9)
    assert tv_mean(y, None)[0].item() == pytest.approx(18 / 4)


def test_composite_sums_weighted_terms_and_runs_the_network_once():
    net = CountingNet()
    loss = build_loss([
        {"name": "feature", "layers": ["id"], "weight": 2.0},
        {"name": "style", "layers": ["double"], "weight": 0.5},
        {"name": "feature", "layers": ["double"], "weight": 1.0},
        {"name": "pixel", "weight": 3.0},
    ], net)
    assert isinstance(loss, CompositeLoss)
    assert net.truncated_to == ["id", "double"]
    loss.set_style(torch.rand(1, 3, 8, 8))
    net.calls = 0
    out, tgt = torch.rand(2, 3, 8, 8, requires_grad=True), torch.rand(2, 3, 8, 8)
    total, parts = loss(out, tgt)
    assert net.calls == 2  # one pass for the output, one for the target
    assert list(parts) == ["feature", "style", "feature_2", "pixel"]
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()))
    assert parts["pixel"].item() == pytest.approx(3.0 * torch.mean((out - tgt) ** 2).item())
    total.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_terms_needing_features_need_a_loss_network():
    with pytest.raises(RecipeError, match="need a loss network"):
        build_loss([{"name": "feature", "layers": ["relu2_2"]}], None)


def test_unknown_layer_is_a_recipe_error_naming_the_term():
    with pytest.raises(RecipeError, match=r"losses \(feature\).*no layer 'idd'.*did you mean id"):
        build_loss([{"name": "feature", "layers": ["idd"]}], CountingNet())


def test_layer_weights_must_match_layers():
    with pytest.raises(RecipeError, match=r"losses\[0\]: layer_weights has 1 entries for 2"):
        build_loss([{"name": "feature", "layers": ["id", "double"], "layer_weights": [1.0]}],
                   CountingNet())


def test_loss_inputs_for_plugins():
    """A plugin term sees the output and target; this is the whole plugin interface."""
    inputs = LossInputs(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert inputs.output_features == {} and inputs.target.sum() == 0


# -- charbonnier and the feature criteria ------------------------------------------------------
def test_charbonnier_by_hand_and_its_minimum_is_eps():
    out = torch.tensor([[[[0.0, 0.3], [1.0, 0.5]]]])
    tgt = torch.tensor([[[[0.0, 0.0], [0.6, 0.5]]]])
    loss = build_loss([{"name": "charbonnier"}], None)  # eps 1e-3
    expected = (2 * math.sqrt(1e-6) + math.sqrt(0.09 + 1e-6) + math.sqrt(0.16 + 1e-6)) / 4
    assert loss(out, tgt)[0].item() == pytest.approx(expected, rel=1e-6)
    assert loss(tgt, tgt)[0].item() == pytest.approx(1e-3, rel=1e-6)
    # BasicSR's CharbonnierLoss(eps=1e-12) is sqrt(d² + 1e-12): eps = 1e-6 here
    basicsr = build_loss([{"name": "charbonnier", "eps": 1e-6}], None)
    assert basicsr(out, tgt)[0].item() == pytest.approx(
        (2 * math.sqrt(1e-12) + math.sqrt(0.09 + 1e-12) + math.sqrt(0.16 + 1e-12)) / 4, rel=1e-6)


def test_feature_loss_l1_and_charbonnier_criteria_by_hand():
    out = torch.zeros(1, 1, 1, 2)
    tgt = torch.tensor([[[[3.0, -1.0]]]])
    l1 = build_loss([{"name": "feature", "layers": ["id"], "criterion": "l1"}], CountingNet())
    ch = build_loss([{"name": "feature", "layers": ["id"], "criterion": "charbonnier",
                      "eps": 0.5}], CountingNet())
    assert l1(out, tgt)[0].item() == pytest.approx((3 + 1) / 2)
    assert ch(out, tgt)[0].item() == pytest.approx((math.sqrt(9.25) + math.sqrt(1.25)) / 2)


def test_unknown_feature_criterion_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"key 'criterion': expected one of 'l2', 'l1'"):
        build_loss([{"name": "feature", "layers": ["id"], "criterion": "l3"}], CountingNet())


# -- frequency terms ---------------------------------------------------------------------------
def test_fft_loss_by_hand_on_a_2x2_image():
    # the orthonormal DFT of [[a, b], [c, d]] is ½[[a+b+c+d, a-b+c-d], [a+b-c-d, a-b-c+d]], real
    out = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # spectrum ½[[1, 1], [1, 1]]
    tgt = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])  # spectrum ½[[2, -2], [-2, 2]]
    diffs = [0.5, 1.5, 1.5, 0.5]  # |real parts|; imaginary parts are all 0
    loss = build_loss([{"name": "fft"}], None)
    assert loss(out, tgt)[0].item() == pytest.approx(sum(diffs) / 8)


def test_fft_loss_matches_numpy_fft():
    g = torch.Generator().manual_seed(0)
    out, tgt = torch.rand(2, 3, 6, 5, generator=g), torch.rand(2, 3, 6, 5, generator=g)
    fo = np.fft.fft2(out.double().numpy(), norm="ortho")
    ft = np.fft.fft2(tgt.double().numpy(), norm="ortho")
    expected = (np.abs(fo.real - ft.real).mean() + np.abs(fo.imag - ft.imag).mean()) / 2
    loss = build_loss([{"name": "fft"}], None)
    assert loss(out, tgt)[0].item() == pytest.approx(float(expected), rel=1e-5)


FFL_SETTINGS = [
    {},
    {"alpha": 2.0},
    {"patch_factor": 2},
    {"ave_spectrum": True},
    {"log_matrix": True},
    {"batch_matrix": True},
    {"alpha": 0.5, "patch_factor": 4, "log_matrix": True, "batch_matrix": True},
]


@pytest.mark.parametrize("settings", FFL_SETTINGS, ids=lambda s: ",".join(s) or "defaults")
def test_focal_frequency_matches_the_official_package(settings):
    ffl = pytest.importorskip(
        "focal_frequency_loss",
        reason="the reference needs the official package: pip install focal-frequency-loss")
    g = torch.Generator().manual_seed(1)
    out = torch.rand(3, 3, 16, 16, generator=g, requires_grad=True)
    tgt = torch.rand(3, 3, 16, 16, generator=g)
    ref_out = out.detach().clone().requires_grad_(True)
    ours = build_loss([{"name": "focal_frequency", **settings}], None)(out, tgt)[0]
    ref = ffl.FocalFrequencyLoss(**settings)(ref_out, tgt)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(out.grad, ref_out.grad, rtol=1e-5, atol=1e-8)


def test_focal_frequency_patch_factor_must_divide_the_image():
    loss = build_loss([{"name": "focal_frequency", "patch_factor": 3}], None)
    with pytest.raises(PercepkitError, match="patch_factor 3 must divide.*16x16"):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


# -- contextual --------------------------------------------------------------------------------
def test_contextual_loss_of_a_two_vector_case_by_hand():
    """Target y1 = (1, 1), y2 = (-1, 1) (mean μ = (0, 1)); output x1 = (1, 2), x2 = (0, 2).

    Centred: y1 - μ = (1, 0), y2 - μ = (-1, 0), x1 - μ = (1, 1), x2 - μ = (0, 1); so
    cos(x1, y1) = 1/√2, cos(x1, y2) = -1/√2, cos(x2, y·) = 0; d = (1 - cos) / 2.
    """
    tgt = torch.tensor([[[[1.0, -1.0]], [[1.0, 1.0]]]])  # (B, C, H, W) = (1, 2, 1, 2)
    out = torch.tensor([[[[1.0, 0.0]], [[2.0, 2.0]]]])
    h, eps = 0.5, 1e-5
    c = 1 / math.sqrt(2)
    d = [[(1 - c) / 2, (1 + c) / 2], [0.5, 0.5]]  # d[i][j], i: output, j: target
    cx = []
    for row in d:
        rel = [v / (min(row) + eps) for v in row]
        w = [math.exp((1 - r) / h) for r in rel]
        cx.append([v / sum(w) for v in w])
    similarity = (max(cx[0][0], cx[1][0]) + max(cx[0][1], cx[1][1])) / 2
    assert similarity == pytest.approx(0.749968, abs=1e-6)  # ≈ (0.999936 + 0.5) / 2
    loss = build_loss([{"name": "contextual", "layers": ["id"]}], CountingNet())
    assert loss(out, tgt)[0].item() == pytest.approx(-math.log(similarity), rel=1e-5)


def test_contextual_distance_is_half_one_minus_cosine_as_in_the_authors_code():
    """Distances near eps tell the conventions apart: the authors' TF code uses (1 - cos) / 2,
    ports such as yunjey's gist 1 - cos (CX here would be 0.5441 instead of 0.5175)."""
    t1, t2 = 0.009, 0.0125  # angles of y1 and -y2 from x1; x2 mirrors x1 between y1 and y2
    angles_y = [t1, -t2]
    ys = [(math.cos(a), math.sin(a)) for a in angles_y]
    ys.append((-ys[0][0] - ys[1][0], -ys[0][1] - ys[1][1]))  # y3: target mean exactly 0
    xs = [(1.0, 0.0), (math.cos(t1 - t2), math.sin(t1 - t2))]
    tgt = torch.tensor(ys).T.reshape(1, 2, 1, 3)
    out = torch.tensor(xs).T.reshape(1, 2, 1, 2)
    h, eps = 0.5, 1e-5

    def cx_row(distances):
        rel = [v / (min(distances) + eps) for v in distances]
        w = [math.exp((1 - r) / h) for r in rel]
        return [v / sum(w) for v in w]

    d1 = [(1 - math.cos(t1)) / 2, (1 - math.cos(t2)) / 2, 1.0]  # x1 to y1, y2, y3 (y3: cos -1)
    d2 = [d1[1], d1[0], 1.0]  # x2 is as far from y1 as x1 from y2, and vice versa
    rows = [cx_row(d1), cx_row(d2)]
    similarity = sum(max(r[j] for r in rows) for j in range(3)) / 3
    assert similarity == pytest.approx(0.5175, abs=1e-4)
    loss = build_loss([{"name": "contextual", "layers": ["id"]}], CountingNet())
    assert loss(out, tgt)[0].item() == pytest.approx(-math.log(similarity), rel=2e-3)


def test_contextual_loss_of_identical_distinct_features_is_zero():
    feats = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 1.0, 2.0]], [[3.0, 0.0, 1.0]]]])
    loss = build_loss([{"name": "contextual", "layers": ["id"]}], CountingNet())
    assert loss(feats, feats)[0].item() == pytest.approx(0.0, abs=1e-6)  # CX = 1
    repeated = torch.tensor([[[[1.0, 1.0, 2.0]], [[0.0, 0.0, 2.0]], [[3.0, 3.0, 1.0]]]])
    # two equal target vectors share their weight: CX = (1/2 + 1/2 + 1) / 3
    assert loss(repeated, repeated)[0].item() == pytest.approx(-math.log(2 / 3), abs=1e-5)


def test_contextual_sampling_keeps_the_same_positions_for_output_and_target():
    from percepkit.losses.contextual import sample_positions

    torch.manual_seed(0)
    x = torch.rand(2, 4, 8, 8)
    xs, ys = sample_positions(x, x.clone(), max_positions=10)
    assert xs.shape == (2, 4, 10)
    torch.testing.assert_close(xs, ys)
    loss = build_loss([{"name": "contextual", "layers": ["id"], "max_positions": 10}],
                      CountingNet())
    assert loss(x, x)[0].item() == pytest.approx(0.0, abs=1e-5)
    small, _ = sample_positions(x, x, max_positions=64)
    assert small.shape == (2, 4, 64)  # no sampling needed: all positions, in order
    torch.testing.assert_close(small, x.flatten(2))


def test_new_terms_share_one_loss_network_pass_per_batch():
    net = CountingNet()
    loss = build_loss([
        {"name": "feature", "layers": ["double"], "criterion": "l1"},
        {"name": "contextual", "layers": ["id", "double"]},
        {"name": "fft"}, {"name": "focal_frequency"}, {"name": "charbonnier"},
    ], net)
    out, tgt = torch.rand(2, 3, 8, 8, requires_grad=True), torch.rand(2, 3, 8, 8)
    total, parts = loss(out, tgt)
    assert net.calls == 2
    assert list(parts) == ["feature", "contextual", "fft", "focal_frequency", "charbonnier"]
    total.backward()
    assert torch.isfinite(out.grad).all()


# -- every built-in term: minimum, gradients, float32 under AMP, description -------------------
# the gan term compares no output with a target (it needs a discriminator, trained with it):
# tests/test_adversarial.py checks its formulas, gradients and precision
BUILTIN_TERMS = [e.name for e in LOSSES.entries() if e.source == BUILTIN and e.name != "gan"]
MINIMUM = {"charbonnier": 1e-3}  # sqrt(0 + eps²); every other term is 0 on identical inputs
TOLERANCE = {"contextual": 1e-4}  # CX = 1 - O(exp(-Δd/(eps·h))) for distinct feature vectors
SIDE = {"ms_ssim": 176}  # 5 scales of an 11x11 window need at least 161 px


@pytest.fixture(scope="module")
def vgg16_random_init():
    from percepkit.registry import LOSS_NETWORKS

    return LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})


def _term(name: str, net, style: torch.Tensor) -> CompositeLoss:
    try:
        loss = build_loss([{"name": name}], copy.deepcopy(net))
    except MissingWeightsError as e:
        pytest.skip(f"{name} needs weights that are not here: {e}")
    if loss.style_layers:
        loss.set_style(style)
    return loss


def _image(seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_builtin_terms_are_all_there():
    assert {"pixel", "charbonnier", "feature", "style", "tv", "fft", "focal_frequency",
            "contextual"} <= set(BUILTIN_TERMS)


@pytest.mark.parametrize("name", BUILTIN_TERMS)
def test_every_builtin_term_is_at_its_minimum_on_identical_inputs_random_init(
        name, vgg16_random_init):
    side = SIDE.get(name, 32)
    flat = name in ("tv", "grid")  # output-only terms: a flat image is their minimum
    image = torch.full((1, 3, 32, 32), 0.5) if flat else _image(0, side)
    loss = _term(name, vgg16_random_init, image)
    value = loss(image, image.clone())[0].item()
    assert value == pytest.approx(MINIMUM.get(name, 0.0), abs=TOLERANCE.get(name, 1e-5))
    assert loss(_image(1, side), image)[0].item() > value  # and another output scores worse


@pytest.mark.parametrize("name", BUILTIN_TERMS)
def test_every_builtin_term_has_finite_gradients_random_init(name, vgg16_random_init):
    target = _image(2, SIDE.get(name, 32))
    loss = _term(name, vgg16_random_init, target)
    for start in (target.clone(), _image(3, SIDE.get(name, 32))):  # at the minimum and away from it
        out = start.requires_grad_(True)
        loss(out, target)[0].backward()
        assert out.grad is not None and torch.isfinite(out.grad).all(), name


@pytest.mark.parametrize("name", BUILTIN_TERMS)
def test_every_builtin_term_is_float32_under_autocast_random_init(name, vgg16_random_init):
    out, target = _image(4, SIDE.get(name, 32)), _image(5, SIDE.get(name, 32))
    loss = _term(name, vgg16_random_init, target)
    exact = loss(out, target)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = loss(out, target)
    assert total.dtype == parts[name].dtype == torch.float32
    assert torch.isfinite(total)
    if not loss.output_layers:  # no bf16 features involved: the same float32 computation
        assert total.item() == pytest.approx(exact.item(), rel=1e-6)


def test_gram_matrix_is_float32_under_autocast():
    f = torch.rand(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram_matrix(f)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, gram_matrix(f))


@pytest.mark.parametrize("name", BUILTIN_TERMS)
def test_every_builtin_term_has_a_one_line_description(name):
    description = LOSSES.entry(name).description
    assert description.endswith(".") and len(description) <= 100


# -- real ImageNet VGG16 on real images ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realweights
def test_contextual_loss_tolerates_misalignment_that_feature_loss_punishes(
        shared_data, real_weights_dir, monkeypatch):
    """Mechrez et al.'s point, on Set5 crops (128², real VGG16): a copy shifted by 4 px is far
    closer than a ×4 bicubic blur for ``contextual``, and farther for ``pixel``/``feature``."""
    from percepkit.data.images import read_image
    from percepkit.data.imresize import imresize
    from percepkit.registry import LOSS_NETWORKS

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    net = LOSS_NETWORKS.build({"name": "vgg16"})
    losses = {name: build_loss([{"name": name}], copy.deepcopy(net))
              for name in ("pixel", "feature", "contextual")}
    for image in ("baby", "butterfly", "bird"):
        hr = read_image(shared_data / "benchmarks" / "Set5" / f"{image}.png")[None]
        crop = hr[..., 40:176, 40:176]
        ref = crop[..., 4:132, 4:132]
        shifted = crop[..., 8:136, 4:132]
        blurred = imresize(imresize(ref, scale=0.25), scale=4).clamp(0, 1)
        values = {name: [loss(x, ref)[0].item() for x in (shifted, blurred)]
                  for name, loss in losses.items()}
        assert values["contextual"][0] < 0.5 * values["contextual"][1], (image, values)
        assert values["feature"][0] > values["feature"][1], (image, values)
        assert values["pixel"][0] > values["pixel"][1], (image, values)
