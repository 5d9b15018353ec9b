"""Does the training objective want the style models' white blobs? (docs/zoo.md, issue 21)

For each style model and held-out BSD100 photo: start from the model's own output and descend
the model's training objective (its recipe's loss, style targets set) on the image's pixels
(Adam, lr 0.01, clamped to [0, 1]) at the photo's size; print the objective and the ``blobs``
share every 20 steps. If the blobs vanish while the objective falls, the objective does not
want them and the network makes them anyway (an architecture / optimisation effect of the
network, not a property of the loss). Look at the image too: ``blobs`` counts saturated
pixels only, so a blob that descent merely dims below saturation reads 0 while it is still
there (udnie's do: docs/zoo.md). Writes docs/images/zoo/blob_descent_<model>.jpg: the output
and the descended image, one row per photo.

    python benchmarks/blob_objective.py --models udnie --steps 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artifact_scores import BENCH, IMAGE_PHOTOS, IMAGES, REPO  # noqa: E402
from model_zoo import _loss_of, _mod4  # noqa: E402


def main() -> None:
    import percepkit
    from percepkit.data.images import image_grid, quantize, read_image, stack_rows, write_image
    from percepkit.metrics.artifacts import blob_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["udnie"])
    parser.add_argument("--photos", nargs="+", default=list(IMAGE_PHOTOS))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    print("| model | photo | step | objective | content | style | blobs (%) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        net, (loss, _) = percepkit.load(name).eval(), _loss_of(name)
        rows = []
        for p in args.photos:
            x = _mod4(read_image(BENCH / "BSD100" / f"{p}.png"))[None]
            with torch.no_grad():
                start = net(x).clamp(0, 1)
            img = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([img], lr=0.01)
            for step in range(args.steps + 1):
                total, parts = loss(img, x)
                if step % 20 == 0 or step == args.steps:
                    out = quantize(img.detach()[0])[None]
                    share = float(blob_mask(out, x).float().mean()) * 100
                    print(f"| {Path(name).stem} | {p} | {step} | {total.item():.3f} | "
                          f"{parts['feature'].item():.3f} | {parts['style'].item():.3f} | "
                          f"{share:.2f} |", flush=True)
                if step == args.steps:
                    break
                opt.zero_grad()
                total.backward()
                opt.step()
                with torch.no_grad():
                    img.clamp_(0, 1)
            rows.append(image_grid([start[0], img.detach()[0]], labels=[
                f"{Path(name).stem} {p}", f"after {args.steps} descent steps"]))
        path = write_image(IMAGES / f"blob_descent_{Path(name).stem}.jpg", stack_rows(rows))
        print(f"\nwrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
