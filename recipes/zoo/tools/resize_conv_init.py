"""Warm start for a resize-convolution ``johnson_sr``: fit it to a trained ``deconv`` one.

The stride-1/2 3x3 convolution of the paper's upsampling blocks overlaps unevenly (Odena et al.
2016), which is where ``sr_x4_feat``'s 4-px dot grid comes from. Nearest x2 followed by a 3x3
convolution has no such pattern. This script copies every layer both nets share and fits each
upsampling convolution by least squares to the deconvolution's output on real training
features (in order, so the second block sees the first fitted block's output), so that a
resize-convolution net starts where the deconvolution net ended instead of from scratch.

    python recipes/zoo/tools/resize_conv_init.py sr_x4_pixel runs/sr_x4_pixel_rc_init.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from percepkit.data.images import read_image
from percepkit.data.imresize import imresize
from percepkit.models.checkpoint import Checkpoint, save_model
from percepkit.models.loader import load, resolve
from percepkit.registry import TRANSFORMS


def fit_block(deconv: torch.nn.ConvTranspose2d, conv: torch.nn.Conv2d, pad: torch.nn.Module,
              x: torch.Tensor) -> None:
    """Least-squares fit of ``conv(pad(nearest(x)))`` to ``deconv(x)`` (before the ReLU)."""
    with torch.no_grad():
        target = deconv(x)                                   # N, C, 2H, 2W
        cols = F.unfold(pad(F.interpolate(x, scale_factor=2, mode="nearest")), 3)
        a = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # positions x (C*9)
        a = torch.cat([a, torch.ones(a.shape[0], 1)], 1)
        b = target.flatten(2).transpose(1, 2).reshape(-1, target.shape[1])
        sol = torch.linalg.lstsq(a.double(), b.double()).solution.float()
        conv.weight.copy_(sol[:-1].T.reshape_as(conv.weight))
        conv.bias.copy_(sol[-1])


def main(source: str, out: str, images: str = "../shared/data/train/BSD200") -> None:
    src = load(source)
    spec = dict(Checkpoint.read(resolve(source).path).transform or {})
    spec["upsample"] = "resize_conv"
    dst = TRANSFORMS.build(spec).eval()
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in dst.state_dict()},
                        strict=False)
    g = torch.Generator().manual_seed(0)
    crops = []
    for path in sorted(Path(images).glob("*.png"))[:48]:
        img = read_image(path)
        i = int(torch.randint(0, img.shape[-2] - 96, (1,), generator=g))
        j = int(torch.randint(0, img.shape[-1] - 96, (1,), generator=g))
        crops.append(imresize(img[None, :, i:i + 96, j:j + 96], scale=0.25))
    x = torch.cat(crops).clamp(0, 1)
    src_layers, dst_layers = list(src.net), list(dst.net)
    h = x
    with torch.no_grad():
        for s, d in zip(src_layers, dst_layers):
            if isinstance(s[0] if isinstance(s, torch.nn.Sequential) else s,
                          torch.nn.ConvTranspose2d):
                fit_block(s[0], d[2], d[1], h)
            h = d(h)
    meta = {"task": "sr", "transform": spec,
            "note": f"resize_conv least-squares fit of {source} (recipes/zoo/tools)"}
    save_model(out, dst.state_dict(), meta)
    with torch.no_grad():
        lr = x[:8]
        diff = (src(lr) - dst(lr)).abs()
    print(f"{out}: mean |difference| to {source} on 8 training crops {diff.mean() * 255:.2f} "
          f"levels (max {diff.max() * 255:.1f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
