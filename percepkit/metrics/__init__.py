"""Image-quality metrics, one module per family.

* :mod:`.fidelity`: PSNR, SSIM (MATLAB ``ssim_index``) and MS-SSIM (MATLAB ``msssim.m``) on
  BT.601 studio-range Y (default) or RGB, the convention of published SR tables;
* :mod:`.lpips`: LPIPS v0.1 with real ImageNet backbones;
* :mod:`.dists`: DISTS with the VGG16 ImageNet trunk and the authors' alpha/beta;
* :mod:`.artifacts`: ``grid`` (a periodic pattern at a period) and ``blobs`` (saturated blobs
  where the reference is not saturated), artifacts PSNR and LPIPS barely register;
* :mod:`.base`: the ``Metric`` base class and the scored planes.

Every metric is registered in :data:`percepkit.registry.METRICS`, so a plugin can add one
(``@METRICS.register("my_metric")``) and ``percepkit eval --metrics psnr,my_metric`` shows it. A
metric is an ``nn.Module`` whose call maps ``(output, target)`` float tensors in [0, 1] shaped
(B, C, H, W) to one value per image, shape (B,), and whose ``convention`` says exactly what it
computes. Outputs are *not* rounded here; :mod:`percepkit.evaluation.evaluate` rounds model outputs
to 8 bits first.
"""

from __future__ import annotations

from .artifacts import Blobs, Grid, blobs, grid
from .base import Channel, Metric, PlaneMetric, rgb_to_y, to_scored
from .dists import DISTS, dists_metric
from .fidelity import MSSSIM, PSNR, SSIM, gaussian_window, ms_ssim, psnr, ssim
from .lpips import LPIPS, LPIPSNetwork, lpips_metric

__all__ = ["DISTS", "LPIPS", "MSSSIM", "PSNR", "SSIM", "Blobs", "Channel", "Grid", "LPIPSNetwork",
           "Metric", "PlaneMetric", "blobs", "dists_metric", "gaussian_window", "grid",
           "lpips_metric", "ms_ssim", "psnr", "rgb_to_y", "ssim", "to_scored"]
