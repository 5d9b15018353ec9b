"""``percepkit stylize``: apply a trained style network to images or folders of images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..errors import PercepkitError


def inference_options(f: Callable) -> Callable:
    """Options shared by ``stylize`` and ``upscale``."""
    options = [
        click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
                     help="Output folder (or file name, for one input image)."),
        click.option("--ext", default=".png", show_default=True,
                     help="Extension (format) of the written images."),
        click.option("--overwrite", is_flag=True, help="Replace outputs that already exist."),
        click.option("--skip-existing", is_flag=True,
                     help="Leave outputs that already exist and do not count them as failures."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N."),
        click.option("--tile", type=int, default=None,
                     help="Tile size in input pixels; default: automatic from --memory; 0: never "
                          "tile."),
        click.option("--memory", default=None,
                     help="Activation memory budget per pass, e.g. 1.5G (default: half the free "
                          "GPU memory, or 40% of free RAM up to 2G)."),
        click.option("--norm-stats", type=click.Choice(["exact", "approx"]), default="exact",
                     show_default=True,
                     help="Instance-norm statistics when an image must be tiled: exact (extra "
                          "passes over the tiles; output = untiled output) or approx (from a "
                          "downscaled copy: faster, seamless, slightly different)."),
        click.option("--half/--no-half", default=None,
                     help="fp16 autocast (CUDA only; default on CUDA)."),
        click.option("--compile", "compile_", is_flag=True,
                     help="torch.compile the network (pays off for many images of one size)."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="CPU threads (default: torch's choice)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_predictor(model, options: dict):
    """A :class:`~percepkit.inference.Predictor` from the shared options."""
    import torch

    from ..inference import Predictor, parse_memory

    if options["threads"]:
        torch.set_num_threads(options["threads"])
    budget = parse_memory(options["memory"]) if options["memory"] else None
    return Predictor(model, options["device"], half=options["half"], compile=options["compile_"],
                     tile=options["tile"], memory_budget=budget,
                     norm_stats=options["norm_stats"], keep_memory=True)


def run(inputs: tuple[str, ...], model, options: dict, prepare=None, what: str = "images",
        post=None) -> None:
    """Plan, run and summarise a batch; exits 1 when some files failed.

    ``prepare(image)`` runs before the network, ``post(image, output)`` after it.
    """
    from rich.console import Console

    from ..inference import plan_batch, run_batch

    console = Console(stderr=True, highlight=False)
    if not inputs:
        raise PercepkitError("no input images given")
    items = plan_batch(inputs, options["output"], options["ext"])
    predictor = make_predictor(model, options)

    def process(image, cb):
        output = predictor(image, progress=cb)
        return post(image, output) if post is not None else output

    summary = run_batch(items, process,
                        overwrite=options["overwrite"], skip_existing=options["skip_existing"],
                        console=console, show_progress=not options["quiet"], prepare=prepare)
    summary.report(console,
                   f"[green]{len(summary.written)}[/] {what} written to {options['output']}")


def _style_post(preserve: bool, strength: float):
    """``post(content, stylized)`` for --preserve-color / --strength (None when neither)."""
    from ..postprocess import blend, preserve_color

    if not preserve and strength == 1.0:
        return None

    def post(content, stylized):
        out = preserve_color(stylized, content) if preserve else stylized
        return blend(out, content, strength) if strength != 1.0 else out

    return post


@click.command("stylize")
@click.argument("checkpoint", metavar="MODEL|CKPT")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--size", type=int, default=None,
              help="Resize each content image so that its longer side is this many pixels.")
@click.option("--preserve-color", is_flag=True,
              help="Keep the content's colours: only the luminance is stylized (Gatys et al. "
                   "2016, luminance-only transfer).")
@click.option("--strength", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Blend with the content: 1 is the network's output, 0 the content image.")
@inference_options
def command(checkpoint: str, inputs: tuple[str, ...], size: int | None, preserve_color: bool,
            strength: float, **options) -> None:
    """Stylize images (files or folders) with a style MODEL name (see percepkit list models), a
    trained style checkpoint file or a pytorch/examples fast_neural_style .pth file.

    Any size and aspect ratio; large images are processed in overlapping tiles within a memory
    budget. A file that cannot be read or written is reported and the batch goes on; the exit
    code is 1 if any failed.
    """
    from ..optimize import resize_longer_side
    from ..zoo import load

    if size is not None and size < 16:
        raise PercepkitError(f"--size must be at least 16 pixels, got {size}")
    model = load(checkpoint)
    if getattr(model, "task", None) != "style":
        raise PercepkitError(f"{checkpoint}: not a style-transfer checkpoint (its transform is a "
                             f"{getattr(model, 'task', 'unknown')!s} network); use percepkit "
                             f"upscale for super-resolution checkpoints")
    run(inputs, model, options, prepare=(lambda im: resize_longer_side(im, size)) if size
        else None, what="stylized images", post=_style_post(preserve_color, strength))
