"""Loss networks: frozen feature extractors whose layers are addressed by name.

Inputs are RGB images in [0, 1]; each network applies its own mean/std normalisation inside, so
loss weights in recipes always refer to [0, 1] RGB inputs (torchvision convention for VGG).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from ..errors import MissingWeightsError, PercepkitError
from ..models.hub import offline
from ..models.weights import load_state_file, torchvision_features_state, weights_dirs
from ..registry import LOSS_NETWORKS
from . import backbones

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(arch: str) -> list[str]:
    """Names of torchvision ``vgg.features`` modules: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, n in enumerate(backbones.VGG_BLOCKS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


class LossNetwork(nn.Module):
    """A frozen feature extractor: ``forward(x, layers)`` returns ``{layer: features}``."""

    layer_names: list[str]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def freeze(self) -> None:
        """No gradients for the network's own weights, and eval mode for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LossNetwork:
        return super().train(False)  # a loss network is always in eval mode

    def check_layers(self, layers: Iterable[str]) -> list[str]:
        """Validate layer names (with suggestions) and return them in network order."""
        from ..registry.arguments import close_matches

        layers = list(dict.fromkeys(layers))
        for layer in layers:
            if layer not in self.layer_names:
                close = close_matches(layer, self.layer_names, n=3)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise PercepkitError(f"loss network has no layer {layer!r}; {hint}"
                                     f"layers: {', '.join(self.layer_names)}")
        return sorted(layers, key=self.layer_names.index)

    def truncated(self, layers: Iterable[str]) -> LossNetwork:
        """A network computing only up to the deepest of ``layers``; this one is unchanged.

        The result shares this network's weights (no copy); once nothing else holds the full
        network, the layers after the cut are freed. Networks that cannot be cut return
        themselves (the default)."""
        self.check_layers(layers)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VGG(LossNetwork):
    """torchvision VGG features with layers named conv1_1, relu1_1, ..., pool5.

    ``convX_Y`` is the convolution's output before its ReLU (pre-activation, as ESRGAN/BasicSR
    use), ``reluX_Y`` the same after it; the ReLUs of :func:`percepkit.nets.backbones.features` work
    out of place, so both stay correct.
    """

    def __init__(self, weights: str = "imagenet", arch: Literal["vgg16", "vgg19"] = "vgg16",
                 layers: list[str] | None = None) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.arch = arch
        self.weights = weights
        features = backbones.features(arch)
        if weights == "random":
            backbones.init_like_torchvision(features)
        else:
            backbones.load_features(features, torchvision_features_state(arch, weights), arch)
        self.layer_names = vgg_layer_names(arch)
        self.features = features
        if layers:
            self.features = self._cut(layers)
        self.freeze()

    def _cut(self, layers: Iterable[str]) -> nn.Sequential:
        """The feature layers up to the deepest of ``layers`` (the same modules, not copies)."""
        deepest = self.check_layers(layers)[-1]
        return self.features[: self.layer_names.index(deepest) + 1]

    def truncated(self, layers: Iterable[str]) -> VGG:
        features = self._cut(layers)
        if len(features) == len(self.features):
            return self
        cut = copy.copy(self)
        # own tables of submodules, parameters and buffers: setting or moving the cut one's
        # entries must not touch this network's
        cut._modules = dict(self._modules)
        cut._parameters = dict(self._parameters)
        cut._buffers = dict(self._buffers)
        cut.features = features
        return cut

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = set(self.check_layers(layers))
        out: dict[str, torch.Tensor] = {}
        h = self.normalize(x)
        for name, module in zip(self.layer_names, self.features):
            h = module(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        if len(out) != len(wanted):
            raise PercepkitError(f"layers {sorted(wanted - set(out))} were truncated away")
        return out


@LOSS_NETWORKS.register("vgg16")
def vgg16(weights: str = "imagenet", layers: list[str] | None = None) -> VGG:
    """torchvision VGG16 (ImageNet) features; layers relu1_1 ... relu5_3, pre-ReLU conv1_1 ..."""
    return VGG(weights=weights, arch="vgg16", layers=layers)


@LOSS_NETWORKS.register("vgg19")
def vgg19(weights: str = "imagenet", layers: list[str] | None = None) -> VGG:
    """torchvision VGG19 (ImageNet) features; layers relu1_1 ... relu5_4, pre-ReLU conv1_1 ..."""
    return VGG(weights=weights, arch="vgg19", layers=layers)


@LOSS_NETWORKS.register("timm", prefix_arg="model")
class TimmLossNetwork(LossNetwork):
    """Any timm model as a loss network (``timm:resnet50``); layers are ``stage0``, ``stage1``, ...

    or timm's module names for those stages (``feature_info.module_name()``).
    """

    def __init__(self, model: str, weights: str = "imagenet") -> None:
        import timm

        kwargs: dict = {"features_only": True}
        if weights == "random":
            kwargs["pretrained"] = False
        elif weights == "imagenet":
            local = _find_timm_file(model)
            kwargs["pretrained"] = True
            if local is None and offline():
                raise MissingWeightsError(
                    f"pretrained weights for timm model {model!r} are missing and downloads are "
                    f"disabled (PERCEPKIT_OFFLINE=1); put {model}.safetensors in a folder listed "
                    f"in PERCEPKIT_WEIGHTS, or pass 'weights: /path/to/file'.")
            if local is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
        else:
            load_state_file(weights)  # fail early with a clear message if unreadable
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        try:
            net = timm.create_model(model, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise PercepkitError(f"timm has no model {model!r} ({e}).") from None
            raise
        except Exception as e:  # offline hub download, bad file
            if weights == "random":
                raise
            raise MissingWeightsError(
                f"pretrained weights for timm model {model!r} could not be loaded "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); put {model}.safetensors "
                f"in a folder listed in PERCEPKIT_WEIGHTS, or pass 'weights: /path/to/file'."
            ) from None
        cfg = net.pretrained_cfg
        super().__init__(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.model_name = model
        self.net = net
        self.modules_by_stage = list(net.feature_info.module_name())
        self.layer_names = [f"stage{i}" for i in range(len(self.modules_by_stage))]
        self.layer_names += [m for m in self.modules_by_stage if m not in self.layer_names]
        self.freeze()

    def _stage(self, layer: str) -> int:
        return int(layer[5:]) if layer.startswith("stage") else self.modules_by_stage.index(layer)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        feats = self.net(self.normalize(x))
        return {layer: feats[self._stage(layer)] for layer in self.check_layers(layers)}


def _find_timm_file(model: str):
    for folder in weights_dirs():
        for suffix in (".safetensors", ".pth", ".bin"):
            if (folder / f"{model}{suffix}").is_file():
                return folder / f"{model}{suffix}"
    return None
