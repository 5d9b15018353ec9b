"""Loss networks: named layers, truncation, freezing, and weight loading (real or missing)."""

from __future__ import annotations

import pytest
import torch

from percepkit.errors import MissingWeightsError, PercepkitError
from percepkit.nets.lossnets import vgg_layer_names
from percepkit.registry import LOSS_NETWORKS


def test_vgg_layer_names_match_torchvision_indices():
    names = vgg_layer_names("vgg16")
    assert len(names) == 31
    assert [names.index(k) for k in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")] == [3, 8, 15, 22]
    assert vgg_layer_names("vgg19").index("relu5_4") == 35


def test_random_init_vgg_truncates_and_is_frozen():
    full = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})
    net = full.truncated(["relu2_2", "relu1_2"])
    assert len(net.features) == 9
    assert len(full.features) == 31  # the network it was cut from is left whole
    assert net.features[0] is full.features[0]  # weights shared, not copied
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    feats = net(x, ["relu1_2", "relu2_2"])
    assert feats["relu1_2"].shape == (2, 64, 32, 32)
    assert feats["relu2_2"].shape == (2, 128, 16, 16)
    feats["relu2_2"].sum().backward()  # gradients flow to the image, not the network
    assert x.grad is not None


def test_random_init_vgg_conv_output_is_not_clobbered_by_relu():
    net = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})
    feats = net(torch.rand(1, 3, 16, 16), ["conv1_1", "relu1_1"])
    assert (feats["conv1_1"] < 0).any()
    torch.testing.assert_close(feats["relu1_1"], feats["conv1_1"].clamp(min=0))


def test_unknown_layer_suggests_names():
    net = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})
    with pytest.raises(PercepkitError, match="no layer 'relu2_3'.*did you mean"):
        net(torch.rand(1, 3, 8, 8), ["relu2_3"])


def test_missing_weights_is_one_clear_sentence(isolated_weights):
    with pytest.raises(MissingWeightsError) as info:
        LOSS_NETWORKS.build({"name": "vgg16"})
    message = str(info.value)
    assert "vgg16_features_imagenet1k_v1.safetensors" in message
    assert "PERCEPKIT_WEIGHTS" in message and "\n" not in message


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        LOSS_NETWORKS.build({"name": "vgg16", "weights": str(tmp_path / "nope.pth")})


