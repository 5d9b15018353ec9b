"""Training throughput (images/s): percepkit's Trainer vs plain PyTorch loops, same objective.

Usage (see docs/training.md for our numbers)::

    python benchmarks/train_throughput.py --device cpu --size 128 --steps 8 --warmup 2
    python benchmarks/train_throughput.py --device cuda            # the recipes' own sizes

For each recipe (default: ``recipes/style_johnson2016.yaml`` and ``recipes/sr_x4_feat.yaml``)
both loops train the recipe's transform with the recipe's CompositeLoss, optimiser, batch size,
precision and channels_last settings on the same in-memory data (procedurally generated images
of the recipe's training size, so disk speed and JPEG decoding do not enter), with the same
number of DataLoader workers. The loss network uses random weights (speed does not depend on
the values).

* **percepkit**: ``Trainer.run()`` as ``percepkit train`` runs it (per-step NaN check and
  all-reduce of the loss terms, per-term logging every step, LR schedule, run directory);
  validation, previews and checkpoints are pushed past the timed steps.
* **pytorch/examples-style loop**: what a user writes from pytorch/examples' fast_neural_style:
  its ``Vgg16`` (four frozen slices to relu4_3) runs on the output *and* the target every step,
  the content loss reads relu2_2 of both, the style Grams are computed once; the recipe's terms
  and weights are written out plainly (:class:`PlainLoss`). Before timing, the script checks
  that this loss equals percepkit's on one batch with the same VGG weights (to 1e-4), so both
  loops optimise the same objective.
* **plain loop, percepkit's loss**: the same bare loop with the recipe's CompositeLoss (which
  stops each VGG pass at the deepest layer it needs): the Trainer's own overhead.

Both bare loops are ``for x, y in loader: loss(model(x), y).backward(); opt.step()`` with the
same precision (autocast, GradScaler) as the Trainer and no logging.

Images/s is measured from the end of step ``warmup`` to the end of the last step. Rounds
alternate (percepkit, plain, percepkit, plain, ...) and the best round of each is reported, which
is the fairest comparison on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from percepkit.bench.speed_table import PeakMemory
from percepkit.nets.lossnets import IMAGENET_MEAN, IMAGENET_STD
from percepkit.runtime.precision import resolve_precision
from percepkit.train.tasks import task_class

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = [REPO / "recipes" / "style_johnson2016.yaml",
                   REPO / "recipes" / "sr_x4_feat.yaml"]


def overrides(recipe_path: Path, args: argparse.Namespace) -> list[str]:
    """Recipe overrides: synthetic in-memory data, random loss-network weights, no extras."""
    from percepkit.recipes.recipe import load_recipe

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
    task = task_class(rec.task)
    train = rec.raw["data"]["train"]
    size = args.size or int(train.get("patch_size", train.get("size", 256)))
    synthetic: dict = {"name": "synthetic", "count": 64, "size": size}
    if task.input_key != task.target_key:  # (input, target) pairs: the recipe's scale and steps
        synthetic["scale"] = int(train.get("scale", rec.raw["transform"].get("scale", 4)))
        if train.get("degradations"):
            synthetic["degradations"] = train["degradations"]
    out.append(f"data.train={json.dumps(synthetic)}")
    if "style_image" in task.required_data:
        out += ["data.style_image=synthetic:1", f"data.style_size={size}"]
    return out


def time_trainer(path: Path) -> float:
    """Images/s of ``Trainer.run`` after the warm-up steps (``percepkit bench --train``'s
    measurement, as a mean over the timed steps)."""
    from percepkit.bench.speed_table import train_speed

    speed = train_speed(str(path), overrides(path, ARGS), steps=ARGS.steps, warmup=ARGS.warmup)
    return speed.batch_size * len(speed.step_seconds) / sum(speed.step_seconds)


class ExamplesVgg16(nn.Module):
    """pytorch/examples fast_neural_style's ``Vgg16``: torchvision VGG16 features in four frozen
    slices, returning relu1_2, relu2_2, relu3_3 and relu4_3 for every image it is given."""

    LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

    def __init__(self) -> None:
        super().__init__()
        features = torchvision.models.vgg16(weights=None).features
        self.slices = nn.ModuleList([features[:4], features[4:9], features[9:16], features[16:23]])
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, out = (x - self.mean) / self.std, {}
        for name, piece in zip(self.LAYERS, self.slices):
            h = out[name] = piece(h)
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


class PlainLoss(nn.Module):
    """The recipe's objective written as pytorch/examples writes it: both images through the
    whole ``ExamplesVgg16`` every step, the style Grams once. Supports the terms of the paper's
    recipes (feature with l2, style, tv, pixel)."""

    def __init__(self, specs: list[dict]) -> None:
        super().__init__()
        self.vgg = ExamplesVgg16()
        self.specs = [dict(s) for s in specs]
        for spec in self.specs:
            if spec["name"] not in ("feature", "style", "tv", "pixel") or \
                    spec.get("criterion", "l2") != "l2" or spec.get("layer_weights"):
                raise SystemExit(f"the plain loop does not implement {spec}")
            if any(k not in ExamplesVgg16.LAYERS for k in spec.get("layers", ())):
                raise SystemExit(f"the plain loop's Vgg16 has only {ExamplesVgg16.LAYERS}")
        self.style_grams: dict[str, torch.Tensor] = {}

    def set_style(self, style: torch.Tensor) -> None:
        self.style_grams = {k: gram(v) for k, v in self.vgg(style).items()}

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        features_y, features_x = self.vgg(y), self.vgg(x)
        total = y.new_zeros(())
        for spec in self.specs:
            w, name = float(spec.get("weight", 1.0)), spec["name"]
            if name == "feature":
                total = total + w * sum(F.mse_loss(features_y[k], features_x[k])
                                        for k in spec.get("layers", ("relu2_2",)))
            elif name == "style":
                reduce = "mean" if spec.get("reduction", "sum") == "mean" else "none"
                for k in spec["layers"]:
                    g = gram(features_y[k])
                    err = F.mse_loss(g, self.style_grams[k].expand_as(g), reduction=reduce)
                    total = total + w * (err if reduce == "mean" else err.sum((1, 2)).mean())
            elif name == "tv":
                tv = (y[..., :, 1:] - y[..., :, :-1]).pow(2).sum((1, 2, 3)) \
                    + (y[..., 1:, :] - y[..., :-1, :]).pow(2).sum((1, 2, 3))
                total = total + w * (tv / y[0].numel()).mean()
            else:
                total = total + w * F.mse_loss(y, x)
        return total


def _batches(recipe, device: torch.device, fmt: torch.memory_format):
    """(input, target) batches of the recipe's training data, forever."""
    from percepkit.registry import DATASETS

    s, task = recipe.train, task_class(recipe.task)
    loader = DataLoader(DATASETS.build(recipe.data.train), batch_size=s.batch_size, shuffle=True,
                        drop_last=True, num_workers=s.workers, pin_memory=device.type == "cuda")
    while True:
        for batch in loader:
            yield tuple(batch[k].to(device, non_blocking=True, memory_format=fmt)
                        for k in (task.input_key, task.target_key))


