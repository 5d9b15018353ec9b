"""Metrics from Python, as in pyiqa: :func:`create_metric`, and :class:`MetricLoss` (a metric
as a differentiable, lower-is-better loss).

A metric's loss form is what its class declares (:attr:`~percepkit.metrics.base.Metric.loss_form`):
LPIPS and DISTS as they are, SSIM and MS-SSIM as 1 - the metric (same conventions as the metric:
Y channel by default, float64, the border crop). PSNR has none: it is unbounded, and minimising
the MSE (the ``pixel`` loss) maximises it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import PercepkitError
from ..registry import METRICS
from .base import Metric


class MetricLoss(nn.Module):
    """``loss(output, target)``: a metric's loss form averaged over the batch, a scalar in the
    output's dtype; lower is better and gradients reach ``output`` (the metric is frozen)."""

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        form = metric.loss_form or ("value" if not metric.higher_is_better else None)
        if form is None or metric.loss_instead:
            why = metric.loss_instead or ("it is higher-is-better and its class declares no "
                                          "loss_form ('value' or 'one_minus')")
            raise PercepkitError(f"metric {metric.name!r} cannot be used as a loss: {why}")
        if form not in ("value", "one_minus"):
            raise PercepkitError(f"metric {metric.name!r}: unknown loss_form {form!r} (expected "
                                 f"'value' or 'one_minus')")
        self.metric = metric.requires_grad_(False).eval()
        self.form = form

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.metric(output, target).mean()
        return (1.0 - value if self.form == "one_minus" else value).to(output.dtype)


def create_metric(name: str, as_loss: bool = False, **args: Any) -> Metric | MetricLoss:
    """The metric registered as ``name`` (``percepkit list metrics``), built with ``args`` (its
    constructor arguments: ``channel``, ``crop_border``, ``net``, ...).

    The metric maps ``(output, target)``, (B, C, H, W) in [0, 1], to one float64 value per image
    (its attributes ``higher_is_better`` and ``convention`` say how to read it). With
    ``as_loss=True`` it is a :class:`MetricLoss` instead: a scalar, lower is better,
    differentiable; a metric without a loss form (PSNR) is one clear error.
    """
    metric = METRICS.build({"name": name, **args}, where=f"metric {name}")
    return MetricLoss(metric) if as_loss else metric.eval()
