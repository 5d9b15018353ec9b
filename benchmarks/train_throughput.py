"""Training throughput (images/s): percepkit's Trainer vs a plain PyTorch loop, same model + loss.

Usage (see docs/training.md for our numbers)::

    python benchmarks/train_throughput.py --device cpu --size 128 --steps 8 --warmup 2
    python benchmarks/train_throughput.py --device cuda            # the recipes' own sizes

For each recipe (default: ``recipes/style_johnson2016.yaml`` and ``recipes/sr_x4_feat.yaml``)
both loops train the recipe's transform with the recipe's CompositeLoss, optimiser, batch size,
AMP and channels_last settings on the same in-memory data (procedurally generated images of the
recipe's training size, so disk speed and JPEG decoding do not enter), with the same number of
DataLoader workers. The loss network uses random weights (speed does not depend on the values).

* **percepkit**: ``Trainer.run()`` as ``percepkit train`` runs it (per-step NaN check and
  all-reduce of the loss terms, per-term logging every step, LR schedule, run directory);
  validation, previews and checkpoints are pushed past the timed steps.
* **plain**: ``for x in loader: loss(model(x)).backward(); opt.step()`` with the same autocast
  and GradScaler, no logging.

Images/s is measured from the end of step ``warmup`` to the end of the last step. Rounds
alternate (percepkit, plain, percepkit, plain, ...) and the best round of each is reported, which
is the fairest comparison on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = [REPO / "recipes" / "style_johnson2016.yaml",
                   REPO / "recipes" / "sr_x4_feat.yaml"]


def overrides(recipe_path: Path, args: argparse.Namespace) -> list[str]:
    """Recipe overrides: synthetic in-memory data, random loss-network weights, no extras."""
    from percepkit.recipe import load_recipe

    rec = load_recipe(recipe_path)
    total = args.warmup + args.steps
    out = [f"train.iterations={total}", f"train.device={args.device}",
           f"train.val_every={total + 1}", f"train.sample_every={total + 1}",
           f"checkpoint.every={total + 1}", "data.val=", "train.ema=", "train.compile=false",
           f"train.workers={args.workers}"]
    if "loss_network" in rec.raw:
        out.append("loss_network.weights=random")
    if args.batch:
        out.append(f"train.batch_size={args.batch}")
    if rec.task == "sr":
        scale = int(rec.raw["transform"].get("scale", 4))
        patch = args.size or int(rec.raw["data"]["train"].get("patch_size", 288))
        out += [f"data.train={{name: synthetic, count: 64, size: {patch}, scale: {scale}}}"]
    else:
        size = args.size or int(rec.raw["data"]["train"].get("size", 256))
        out += [f"data.train={{name: synthetic, count: 64, size: {size}}}",
                "data.style_image=synthetic:1", f"data.style_size={size}"]
    return out


def time_trainer(path: Path) -> float:
    """Images/s of ``Trainer.run`` after the warm-up steps (``percepkit bench --train``'s
    measurement, as a mean over the timed steps)."""
    from percepkit.speed_table import train_speed

    speed = train_speed(str(path), overrides(path, ARGS), steps=ARGS.steps, warmup=ARGS.warmup)
    return speed.batch_size * len(speed.step_seconds) / sum(speed.step_seconds)


def time_plain(recipe) -> float:
    """Images/s of a minimal PyTorch loop over the same model, loss, optimiser and data."""
    from percepkit.devices import resolve_device
    from percepkit.registry import DATASETS
    from percepkit.train import load_style_image

    s = recipe.train
    device = resolve_device(s.device)
    torch.manual_seed(s.seed)
    model = recipe.build_transform().to(device).train()
    loss = recipe.build_loss().to(device)
    cuda = device.type == "cuda"
    if s.channels_last and cuda:
        model.to(memory_format=torch.channels_last)
        loss.to(memory_format=torch.channels_last)
    if recipe.task == "style":
        loss.set_style(load_style_image(recipe.data.style_image, recipe.data.style_size)
                       .to(device))
    opt = recipe.build_optimizer(model.parameters())
    amp = s.amp and cuda
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    data = DATASETS.build(recipe.data.train)
    loader = DataLoader(data, batch_size=s.batch_size, shuffle=True, drop_last=True,
                        num_workers=s.workers, pin_memory=cuda)
    fmt = torch.channels_last if s.channels_last and cuda else torch.contiguous_format
    times = []
    step = 0
    while step < s.iterations:
        for batch in loader:
            if recipe.task == "sr":
                x = batch["lr"].to(device, non_blocking=True, memory_format=fmt)
                y = batch["hr"].to(device, non_blocking=True, memory_format=fmt)
            else:
                x = y = batch["image"].to(device, non_blocking=True, memory_format=fmt)
            with torch.autocast(device.type) if amp else nullcontext():
                total, _ = loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            step += 1
            if step == s.iterations:
                break
    t = times[ARGS.warmup - 1:]
    return s.batch_size * (len(t) - 1) / (t[-1] - t[0])


def main(argv: list[str] | None = None) -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("recipes", nargs="*", type=Path, default=DEFAULT_RECIPES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=None,
                        help="image (style) or HR patch (SR) size; default: the recipe's")
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--workers", type=int, default=2)
    ARGS = parser.parse_args(argv)
    if ARGS.warmup < 1 or ARGS.steps < 2:
        parser.error("--warmup must be >= 1 and --steps >= 2")
    from percepkit.recipe import load_recipe

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {ARGS.device}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
             and ARGS.device != "cpu" else ""))
    print("| recipe | image size | batch | percepkit Trainer (img/s) | plain loop (img/s) "
          "| ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in ARGS.recipes:
        recipe = load_recipe(path, overrides(path, ARGS))
        ours, plain = [], []
        for _ in range(ARGS.rounds):
            ours.append(time_trainer(path))
            plain.append(time_plain(recipe))
        train = recipe.raw["data"]["train"]
        size = train["size"]
        print(f"| {recipe.name} | {size}x{size} | {recipe.train.batch_size} | {max(ours):.2f} | "
              f"{max(plain):.2f} | {max(ours) / max(plain):.3f} |", flush=True)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