def time_plain(recipe, examples: bool) -> float:
    """Images/s of a minimal PyTorch loop over the same model, optimiser and data; the loss is
    :class:`PlainLoss` (``examples``) or the recipe's own CompositeLoss."""
    from percepkit.runtime.devices import resolve_device
    from percepkit.train import load_style_image

    s = recipe.train
    device = resolve_device(s.device)
    torch.manual_seed(s.seed)
    model = recipe.build_transform().to(device).train()
    ours = recipe.build_loss()
    loss = (PlainLoss(recipe.raw["losses"]) if examples else ours).to(device)
    if examples:
        check_same_objective(recipe, loss, ours.to(device), model, device)
    cuda = device.type == "cuda"
    precision = resolve_precision(s.precision, device)  # as the Trainer decides
    nhwc = s.channels_last and (cuda or precision.reduced)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    if fmt == torch.channels_last:
        model.to(memory_format=fmt)
        loss.to(memory_format=fmt)
    if "style_image" in task_class(recipe.task).required_data:  # the loss's style targets
        loss.set_style(load_style_image(recipe.data.style_image, recipe.data.style_size)
                       .to(device))
    opt = recipe.build_optimizer(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    times = []
    batches = _batches(recipe, device, fmt)
    for _ in range(s.iterations):
        x, y = next(batches)
        with precision.autocast():
            total = loss(model(x), y)
            total = total[0] if isinstance(total, tuple) else total
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    t = times[ARGS.warmup - 1:]
    return s.batch_size * (len(t) - 1) / (t[-1] - t[0])


def check_same_objective(recipe, plain: PlainLoss, ours, model: nn.Module,
                         device: torch.device) -> None:
    """Both losses must give the same value on one batch with the same VGG16 weights (plain's
    random weights copied into percepkit's truncated network), or the comparison is void."""
    from percepkit.train import load_style_image

    flat = nn.Sequential(*[m for piece in plain.vgg.slices for m in piece])
    n = len(ours.loss_network.features)
    ours.loss_network.features.load_state_dict(flat[:n].state_dict())
    if "style_image" in task_class(recipe.task).required_data:
        style = load_style_image(recipe.data.style_image, recipe.data.style_size).to(device)
        plain.set_style(style)
        ours.set_style(style)
    x, y = next(_batches(recipe, device, torch.contiguous_format))
    with torch.no_grad():
        out = model(x)
        a, b = float(plain(out, y)), float(ours(out, y)[0])
    if abs(a - b) > 1e-4 * max(1.0, abs(b)):
        raise SystemExit(f"{recipe.name}: the plain loss ({a}) differs from percepkit's ({b})")


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
    from percepkit.recipes.recipe import load_recipe

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {ARGS.device}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
             and ARGS.device != "cpu" else ""))
    print("Images/s, best round; peak resident memory of the process while that loop ran.\n")
    print("| recipe | image size | batch | percepkit Trainer | pytorch/examples-style loop | "
          "ratio | plain loop, percepkit's loss | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in ARGS.recipes:
        recipe = load_recipe(path, overrides(path, ARGS))
        runs: dict[str, list[float]] = {"ours": [], "examples": [], "plain": []}
        peak = dict.fromkeys(runs, 0.0)
        for _ in range(ARGS.rounds):
            for kind in runs:
                with PeakMemory() as mem:
                    runs[kind].append(time_trainer(path) if kind == "ours" else
                                      time_plain(recipe, examples=kind == "examples"))
                peak[kind] = max(peak[kind], mem.mb)
        size = recipe.raw["data"]["train"]["size"]
        best = {k: max(v) for k, v in runs.items()}
        cell = {k: f"{best[k]:.2f} img/s, {peak[k]:.0f} MB" for k in runs}
        print(f"| {recipe.name} | {size}x{size} | {recipe.train.batch_size} | {cell['ours']} | "
              f"{cell['examples']} | {best['ours'] / best['examples']:.2f} | {cell['plain']} | "
              f"{best['ours'] / best['plain']:.2f} |", flush=True)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