def test_real_vgg16_weights_from_weights_dir(real_weights_dir, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    net = LOSS_NETWORKS.build({"name": "vgg16", "weights": "imagenet"})
    ref = load_file(str(real_weights_dir / "vgg16_features_imagenet1k_v1.safetensors"))
    torch.testing.assert_close(net.features[0].weight, ref["features.0.weight"])
    torch.testing.assert_close(net.features[28].bias, ref["features.28.bias"])
    # a local file path works the same way
    local = LOSS_NETWORKS.build({"name": "vgg16", "weights": str(
        real_weights_dir / "vgg16_features_imagenet1k_v1.safetensors")})
    torch.testing.assert_close(local.features[2].weight, ref["features.2.weight"])


def test_real_vgg16_features_respond_to_content(real_weights_dir, monkeypatch):
    """Real ImageNet filters: a photo-like edge image activates relu2_2 far more than flat gray."""
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    net = LOSS_NETWORKS.build({"name": "vgg16"})
    flat = torch.full((1, 3, 64, 64), 0.5)
    edges = flat.clone()
    edges[..., ::8, :] = 1.0
    f_flat = net(flat, ["relu2_2"])["relu2_2"]
    f_edges = net(edges, ["relu2_2"])["relu2_2"]
    assert f_edges.mean() > 2 * f_flat.mean()


def test_random_init_timm_loss_network_stages():
    net = LOSS_NETWORKS.build({"name": "timm:resnet18", "weights": "random"})
    assert net.layer_names[:5] == ["stage0", "stage1", "stage2", "stage3", "stage4"]
    feats = net(torch.rand(1, 3, 64, 64), ["stage1", "layer2"])
    assert feats["stage1"].shape == (1, 64, 16, 16)
    assert feats["layer2"].shape == (1, 128, 8, 8)
    assert not any(p.requires_grad for p in net.parameters())


def test_timm_pretrained_offline_is_a_clear_error(isolated_weights):
    with pytest.raises(MissingWeightsError, match="timm model 'resnet18'.*PERCEPKIT_WEIGHTS"):
        LOSS_NETWORKS.build({"name": "timm:resnet18"})


def test_unknown_timm_model():
    with pytest.raises(PercepkitError, match="timm has no model"):
        LOSS_NETWORKS.build({"name": "timm:not_a_model_xyz", "weights": "random"})


def test_a_weights_file_with_pickled_code_is_one_short_paragraph(tmp_path):
    import pickle

    from percepkit.models.weights import load_state_file

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": Payload()}))
    with pytest.raises(MissingWeightsError, match="never runs pickled code") as info:
        load_state_file(path)
    assert "weights_only" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(("arch", "conv"), [("vgg16", "conv3_3"), ("vgg19", "conv3_4")])
def test_random_init_vgg_pre_activation_layer_is_the_conv_output(arch, conv):
    """conv3_3 is the convolution's own output (computed here directly from the previous
    ReLU's features), returned in the same pass as relu3_3 without being overwritten by it."""
    import torch.nn.functional as F

    net = LOSS_NETWORKS.build({"name": arch, "weights": "random"})
    names = vgg_layer_names(arch)
    before = names[names.index(conv) - 1]  # the ReLU feeding the conv
    relu = conv.replace("conv", "relu")
    feats = net(torch.rand(2, 3, 32, 32), [before, conv, relu])
    layer = net.features[names.index(conv)]
    direct = F.conv2d(feats[before], layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(feats[conv], direct)
    negative = feats[conv] < 0
    assert negative.any() and (feats[relu][negative] == 0).all()
    torch.testing.assert_close(feats[relu], feats[conv].clamp(min=0))


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "alexnet"])
def test_backbones_have_torchvisions_layout_without_importing_it(arch):
    """Same module types, parameter names and shapes as torchvision's ``features``, and the
    same output once torchvision's (random-init) weights are loaded with load_features."""
    import subprocess
    import sys

    import torchvision

    from percepkit.nets import backbones

    ours, theirs = backbones.features(arch), getattr(torchvision.models, arch)().features
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    assert all(not m.inplace for m in ours if isinstance(m, torch.nn.ReLU))
    backbones.load_features(ours, {f"features.{k}": v for k, v in theirs.state_dict().items()},
                            arch)
    x = torch.rand(1, 3, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    code = ("import sys; from percepkit.nets import backbones; from percepkit.registry import "
            "LOSS_NETWORKS; LOSS_NETWORKS.build({'name': 'vgg16', 'weights': 'random'}); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_features_names_the_first_misfit():
    from percepkit.nets import backbones

    net = backbones.features("vgg16")[:4]
    state = {f"features.{k}": v for k, v in net.state_dict().items()}
    state["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(MissingWeightsError, match=r"features\.2\.weight is of shape"):
        backbones.load_features(net, state, "vgg16")
    del state["features.0.bias"]
    with pytest.raises(MissingWeightsError, match=r"features\.0\.bias is missing"):
        backbones.load_features(net, state, "vgg16")


def test_random_init_vgg_truncated_copy_leaves_its_source_whole():
    full = LOSS_NETWORKS.build({"name": "vgg16", "weights": "random"})
    cut = full.truncated(["relu1_2"])
    cut.features = cut.features[:1]  # changing the copy's layers does not change the source's
    assert len(full.features) == 31
    assert full(torch.rand(1, 3, 16, 16), ["relu4_3"])["relu4_3"].shape == (1, 512, 2, 2)
    assert full.truncated(["pool5"]) is full  # nothing to cut
