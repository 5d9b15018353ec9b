"""``percepkit degrade IMAGE... -o OUT``: what a model will be trained on, as grids of the target
and its degraded input."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PercepkitError


@click.command("degrade")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (or file name, for one input image).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Show the degradation of this recipe's data.train.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, as percepkit train --set.")
@click.option("--degradations", "steps", default=None, metavar="YAML",
              help="A degradation list, e.g. '[{name: gaussian_blur, sigma: 2}, "
                   "{name: bicubic, scale: 4}]' (instead of --recipe).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Image i is degraded with the generator of sample key (seed, 0, i).")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
def command(inputs: tuple[str, ...], output: Path, recipe: Path | None,
            overrides: tuple[str, ...], steps: str | None, seed: int, overwrite: bool) -> int:
    """Write target | degraded input grids (the input upscaled by nearest for display).

    \b
    percepkit degrade photo.png -o out/ --recipe recipes/sr_x4_feat.yaml
    percepkit degrade photos/ -o out/ --degradations '[{name: realesrgan, scale: 4}]'
    """
    from rich.console import Console
    from rich.markup import escape

    from ..data.datasets import _generator, sample_seed
    from ..data.degradations import dataset_degradation
    from ..data.images import image_grid, read_image, write_image
    from ._batch import BatchSummary, plan_batch

    if (recipe is None) == (steps is None):
        raise PercepkitError("give exactly one of --recipe R (its data.train's degradation) or "
                             "--degradations 'YAML list'")
    if overrides and recipe is None:
        raise PercepkitError("--set changes a recipe; it needs --recipe")
    if steps is not None:
        from ..data.degradations import input_maker
        from ..recipes.recipe import parse_yaml

        make, what = input_maker(parse_yaml(steps, "--degradations"), "--degradations")
    else:
        from ..recipes.recipe import load_recipe

        loaded = load_recipe(recipe, overrides)
        make, what = dataset_degradation(loaded.data.train or {}, "data.train")
    console = Console(stderr=True, highlight=False)
    console.print(f"degradation: {escape(what)}", soft_wrap=True)
    summary = BatchSummary()
    for i, item in enumerate(plan_batch(inputs, output)):
        if item.error or item.source is None or item.target is None:
            summary.failed.append((item.label, item.error or "no output"))
            continue
        if item.target.exists() and not overwrite:
            summary.failed.append((item.label, f"{item.target} exists; pass --overwrite"))
            continue
        try:
            target = read_image(item.source)
            gen = _generator(sample_seed(seed, 0, i))
            degraded = make(target, gen)
            h, w = target.shape[-2:]
            grid = image_grid([target, degraded],
                              [f"target {w}x{h}", f"input {degraded.shape[-1]}x"
                               f"{degraded.shape[-2]} (nearest x{w / degraded.shape[-1]:.3g})"])
            write_image(item.target, grid)
        except PercepkitError as e:
            summary.failed.append((item.label, str(e)))
            continue
        summary.written.append(item.target)
    for label, why in summary.failed:
        console.print(f"[red]failed[/] {escape(label)}: {escape(why)}", soft_wrap=True)
    return summary.report(console, f"[green]{len(summary.written)}[/] grid(s) written to "
                                   f"{escape(str(output))}")
