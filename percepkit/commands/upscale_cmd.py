"""``percepkit upscale``: super-resolve images with a checkpoint or a named transform."""

from __future__ import annotations

import click

from ..errors import PercepkitError
from ._batch import inference_options, run_predictor


def load_sr_model(model: str, scale: int | None):
    """A checkpoint path, a model name or a registered transform name -> an SR network
    (:mod:`percepkit.models.loader`; a transform left as initialised is warned about)."""
    from rich.markup import escape

    from ..models.loader import load_network
    from ..runtime.console import user_console

    loaded = load_network(model, task="sr", scale=scale,
                          hint="upscale runs super-resolution models; style models run with "
                               "percepkit stylize")
    if loaded.untrained_parameters:
        user_console(stderr=True).print(
            f"[yellow]warning:[/] {escape(model)} is built with random weights; pass a trained "
            f"checkpoint to get real results")
    return loaded.net


@click.command("upscale")
@click.argument("model", metavar="MODEL|CKPT|NAME")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--scale", type=int, default=None,
              help="Upscaling factor for a named transform (default 4); checkpoints know "
                   "theirs.")
@click.option("--match-histogram", is_flag=True,
              help="Match each channel's histogram of the output to the input's (the paper's "
                   "optional post-processing for l_feat models).")
@inference_options
def command(model: str, inputs: tuple[str, ...], scale: int | None, match_histogram: bool,
            **options) -> int:
    """Super-resolve images (files or folders) with a model, a checkpoint or a transform.

    CKPT|NAME is a model name (``sr_x4_feat``; see percepkit list models), a checkpoint file
    or a transform name such as ``bicubic``. Any size; large
    images are processed in overlapping tiles within a memory budget (an x4 upscale of a
    1024x1024 image fits in a few GB). A file that cannot be read or written is reported and
    the batch goes on; the exit code is 1 if any failed.
    """
    if scale is not None and scale < 1:
        raise PercepkitError(f"--scale must be a positive integer, got {scale}")
    from ..inference.postprocess import match_histogram as match

    return run_predictor(inputs, load_sr_model(model, scale), options, what="upscaled images",
                         post=(lambda lr, sr: match(sr, lr)) if match_histogram else None)
