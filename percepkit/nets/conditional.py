"""Several styles in one network: conditional instance normalisation (Dumoulin et al. 2017).

Every normalisation layer of the style net keeps one scale and one shift per channel *per
style*; the rest of the network is shared. A blend of styles is the convex combination of their
scales and shifts (the paper's Fig. 7 interpolation). Our zoo nets have no normalisation
(instance norm made the first zoo's white blobs, docs/zoo.md), so there the per-style affine
follows each convolution directly ("conditional affine"); with ``norm: instance`` it is the
paper's conditional instance norm.

For inference a blend is folded into a plain single-style network (:func:`blend`): scale and
shift into the preceding convolution (no normalisation) or into an affine instance norm, so
every inference path (tiling, the fused fast path, export) runs it unchanged.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import PercepkitError


class StyleAffine(nn.Module):
    """Per-style, per-channel scale and shift, weighted by the active blend ``mix``
    (a buffer of one weight per style; :func:`select_style` sets it)."""

    def __init__(self, channels: int, styles: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(styles, channels))
        self.shift = nn.Parameter(torch.zeros(styles, channels))
        self.register_buffer("mix", nn.functional.one_hot(torch.tensor(0), styles).float(),
                             persistent=False)

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The blended (scale, shift), each (C,), in float32."""
        mix = self.mix.float()
        return mix @ self.scale.float(), mix @ self.shift.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, b = self.coefficients()
        return x * g.to(x.dtype)[:, None, None] + b.to(x.dtype)[:, None, None]


def conditional_norm(kind: str, channels: int, styles: int) -> nn.Module:
    """The per-style normalisation of a ``styles``-style net: conditional instance norm for
    ``kind="instance"``, the per-style affine alone for ``"none"``."""
    if kind == "instance":
        return nn.Sequential(nn.InstanceNorm2d(channels, affine=False),
                             StyleAffine(channels, styles))
    if kind == "none":
        return StyleAffine(channels, styles)
    raise ValueError(f"several styles need norm 'instance' or 'none', got {kind!r}")


def style_weights(names: Sequence[str], spec: str | Mapping[str, float]) -> torch.Tensor:
    """The blend ``spec`` (``"candy:0.5,mosaic:0.5"``, ``"candy"`` or ``{name: weight}``) as one
    weight per style of ``names``, normalised to sum 1; a bad spec is a one-line error."""
    text = spec if isinstance(spec, str) else ",".join(f"{k}:{v}" for k, v in spec.items())
    if isinstance(spec, str):
        parts: dict[str, float] = {}
        for item in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, weight = item.partition(":")
            try:
                parts[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise PercepkitError(f"--style {spec}: {weight!r} is not a number (write "
                                     "NAME:WEIGHT, e.g. candy:0.5,mosaic:0.5)") from None
        spec = parts
    weights = torch.zeros(len(names))
    for name, w in spec.items():
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PercepkitError(f"--style: no style {name!r} in this model{hint}; it has "
                                 f"{', '.join(names)}")
        if not (w >= 0 and math.isfinite(w)):
            raise PercepkitError(f"--style {text}: the weight of {name} must be a finite "
                                 f"number, 0 or more, got {w}")
        weights[list(names).index(name)] = w
    if float(weights.sum()) <= 0:
        raise PercepkitError(f"--style {text}: the weights sum to 0; give at least one style a "
                             "positive weight")
    return weights / weights.sum()


def _affines(net: nn.Module) -> list[StyleAffine]:
    return [m for m in net.modules() if isinstance(m, StyleAffine)]


def select_style(net: nn.Module, weights: torch.Tensor) -> None:
    """Make ``net`` (with :class:`StyleAffine` layers) run the blend ``weights`` (one per
    style, summing to 1): in place, for training and validation."""
    for m in _affines(net):
        m.mix.copy_(weights.to(m.mix))


@torch.no_grad()
def blend(net: nn.Module, weights: torch.Tensor) -> nn.Module:
    """A single-style copy of ``net`` running the blend ``weights``, with the per-style layers
    folded away: the copy has the module structure of the same net built without styles."""
    out = copy.deepcopy(net)
    select_style(out, weights)
    for seq in [m for m in out.modules() if isinstance(m, nn.Sequential)]:
        for i, child in enumerate(seq):
            if isinstance(child, StyleAffine) and not isinstance(seq[i - 1], nn.InstanceNorm2d):
                conv = seq[i - 1]  # after a convolution: fold into it
                assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.bias is not None
                g, b = child.coefficients()
                shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
                conv.weight.mul_(g.view(shape).to(conv.weight))
                conv.bias.copy_(g * conv.bias.float() + b)
                seq[i] = nn.Identity()
            elif isinstance(child, nn.Sequential) and len(child) == 2 \
                    and isinstance(child[1], StyleAffine):  # conditional instance norm
                g, b = child[1].coefficients()
                norm = nn.InstanceNorm2d(g.numel(), affine=True).to(g.device)
                norm.weight.copy_(g)
                norm.bias.copy_(b)
                seq[i] = norm
    if hasattr(out, "style_names"):
        out.style_names = []
    return out


def one_style(model: nn.Module, source: str, mix: str | None) -> nn.Module:
    """The network a command runs: a multi-style ``model`` folded to ``mix`` (``--style``),
    any other as it is; a missing or misplaced ``--style`` is a one-paragraph error."""
    names = getattr(model, "style_names", [])
    if not names:
        if mix is not None:
            raise PercepkitError(f"--style {mix}: {source} has one style; --style chooses among "
                                 "the styles of a multi-style model (percepkit list models)")
        return model
    if mix is None:
        raise PercepkitError(f"{source} is a multi-style model ({', '.join(names)}): choose a "
                             f"style or a blend with --style, e.g. --style {names[0]} or "
                             f"--style {names[0]}:0.5,{names[1]}:0.5")
    return model.blend(mix)
