"""Instance-norm statistics that tiles share: one protocol to record, freeze and probe them.

Instance norm normalises with the statistics of its whole input, so the tiles of an image must
all use the whole image's statistics (:mod:`percepkit.inference.predictor`). A layer that
normalises globally takes part through three attributes (:class:`NormStatsLayer`):

* ``record``: a dict; each forward pass stores its input's ``(mean, var)`` there under the layer;
* ``frozen``: a ``(mean, var)`` pair used instead of the input's statistics;
* ``probe``: a :data:`Probe` that receives the layer's pre-normalisation values, after which the
  pass stops (:class:`StopForward`): a statistics pass over tiles needs nothing further.

The fused layers of the fast path implement it themselves (``global_norm = True``); a plain
:class:`torch.nn.InstanceNorm2d` gets it from :class:`InstanceNormStats`. Everything else here
works on either through :func:`stats_layer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

#: Whole-image statistics per layer: ``(mean, var)``, each (B, C) float32.
NormStats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]

#: ``probe(parts, step, out_h, out_w)``: a layer's pre-normalisation output as views ``(z, a,
#: b)`` holding output pixels ``(step i + a, step j + b)`` of an ``out_h x out_w`` map.
Probe = Callable[[list[tuple[torch.Tensor, int, int]], int, int, int], None]


class StopForward(Exception):
    """Raised by a probed layer to end a statistics pass at the layer it measures."""


class NormStatsLayer(Protocol):
    """A layer normalised with its whole input's statistics, steerable by tiling (see above).

    When several are set, ``probe`` wins, then ``frozen`` (nothing is recorded), then ``record``.
    """

    record: NormStats | None
    frozen: tuple[torch.Tensor, torch.Tensor] | None
    probe: Probe | None


def norm_coefficients(mean: torch.Tensor, var: torch.Tensor, eps: float,
                      weight: torch.Tensor | None, bias: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``a`` and shift ``b``, shaped (B, C, 1, 1), with ``a x + b`` = the instance norm of
    ``x`` under ``mean``/``var`` (B, C), followed by the affine ``weight``/``bias`` if given."""
    a = torch.rsqrt(var + eps)
    if weight is not None:
        a = a * weight.float()
        b = bias.float() - mean * a
    else:
        b = -mean * a
    return a[..., None, None], b[..., None, None]


class InstanceNormStats:
    """:class:`NormStatsLayer` for a plain :class:`torch.nn.InstanceNorm2d`.

    While any of the three attributes is set, the module's ``forward`` is replaced by one that
    honours them (and calls the original when it only records); when all are cleared the
    original ``forward`` is back. Statistics are stored under the module, not the adapter.
    Get one with :func:`stats_layer`, which returns the active adapter of a module if it has one.
    """

    record: NormStats | None
    frozen: tuple[torch.Tensor, torch.Tensor] | None
    probe: Probe | None
    _STEERING = ("record", "frozen", "probe")

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        self.norm = norm
        self._coefficients: tuple[torch.Tensor, torch.Tensor] | None = None
        self.record = self.frozen = self.probe = None

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "frozen":  # the frozen norm's scale and shift, once rather than per pass
            n = self.norm
            self._coefficients = None if value is None else norm_coefficients(
                *value, n.eps, n.weight if n.affine else None, n.bias if n.affine else None)
        if name in self._STEERING:
            self._update()

    def _update(self) -> None:
        active = any(getattr(self, name, None) is not None for name in self._STEERING)
        patched = "forward" in vars(self.norm)
        if active and not patched:
            self.norm.forward = self._forward  # type: ignore[method-assign]
        elif patched and not active:
            del self.norm.forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            self.probe([(x, 0, 0)], 1, x.shape[-2], x.shape[-1])
            raise StopForward
        if self._coefficients is None:
            if self.record is not None:
                var, mean = torch.var_mean(x.float(), dim=(2, 3), unbiased=False)
                self.record[self.norm] = (mean, var)
            return type(self.norm).forward(self.norm, x)
        a, b = self._coefficients
        return torch.addcmul(b.to(x.dtype), x, a.to(x.dtype))


def is_global_norm(m: nn.Module) -> bool:
    """Whether ``m`` normalises with statistics of its whole input (instance norm)."""
    if getattr(m, "global_norm", False) is True:
        return True
    if isinstance(m, nn.InstanceNorm2d):
        return not (m.track_running_stats and not m.training)
    return False


def stats_layer(m: nn.Module) -> NormStatsLayer | None:
    """``m`` as a :class:`NormStatsLayer`: itself if it implements the protocol, an
    :class:`InstanceNormStats` for a plain instance norm, ``None`` for other layers."""
    if getattr(m, "global_norm", False) is True:
        return m  # type: ignore[return-value]
    if not is_global_norm(m):
        return None
    owner = getattr(vars(m).get("forward"), "__self__", None)  # an adapter already active
    return owner if isinstance(owner, InstanceNormStats) else InstanceNormStats(m)


def stats_layers(model: nn.Module) -> list[NormStatsLayer]:
    """Every globally normalised layer of ``model`` as a :class:`NormStatsLayer`."""
    return [layer for m in model.modules() if (layer := stats_layer(m)) is not None]


@contextlib.contextmanager
def record_norm_stats(model: nn.Module) -> Iterator[NormStats]:
    """Within the block, forward passes record each instance norm's input mean and variance
    (in the order the pass reaches them)."""
    stats: NormStats = {}
    layers = stats_layers(model)
    try:
        for layer in layers:
            layer.record = stats
        yield stats
    finally:
        for layer in layers:
            layer.record = None


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module, stats: NormStats) -> Iterator[None]:
    """Within the block, the instance norms of ``model`` in ``stats`` use those statistics
    instead of their input's."""
    frozen: list[NormStatsLayer] = []
    try:
        for m, pair in stats.items():
            layer = stats_layer(m)
            if layer is None:
                raise ValueError(f"{type(m).__name__} is not a globally normalised layer")
            layer.frozen = pair
            frozen.append(layer)
        yield
    finally:
        for layer in frozen:
            layer.frozen = None


@contextlib.contextmanager
def probing(module: nn.Module, probe: Probe) -> Iterator[None]:
    """Within the block, a forward pass reaching ``module`` (a globally normalised layer) hands
    its pre-normalisation values to ``probe`` and stops there (:class:`StopForward`)."""
    layer = stats_layer(module)
    if layer is None:
        raise ValueError(f"{type(module).__name__} is not a globally normalised layer")
    layer.probe = probe
    try:
        yield
    finally:
        layer.probe = None
