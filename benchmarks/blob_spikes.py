"""How concentrated is each layer of a style net? (docs/zoo.md, "Where the blobs come from")

StyleGAN2's "droplet": a network with instance normalisation can make one strong local peak
that dominates a layer's per-image statistics, and so scale the rest of the image as it likes.
This measures that peak directly. For every convolution of the network (the last one excepted)
and each held-out BSD100 photo: standardise each channel over the image (what instance norm
does), take each pixel's energy (the sum of its squared standardised channels) and print the
share (%) of the layer's energy held by the top 2 % of pixels, averaged over the photos. No
concentration gives about 2 %; the first layer of the zoo's instance-norm nets, which mostly
responds to the photo's edges, gives 18-22 %; a droplet network's last layers put most of their
energy into the blobs' few pixels. The measure is about instance norm's statistics: a network
without normalisation (``norm: none``) has none for a peak to dominate, and its raw convolution
outputs (unlike normalised ones) can be concentrated anywhere without setting any scale.

    python benchmarks/blob_spikes.py udnie candy candy_lite \
        runs/udnie_nonorm/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artifact_scores import BENCH, IMAGE_PHOTOS  # noqa: E402

#: the share of the pixels whose energy is summed
TOP = 0.02


def concentration(activation: torch.Tensor, top: float = TOP) -> float:
    """Share (%) of the channel-standardised energy of a (C, H, W) activation in its top
    ``top`` share of pixels."""
    mean = activation.mean((1, 2), keepdim=True)
    z = (activation - mean) / (activation.std((1, 2), keepdim=True) + 1e-8)
    energy = (z ** 2).sum(0).flatten()
    k = max(1, int(energy.numel() * top))
    return float(energy.topk(k).values.sum() / energy.sum()) * 100.0


def layer_concentrations(net: torch.nn.Module, image: torch.Tensor) -> list[float]:
    """:func:`concentration` of every convolution's output but the last, for one image."""
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.detach())) for m in convs]
    try:
        with torch.inference_mode():
            net(image[None])
    finally:
        for h in hooks:
            h.remove()
    return [concentration(o[0]) for o in outputs[:-1]]


def main() -> None:
    import percepkit
    from percepkit.data.images import read_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="zoo names or checkpoint files")
    parser.add_argument("--photos", nargs="+", default=[*IMAGE_PHOTOS, "37073"])
    args = parser.parse_args()
    images = [read_image(BENCH / "BSD100" / f"{p}.png") for p in args.photos]
    rows = []
    for name in args.models:
        net = percepkit.load(name)
        per_photo = [layer_concentrations(net, x) for x in images]
        rows.append((name, [sum(v) / len(v) for v in zip(*per_photo)]))
    width = max(len(r[1]) for r in rows)
    print("| model | " + " | ".join(f"conv {i + 1}" for i in range(width)) + " |")
    print("| --- |" + " --- |" * width)
    for name, values in rows:
        print(f"| `{Path(name).stem if name.endswith('.safetensors') else name}` | "
              + " | ".join(f"{v:.0f}" for v in values) + " |")


if __name__ == "__main__":
    main()
