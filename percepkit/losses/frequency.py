"""Frequency-domain terms: ``fft`` (L1 on the spectrum) and ``focal_frequency`` (Jiang et al. 2021).

Both use the orthonormal 2-D DFT over (H, W) of each channel, F = ``torch.fft.fft2(x,
norm="ortho")``, so that Σ|F(x)|² = Σx² (Parseval) and values do not grow with the image size.

* ``fft``: mean over B·C·H·W and the two parts of |Re F(ŷ) - Re F(y)| and |Im F(ŷ) - Im F(y)|,
  i.e. ``l1_loss(view_as_real(F(ŷ)), view_as_real(F(y)))``.
* ``focal_frequency``: the official ``focal-frequency-loss`` package's FocalFrequencyLoss
  (v0.3.0), vectorised: images are cut into patch_factor² patches, d = |F(ŷ) - F(y)|² per
  frequency, w = |F(ŷ) - F(y)|^alpha (log(1 + ·) if ``log_matrix``) divided by its maximum over
  the frequencies of each image/patch/channel (over the whole batch if ``batch_matrix``), NaN
  set to 0, clamped to [0, 1] and detached; loss = mean(w · d). ``ave_spectrum`` averages the
  spectra over the batch first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PercepkitError
from ..registry import LOSSES
from .base import LossInputs, LossTerm


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DFT over the last two dimensions, in float32 (complex64)."""
    return torch.fft.fft2(x.float(), norm="ortho")


@LOSSES.register("fft", aliases=("frequency_l1",))
class FFTLoss(LossTerm):
    """L1 between the real and imaginary parts of the orthonormal 2-D FFTs of output and target."""

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return F.l1_loss(torch.view_as_real(spectrum(inputs.output)),
                         torch.view_as_real(spectrum(inputs.target)))


def _patch_spectra(x: torch.Tensor, patch_factor: int) -> torch.Tensor:
    """(B, C, H, W) -> spectra of its patch_factor² patches, (B, P², C, H/P, W/P)."""
    b, c, height, width = x.shape
    p = patch_factor
    if height % p or width % p:
        raise PercepkitError(f"focal_frequency: patch_factor {p} must divide the image height "
                             f"and width, got {height}x{width}; choose another patch_factor "
                             f"or a patch size divisible by it.")
    h, w = height // p, width // p
    patches = x.reshape(b, c, p, h, p, w).permute(0, 2, 4, 1, 3, 5).reshape(b, p * p, c, h, w)
    return spectrum(patches)


@LOSSES.register("focal_frequency", aliases=("ffl",))
class FocalFrequencyLoss(LossTerm):
    """Focal frequency loss (Jiang et al. 2021): spectrum distance, hard frequencies weighted up."""

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, patch_factor: int = 1,
                 ave_spectrum: bool = False, log_matrix: bool = False,
                 batch_matrix: bool = False) -> None:
        super().__init__(weight)
        if patch_factor < 1:
            raise ValueError(f"patch_factor must be >= 1, got {patch_factor}")
        self.alpha = float(alpha)
        self.patch_factor = int(patch_factor)
        self.ave_spectrum = ave_spectrum
        self.log_matrix = log_matrix
        self.batch_matrix = batch_matrix

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        pred = _patch_spectra(inputs.output, self.patch_factor)
        real = _patch_spectra(inputs.target, self.patch_factor)
        if self.ave_spectrum:
            pred, real = pred.mean(0, keepdim=True), real.mean(0, keepdim=True)
        diff = pred - real
        distance = diff.real.square() + diff.imag.square()
        with torch.no_grad():
            matrix = distance.sqrt().pow(self.alpha)
            if self.log_matrix:
                matrix = torch.log(matrix + 1.0)
            if self.batch_matrix:
                matrix = matrix / matrix.max()
            else:
                matrix = matrix / matrix.amax(dim=(-2, -1), keepdim=True)
            matrix = torch.nan_to_num(matrix, nan=0.0).clamp(0.0, 1.0)
        return (matrix * distance).mean()
