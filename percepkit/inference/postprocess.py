"""Post-processing of network outputs: colour preservation, strength, histogram matching.

All functions take and return float CxHxW (or BxCxHxW) tensors in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import mix_channels

# BT.601 full-range RGB <-> YCbCr (JPEG), without offsets: Cb/Cr centred on 0.
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114],
                            [-0.168736, -0.331264, 0.5],
                            [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance-only transfer (Gatys et al. 2016): the stylized luma with the content's chroma."""
    y = mix_channels(_RGB_TO_YCC, stylized)[..., :1, :, :]
    cbcr = mix_channels(_RGB_TO_YCC, content)[..., 1:, :, :]
    return mix_channels(_YCC_TO_RGB, torch.cat([y, cbcr], dim=-3)).clamp(0, 1)


def blend(stylized: torch.Tensor, content: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength`` x stylized + (1 - strength) x content (strength in [0, 1])."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    return torch.lerp(content, stylized, strength)


def match_histogram(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each channel's histogram of ``image`` to ``reference`` (any sizes).

    The same mapping as ``skimage.exposure.match_histograms``: every distinct value of the image
    goes to the reference value at the same quantile (linear interpolation between quantiles).
    The paper (Sec. 4.2) applies it to SR outputs, matching the low-resolution input.
    """
    if image.dim() == 4:
        return torch.stack([match_histogram(i, r) for i, r in zip(image, reference)])
    src = image.detach().cpu().double().numpy()
    ref = reference.detach().cpu().double().numpy()
    out = np.empty_like(src)
    for c in range(src.shape[0]):
        values, inverse, counts = np.unique(src[c].ravel(), return_inverse=True,
                                            return_counts=True)
        ref_values, ref_counts = np.unique(ref[c].ravel(), return_counts=True)
        quantiles = np.cumsum(counts) / src[c].size
        ref_quantiles = np.cumsum(ref_counts) / ref[c].size
        out[c] = np.interp(quantiles, ref_quantiles, ref_values)[inverse].reshape(src[c].shape)
    return torch.from_numpy(out).to(image.device, image.dtype)
