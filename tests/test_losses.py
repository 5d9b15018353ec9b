"""Loss terms against values computed by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from percepkit.errors import RecipeError
from percepkit.losses import CompositeLoss, LossInputs, build_loss, gram_matrix
from percepkit.lossnets import LossNetwork


class CountingNet(LossNetwork):
    """A fake loss network: 'id' is the input, 'double' is 2x the input; counts its calls."""

    layer_names = ["id", "double"]

    def __init__(self) -> None:
        super().__init__((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.calls = 0
        self.truncated_to = None

    def truncate(self, layers):
        self.truncated_to = self.check_layers(layers)

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
