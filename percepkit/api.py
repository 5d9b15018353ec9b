"""The public Python API, exported from ``percepkit`` (docs/api.md).

``percepkit.create_loss``, ``create_metric``, ``load``, ``list_models``, ``list_losses``,
``list_metrics`` and ``Predictor``; ``import percepkit`` stays cheap (``percepkit.__getattr__``
imports this module on first use).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .inference.padded import PaddedNet
from .inference.predictor import Predictor
from .losses.create import Loss, create_loss
from .metrics.create import MetricLoss, create_metric
from .registry import LOSSES, METRICS, MODELS

__all__ = ["Loss", "MetricLoss", "PaddedNet", "Predictor", "create_loss", "create_metric",
           "list_losses", "list_metrics", "list_models", "load"]


def load(name_or_path: str | Path, task: str | None = None, scale: int | None = None,
         device: str | torch.device | None = None) -> PaddedNet:
    """A network ready for inference (eval mode, frozen) from, first match wins, a file (a
    percepkit checkpoint or a supported third-party file), a trained model's name (``"candy"``;
    :func:`list_models`) or a registered transform's name (``"bicubic"``, built with ``scale``,
    default 4; weights as initialised, with a warning when it has any) —
    :mod:`percepkit.models.loader`.

    The module maps RGB images in [0, 1], ``(B, 3, H, W)`` of any size, to ``(B, 3, scale H,
    scale W)``: it pads and crops as ``percepkit stylize`` / ``upscale`` do, so its output is
    theirs. ``task`` (a registered task: ``"style"``, ``"sr"``, ...; ``percepkit list tasks``)
    and ``scale``, when given, are checked against the model's. ``device``: default the CPU.
    """
    from .models.loader import load_network

    loaded = load_network(name_or_path, task=task, scale=scale, device=device or "cpu")
    if loaded.untrained_parameters:
        warnings.warn(f"{name_or_path}: a transform built with random weights (weights as "
                      f"initialised); give a checkpoint or a model name for trained ones",
                      stacklevel=2)
    net = loaded.net
    for p in net.parameters():
        p.requires_grad_(False)
    return PaddedNet(net).eval()


def list_models(pattern: str = "*") -> list[str]:
    """Names of the trained models (built in and from plugins), matching a wildcard pattern."""
    return MODELS.list(pattern)


def list_losses(pattern: str = "*") -> list[str]:
    """Names of the loss terms :func:`create_loss` builds (plugins included)."""
    return LOSSES.list(pattern)


def list_metrics(pattern: str = "*") -> list[str]:
    """Names of the metrics :func:`create_metric` builds (plugins included)."""
    return METRICS.list(pattern)
