"""Losses from Python: :func:`create_loss` and :class:`Loss`, a module whose call is a scalar.

``create_loss("feature")`` or ``create_loss([{"name": "feature", "layers": ["relu2_2"]},
{"name": "tv", "weight": 1e-6}])`` builds the terms through :data:`~percepkit.registry.LOSSES`
(the keys are the terms' constructor arguments, exactly as in a recipe's ``losses:`` list) and
the loss network they read (:func:`loss_network_for`: the recipe default, VGG16 with ImageNet
weights, unless one is given). A given network is never changed: the composite loss works on a
view of it cut after the deepest layer it reads
(:meth:`~percepkit.nets.lossnets.LossNetwork.truncated`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import PercepkitError
from ..nets.lossnets import LossNetwork
from ..registry import DEFAULT_LOSS_NETWORK, LOSS_NETWORKS
from .base import CompositeLoss, build_loss

#: a loss term, a loss network: a name, or a mapping with ``name`` and constructor arguments
Spec = str | Mapping[str, Any]


class Loss(nn.Module):
    """A weighted sum of loss terms: ``loss(output, target)`` is a scalar tensor.

    ``loss(output, target, return_parts=True)`` returns ``(total, parts)`` instead; ``parts``
    (each term's weighted value, detached, keyed ``feature``, ``style``, ``feature_2``, ...) is
    also kept in :attr:`parts` after every call. Terms that need no target (``style``, ``tv``)
    accept ``target=None``; ``style`` terms need :meth:`set_style` first.
    """

    def __init__(self, composite: CompositeLoss) -> None:
        super().__init__()
        self.composite = composite
        self.parts: dict[str, torch.Tensor] = {}

    @property
    def loss_network(self) -> LossNetwork | None:
        """The (cut) loss network the terms read, or None when none reads features."""
        return self.composite.loss_network

    def set_style(self, style: torch.Tensor) -> None:
        """Style targets from a style image (1, 3, H, W) in [0, 1], for ``style`` terms."""
        self.composite.set_style(style)

    def forward(self, output: torch.Tensor, target: torch.Tensor | None = None,
                return_parts: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, self.parts = self.composite(output, target)
        return (total, self.parts) if return_parts else total


def _specs(spec_or_list: Spec | Sequence[Spec], args: Mapping[str, Any]) -> list[dict]:
    """Loss specs as recipe entries ``[{name, ...}, ...]``; ``args`` apply to a single spec."""
    if isinstance(spec_or_list, (str, Mapping)):
        entry = {"name": spec_or_list} if isinstance(spec_or_list, str) else dict(spec_or_list)
        return [{**entry, **args}]
    if args:
        raise PercepkitError(f"create_loss: keyword arguments ({', '.join(args)}) apply to one "
                             f"term; with a list, put them in each term's mapping")
    specs = []
    for i, spec in enumerate(spec_or_list):
        if not isinstance(spec, (str, Mapping)):
            raise PercepkitError(f"create_loss: term {i} is a {type(spec).__name__}; give a name "
                                 f"or a mapping such as {{'name': 'feature', 'weight': 1.0}}")
        specs.append({"name": spec} if isinstance(spec, str) else dict(spec))
    return specs


def loss_network_for(specs: Sequence[Any], network: LossNetwork | Spec | None = None
                     ) -> LossNetwork | None:
    """The loss network for loss specs: ``network`` itself when it is one, built from it when
    it is a spec, else the default (:data:`~percepkit.registry.DEFAULT_LOSS_NETWORK`) when a
    term reads features, else None."""
    from ..recipes.checks import term_layers

    if isinstance(network, LossNetwork):
        return network
    if network is None and not any(term_layers(s) for s in specs):
        return None
    return LOSS_NETWORKS.build(DEFAULT_LOSS_NETWORK if network is None else network,
                               where="loss_network")


def create_loss(spec_or_list: Spec | Sequence[Spec],
                loss_network: LossNetwork | Spec | None = None, **args: Any) -> Loss:
    """A :class:`Loss` from a term name (``"feature"``; ``args`` are its constructor arguments),
    a mapping (``{"name": "feature", "layers": ["relu2_2"]}``) or a list of either.

    ``loss_network``: a :class:`~percepkit.nets.lossnets.LossNetwork` (shared, never changed), a
    spec (``"vgg19"``, ``{"name": "timm:resnet50"}``), or None for VGG16 with ImageNet weights
    (offline-first, as everywhere: ``PERCEPKIT_WEIGHTS``, torch's cache, a checked download)
    when a term reads features. Evaluation mode, on the CPU: move it with ``.to(device)``.
    """
    specs = _specs(spec_or_list, args)
    return Loss(build_loss(specs, loss_network_for(specs, loss_network))).eval()
