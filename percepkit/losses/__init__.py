"""Loss terms and the composite loss that sums them; one module per family.

| module | terms |
| --- | --- |
| ``base`` | ``LossInputs``, ``LossTerm``, ``CompositeLoss``, ``build_loss`` |
| ``pixel`` | ``pixel``, ``charbonnier``, ``tv`` |
| ``perceptual`` | ``feature``, ``style`` (Johnson et al. 2016), ``gram_matrix`` |
| ``frequency`` | ``fft``, ``focal_frequency`` |
| ``contextual`` | ``contextual`` (Mechrez et al. 2018) |
| ``adversarial`` | ``gan`` (vanilla, LSGAN, hinge; relativistic average as ESRGAN) |

Importing this package registers every term in :data:`percepkit.registry.LOSSES`. Exact
definitions are in each module and in docs/losses.md.
"""

from __future__ import annotations

from .adversarial import GANLoss
from .base import CompositeLoss, LossInputs, LossTerm, build_loss
from .contextual import ContextualLoss
from .frequency import FFTLoss, FocalFrequencyLoss
from .perceptual import FeatureLoss, StyleLoss, gram_matrix
from .pixel import CharbonnierLoss, PixelLoss, TVLoss

__all__ = [
    "CharbonnierLoss", "CompositeLoss", "ContextualLoss", "FFTLoss", "FeatureLoss",
    "FocalFrequencyLoss", "GANLoss", "LossInputs", "LossTerm", "PixelLoss", "StyleLoss", "TVLoss",
    "build_loss", "gram_matrix",
]
