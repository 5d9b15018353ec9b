"""Inference: run a transform network on images of any size, quickly, within a memory budget.

The package, one concept per module (an image's path through it: docs/architecture.md; the
measurements behind the choices: docs/inference.md):

* :mod:`.predictor` — :class:`Predictor`, what the commands use: device placement (CUDA: fp16
  autocast, optional ``torch.compile``; never reduced precision on the CPU), padding to the
  net's stride, the fast path, and tiles when an image does not fit the memory budget —
  including exact whole-image instance-norm statistics for tiles (in stages for fast nets).
* :mod:`.memory` — free memory, the default budget, ``--memory`` sizes, :func:`tile_side` (the
  one place a budget becomes a tile size) and the CPU allocator policy
  (:func:`keep_freed_memory`).
* :mod:`.geometry` — :class:`NetInfo` and :func:`analyze`: scale, total stride, receptive field
  and activation memory of any network (duck-typed: layers may describe themselves).
* :mod:`.tiles` — cutting an axis into overlapping tiles (:func:`plan_axis`), crops with a
  context margin, cross-fade ramps, padding to a multiple, sums over disjoint tile pieces.
* :mod:`.normstats` — the instance-norm statistics protocol (record / freeze / probe) shared by
  the fused layers and plain ``nn.InstanceNorm2d`` (through an adapter).
* :mod:`.fused` — the fused channels_last layers of the fast path (:class:`FusedConv`,
  :class:`FusedResidual`).
* :mod:`.fastpath` — :func:`fast_model`: the paper's networks rebuilt from fused layers with the
  same weights (:class:`FastTransform`); outputs equal the plain network to float round-off.

Tiled output equals untiled output to float round-off (tested). File handling of the
``stylize`` / ``upscale`` / ``optimize`` commands lives in ``percepkit/commands/_batch.py``.
"""

from __future__ import annotations

from .fastpath import FastPathWarning, FastTransform, fast_model
from .fused import FusedConv, FusedResidual
from .geometry import NetInfo, analyze, geometry
from .memory import (
    available_memory,
    default_memory_budget,
    keep_freed_memory,
    parse_memory,
    tile_side,
)
from .normstats import NormStats, frozen_norm_stats, record_norm_stats
from .predictor import Predictor, TileCallback
from .tiles import pad_to_multiple, plan_axis

__all__ = [
    "FastPathWarning", "FastTransform", "FusedConv", "FusedResidual", "NetInfo", "NormStats",
    "Predictor", "TileCallback", "analyze", "available_memory", "default_memory_budget",
    "fast_model", "frozen_norm_stats", "geometry", "keep_freed_memory", "pad_to_multiple",
    "parse_memory", "plan_axis", "record_norm_stats", "tile_side",
]
