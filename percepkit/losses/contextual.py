"""The contextual loss (Mechrez, Talmi & Zelnik-Manor, ECCV 2018, "The Contextual Loss for Image
Transformation with Non-Aligned Data"), as the authors' reference computes it (roimehrez/
contextualLoss, TensorFlow ``CX/CSFlow.py``: ``CX_loss`` with ``Distance.DotProduct``, and
``CX_helper.CX_loss_helper`` for the sampling; ``config.py``: h = 0.5, layers conv3_2 and conv4_2
of VGG19, which are post-ReLU in their network, i.e. our ``relu3_2`` and ``relu4_2``).

For one layer, output features x_i and target features y_j (i, j over positions):

1. centre both by the mean μ of the target features over batch and positions: x - μ, y - μ;
2. cosine distance d_ij = (1 - cos(x_i - μ, y_j - μ)) / 2  (the reference's "zero to one");
3. relative distance d̃_ij = d_ij / (min_k d_ik + eps), eps = 1e-5;
4. w_ij = exp((1 - d̃_ij) / h); CX_ij = w_ij / Σ_k w_ik  (a softmax over j, computed as one);
5. CX = mean_j max_i CX_ij per image; loss = -log(CX), averaged over the batch and summed over
   layers with ``layer_weights``.

Feature maps with more than ``max_positions`` positions (default 65² = 4225, the reference's
``max_sampling_1d_size = 65``) are subsampled at random positions, the same positions for output
and target (drawn from torch's global generator), so memory stays at B·max_positions² floats
per intermediate. On identical inputs the loss is 0 when the target's feature vectors are
pairwise distinct; repeated vectors (flat image areas) share their CX weight, so it is above 0.
Vectors are L2-normalised with ``F.normalize`` (norm floored at 1e-12), which differs from the
reference only for a feature vector equal to μ, where the reference divides by zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LossInputs, LossTerm, full_precision, layer_weight_list


def contextual_similarity(output: torch.Tensor, target: torch.Tensor, bandwidth: float = 0.5,
                          eps: float = 1e-5) -> torch.Tensor:
    """CX per image for features (B, C, N) of the output and (B, C, M) of the target, in float32."""
    x, y = output.float(), target.float()
    mu = y.mean(dim=(0, 2), keepdim=True)
    x = F.normalize(x - mu, dim=1)
    y = F.normalize(y - mu, dim=1)
    with full_precision(x.device):
        cosine = torch.bmm(x.transpose(1, 2), y)  # (B, N, M): [b, i, j] = cos(x_i, y_j)
    distance = (1.0 - cosine) / 2.0
    relative = distance / (distance.amin(dim=2, keepdim=True) + eps)
    cx = torch.softmax((1.0 - relative) / bandwidth, dim=2)
    return cx.amax(dim=1).mean(dim=1)


def sample_positions(output: torch.Tensor, target: torch.Tensor, max_positions: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten (B, C, H, W) maps to (B, C, P), keeping at most ``max_positions`` random positions.

    Maps of the same size keep the same positions in both.
    """
    x, y = output.flatten(2), target.flatten(2)
    if x.shape[2] > max_positions or y.shape[2] > max_positions:
        idx_x = torch.randperm(x.shape[2], device=x.device)[:max_positions]
        same = x.shape[2] == y.shape[2]
        idx_y = idx_x if same else torch.randperm(y.shape[2], device=y.device)[:max_positions]
        x, y = x[:, :, idx_x], y[:, :, idx_y]
    return x, y


@LOSSES.register("contextual", aliases=("cx",))
class ContextualLoss(LossTerm):
    """Contextual loss (Mechrez et al. 2018): -log of the contextual similarity of features."""

    def __init__(self, layers: list[str] = ("relu3_2", "relu4_2"), weight: float = 1.0,
                 layer_weights: list[float] | None = None, bandwidth: float = 0.5,
                 eps: float = 1e-5, max_positions: int = 65 * 65) -> None:
        super().__init__(weight)
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {max_positions}")
        self.output_layers = self.target_layers = tuple(layers)
        self.layer_weights = layer_weight_list(layers, layer_weights)
        self.bandwidth = float(bandwidth)
        self.eps = float(eps)
        self.max_positions = int(max_positions)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        total = 0.0
        for k, w in zip(self.output_layers, self.layer_weights):
            x, y = sample_positions(inputs.output_features[k], inputs.target_features[k],
                                    self.max_positions)
            cx = contextual_similarity(x, y, self.bandwidth, self.eps)
            total = total + w * (-torch.log(cx)).mean()
        return total
