"""``percepkit optimize``: the Gatys et al. optimisation baseline (optimise the image itself)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PercepkitError
from ..registry import DEFAULT_LOSS_NETWORK
from . import precision_option
from ._batch import plan_batch, run_batch


def _losses(task: str, recipe: Path | None, overrides: tuple[str, ...]):
    """(task, loss specs, loss-network spec) from a recipe or the paper's defaults."""
    from ..inference.gatys import default_losses

    if recipe is None:
        if overrides:
            raise PercepkitError("--set needs --recipe (it overrides recipe keys)")
        return task, default_losses(task), DEFAULT_LOSS_NETWORK
    from ..recipes.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    return r.task, r.raw["losses"], r.raw.get("loss_network", DEFAULT_LOSS_NETWORK)


@click.command("optimize")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (or file name, for one input image).")
@click.option("--style", "style_path", type=click.Path(path_type=Path), default=None,
              help="Style image: style transfer (Gatys et al.).")
@click.option("--scale", type=int, default=None,
              help="Super-resolution by this factor instead of style transfer.")
@click.option("--target", type=click.Path(path_type=Path), default=None,
              help="SR only: the known high-resolution image (feature reconstruction).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Take the loss terms, weights and loss network from a recipe.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set losses.1.weight=1e5.")
@click.option("--iters", type=int, default=None,
              help="Iterations (default 500 for style, 200 for SR).")
@click.option("--optimizer", "method", type=click.Choice(["lbfgs", "adam"]), default="lbfgs",
              show_default=True)
@click.option("--lr", type=float, default=None,
              help="Learning rate (default 1 for L-BFGS, 0.02 for Adam).")
@click.option("--init", type=click.Choice(["content", "noise", "random"]), default="content",
              show_default=True, help="Style transfer: start from the content image, uniform "
              "noise, or neural-style's 'random' (the ImageNet mean plus faint noise).")
@click.option("--project", is_flag=True,
              help="Clip the pixels to [0, 1] after every L-BFGS update (projected L-BFGS, "
                   "the paper's baseline).")
@click.option("--size", type=int, default=None,
              help="Resize each input so that its longer side is this many pixels.")
@click.option("--style-size", type=int, default=None,
              help="Resize the style image so that its longer side is this many pixels.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ext", default=".png", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--skip-existing", is_flag=True, help="Leave outputs that already exist.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@precision_option("auto", "The loss network's passes: auto (bf16 where the device runs it "
                          "natively, else fp32), fp32, bf16, fp16 (CUDA).")
def command(inputs: tuple[str, ...], output: Path, style_path: Path | None, scale: int | None,
            target: Path | None, recipe: Path | None, overrides: tuple[str, ...],
            iters: int | None, method: str, lr: float | None, init: str, project: bool,
            size: int | None,
            style_size: int | None, device: str, seed: int, ext: str, overwrite: bool,
            skip_existing: bool, quiet: bool, precision: str) -> int:
    """Optimise each output image directly under the registered losses (Gatys et al. 2015).

    With --style STYLE: style transfer starting from the content image. With --scale N:
    super-resolution; with --target HR the losses compare against the known HR image (the
    paper's feature reconstruction), otherwise the bicubic reduction of the output is compared
    with the input. L-BFGS (one evaluation per iteration, as the paper's speed table) or Adam.
    """
    import torch

    from ..data.images import read_image, resize_longer_side
    from ..inference.gatys import build_objective
    from ..runtime.console import user_console
    from ..runtime.devices import resolve_device
    from ..runtime.precision import resolve_precision

    console = user_console(stderr=True)
    if (style_path is None) == (scale is None) and recipe is None:
        raise PercepkitError("give --style STYLE (style transfer) or --scale N "
                             "(super-resolution)")
    if style_path is not None and scale is not None:
        raise PercepkitError("give either --style or --scale, not both")
    from ..train.tasks import task_class

    task, specs, net_spec = _losses("style" if style_path is not None else "sr", recipe,
                                    overrides)
    task_cls = task_class(task)
    task_cls.optimize_check(style=style_path, scale=scale, target=target, inputs=len(inputs))
    iterations = iters if iters is not None else task_cls.optimize_iterations
    if iterations < 1:
        raise PercepkitError(f"--iters must be at least 1, got {iterations}")
    for name, value in (("--size", size), ("--style-size", style_size)):
        if value is not None and value < 16:
            raise PercepkitError(f"{name} must be at least 16 pixels, got {value}")
    dev = resolve_device(device)
    reduced = resolve_precision(precision, dev)
    items = plan_batch(inputs, output, ext)
    loss = build_objective(task, specs, net_spec, dev)
    style = None
    if style_path is not None:
        style = resize_longer_side(read_image(style_path), style_size)
    hr = read_image(target) if target is not None else None
    torch.manual_seed(seed)

    def run_one(image: torch.Tensor, progress) -> torch.Tensor:
        def step(it: int, _value: float) -> None:
            if progress is not None:
                progress(it, iterations)

        result = task_cls.optimize_image(
            image, loss, style=style, scale=scale, target=hr, iterations=iterations,
            method=method, lr=lr, init=init, seed=seed, callback=step, precision=reduced,
            project=project)
        return result.image

    prepare = (lambda im: resize_longer_side(im, size)) if size else None
    summary = run_batch(items, run_one, overwrite=overwrite, skip_existing=skip_existing,
                        console=console, show_progress=not quiet, prepare=prepare,
                        step_label="iterations")
    return summary.report(console, f"[green]{len(summary.written)}[/] optimised images written "
                                   f"to {output} ({iterations} {method} iterations each, "
                                   f"{reduced.describe()})")
