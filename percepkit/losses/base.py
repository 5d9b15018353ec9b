"""What every loss term shares: its inputs, its base class, and the composite loss that sums terms.

Every term is registered in :data:`percepkit.registry.LOSSES`; its constructor arguments are the
recipe keys (``weight`` included). The composite loss runs the loss network once on the output
and once on the target per batch, for all terms together, and evaluates the terms with autocast
disabled so that they are computed in float32 even under AMP (terms cast their inputs with
``.float()``; features computed in bf16/fp16 are cast, not recomputed).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import RecipeError
from ..nets.lossnets import LossNetwork
from ..registry import LOSSES


@dataclass
class LossInputs:
    """What a term sees: the output, its target, and loss-network features of both."""

    output: torch.Tensor
    target: torch.Tensor | None
    output_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    target_features: Mapping[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base class of loss terms. Subclasses implement ``forward(inputs) -> scalar``.

    ``output_layers`` / ``target_layers`` / ``style_layers`` name the loss-network layers the
    term needs for the output, the target and the style image; :meth:`reads_layers` says which
    before the term is built (recipe checks, without weights).
    """

    output_layers: tuple[str, ...] = ()
    target_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def __call__(self, inputs: LossInputs, *rest: Any, **kwargs: Any) -> Any:
        if not isinstance(inputs, LossInputs):  # a term called like a criterion: term(x, y)
            raise TypeError(f"a loss term is called with LossInputs (the images and their "
                            f"loss-network features); for loss(output, target) use "
                            f"percepkit.create_loss({self._name()!r})")
        return super().__call__(inputs, *rest, **kwargs)

    def _name(self) -> str:
        found = [e.name for e in LOSSES.entries() if e.obj is type(self)]
        return found[0] if found else type(self).__name__

    def set_style(self, features: Mapping[str, torch.Tensor]) -> None:
        """Receive the style image's features (terms with ``style_layers`` only)."""

    @classmethod
    def reads_layers(cls, spec: Mapping[str, Any]) -> tuple[str, ...]:
        """The loss-network layers a term built from recipe entry ``spec`` reads, known without
        building it. Default: its ``layers`` argument, or that argument's default; terms that
        read layers another way override this."""
        return layers_argument(cls, spec)


def layers_argument(factory: Any, spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``layers`` a recipe entry gives ``factory`` (a term class or a plugin's factory), or
    the default of that argument; () when it has none."""
    param = inspect.signature(factory).parameters.get("layers")
    default = () if param is None or param.default is param.empty else param.default
    layers = spec.get("layers", default)
    return tuple(str(x) for x in layers) if isinstance(layers, (list, tuple)) else ()


def layer_weight_list(layers: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """``weights`` as floats, one per layer (all 1.0 when ``None``)."""
    if weights is None:
        return [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"layer_weights has {len(weights)} entries for {len(layers)} layers")
    return [float(w) for w in weights]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off on ``device``: matmuls (Gram, cosine similarities) stay in float32.

    A device without autocast (``meta``, used to estimate memory) has nothing to turn off."""
    if not torch.amp.is_autocast_available(device.type):
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield


class CompositeLoss(nn.Module):
    """Weighted sum of loss terms; runs the loss network once per batch for all terms.

    ``forward(output, target)`` returns ``(total, {label: weighted value})``.
    """

    def __init__(self, terms: Mapping[str, LossTerm], loss_network: LossNetwork | None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.output_layers = self._union("output_layers")
        self.target_layers = self._union("target_layers")
        self.style_layers = self._union("style_layers")
        needed = {*self.output_layers, *self.target_layers, *self.style_layers}
        if needed and loss_network is None:
            raise RecipeError("losses: these terms need a loss network (layers "
                              f"{sorted(needed)}), but the recipe has no 'loss_network'")
        # a network cut after the deepest layer needed, sharing the given one's weights: the
        # given network itself is left whole (another loss may read deeper layers from it)
        self.loss_network = loss_network.truncated(needed) if needed else loss_network

    def _union(self, attr: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x for t in self.terms.values() for x in getattr(t, attr)))

    def features(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Loss-network features of ``image`` at ``layers`` ({} when none are needed)."""
        return self.loss_network(image, layers) if layers else {}

    @torch.no_grad()
    def set_style(self, style: torch.Tensor) -> None:
        """Compute the style targets (Gram matrices) once from a style image (1, 3, H, W)."""
        feats = self.features(style, self.style_layers)
        with full_precision(style.device):
            for term in self.terms.values():
                if term.style_layers:
                    term.set_style(feats)

    def styled_terms(self, style: torch.Tensor) -> dict[str, LossTerm]:
        """Copies of the style terms holding the targets of ``style`` (1, 3, H, W), for
        :meth:`use_terms`: a multi-style training switches style every step without
        recomputing the targets."""
        self.set_style(style)
        return {label: copy.deepcopy(t) for label, t in self.terms.items() if t.style_layers}

    def use_terms(self, terms: Mapping[str, LossTerm]) -> None:
        """Put terms from :meth:`styled_terms` in place of the ones with their labels."""
        for label, term in terms.items():
            self.terms[label] = term

    def forward(self, output: torch.Tensor, target: torch.Tensor | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            target_feats = self.features(target, self.target_layers) if target is not None else {}
        inputs = LossInputs(output, target, self.features(output, self.output_layers),
                            target_feats)
        with full_precision(output.device):
            parts = {label: term.weight * term(inputs) for label, term in self.terms.items()}
            total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}


def build_loss(specs: Sequence[Mapping[str, Any]], loss_network: LossNetwork | None,
               where: str = "losses") -> CompositeLoss:
    """Build the composite loss from recipe entries ``[{name, weight, ...}, ...]``."""
    if not specs:
        raise RecipeError(f"{where}: expected a non-empty list of loss terms")
    terms: dict[str, LossTerm] = {}
    for i, spec in enumerate(specs):
        name, _ = LOSSES.resolve(spec, where=f"{where}[{i}]")
        try:
            term = LOSSES.build(spec, where=f"{where}[{i}]")
        except ValueError as e:
            raise RecipeError(f"{where}[{i}]: {e}") from None
        label = LOSSES.entry(name).name
        n = 2
        while label in terms:
            label, n = f"{LOSSES.entry(name).name}_{n}", n + 1
        terms[label] = term
    if loss_network is not None:
        for label, term in terms.items():
            layers = {*term.output_layers, *term.target_layers, *term.style_layers}
            try:
                loss_network.check_layers(layers)
            except Exception as e:
                raise RecipeError(f"{where} ({label}): {e}") from None
    return CompositeLoss(terms, loss_network)
