"""Where the 4-px grid of perceptual SR models could come from: the period-4 structure of the
loss gradient with respect to the output (issue 19/21 experiments; numbers in the issue notes).

For each Set5 image, an output without a grid of its own is compared with the HR image and the
gradient of a loss with respect to that output is measured: the standard deviation of its
16 phase means (position modulo 4) of the high-passed gradient, divided by the standard
deviation of the high-passed gradient (scale-free; a field of white noise of this size gives
about 0.02). Losses: l_feat at VGG16 relu2_2 and relu3_3 (ImageNet weights), the same averaged
over all 16 shifts of both images before the loss network (``_jit``: what random jitter of the
loss network's input would give on average), and l_pixel (MSE). Outputs: ``bicubic`` (MATLAB
x4 of the /4 image: its error to the HR image is aligned with the LR grid) and ``blur`` (the HR
image blurred, Gaussian sigma 1.5: no period-4 structure anywhere).

    PERCEPKIT_WEIGHTS=../shared/weights python benchmarks/grid_gradient.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import percepkit
from percepkit.data.images import list_images, read_image
from percepkit.data.imresize import imresize
from percepkit.metrics.artifacts import grid_phase_means, luma_levels
from percepkit.registry import LOSS_NETWORKS

PERIOD = 4


def lattice(g: torch.Tensor) -> float:
    """Phase-mean spread of the high-passed gradient over its own spread (scale-free)."""
    g = g / g.abs().max()
    y = luma_levels(g)
    high = y[..., 1:-2, 1:-2] - F.avg_pool2d(y, PERIOD, stride=1)
    return float(grid_phase_means(g, PERIOD).std() / high.std())


def gradient(loss: torch.nn.Module, out: torch.Tensor, hr: torch.Tensor,
             shifts: int = 1) -> torch.Tensor:
    """d loss / d out, averaged over ``shifts`` x ``shifts`` crops of both images."""
    h, w = out.shape[-2:]
    total = torch.zeros_like(out)
    for dy in range(shifts):
        for dx in range(shifts):
            o = out.clone().requires_grad_(True)
            window = (..., slice(dy, h - shifts + 1 + dy), slice(dx, w - shifts + 1 + dx))
            value = loss(o[window], hr[window])
            value = value[0] if isinstance(value, tuple) else value
            total += torch.autograd.grad(value, o)[0]
    return total


def main() -> None:
    net = LOSS_NETWORKS.build({"name": "vgg16", "weights": "imagenet"})
    losses = {layer: percepkit.create_loss({"name": "feature", "layers": [layer]},
                                           loss_network=net)
              for layer in ("relu2_2", "relu3_3")}
    print("| image | output | " + " | ".join(f"{k} | {k}_jit" for k in losses)
          + " | pixel |")
    print("| --- | --- |" + " --- | --- |" * len(losses) + " --- |")
    for path in list_images("percepkit/assets/Set5"):
        hr = read_image(path)[None]
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]
        outputs = {
            "bicubic": (imresize(imresize(hr, scale=0.25), scale=4).clamp(0, 1), hr),
            "blur": (TF.gaussian_blur(hr, 9, 1.5)[..., 8:-8, 8:-8], hr[..., 8:-8, 8:-8]),
        }
        for kind, (out, target) in outputs.items():
            cells = []
            for loss in losses.values():
                cells += [lattice(gradient(loss, out, target)),
                          lattice(gradient(loss, out, target, shifts=PERIOD))]
            cells.append(lattice(out - target))
            print(f"| {path.stem} | {kind} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
