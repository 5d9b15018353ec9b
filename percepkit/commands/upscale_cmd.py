"""``percepkit upscale``: super-resolve images with a checkpoint or a named transform."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PercepkitError
from ._batch import inference_options, run_predictor


def load_sr_model(model: str, scale: int | None):
    """A checkpoint path, a model name or a registered transform name -> an SR transform."""
    from rich.markup import escape

    from ..registry import MODELS, TRANSFORMS
    from ..runtime.console import user_console
    from ..train.tasks import task_class

    sr = task_class("sr")  # upscale runs super-resolution networks

    path = Path(model)
    if path.is_file() or model in MODELS:
        from ..models.zoo import load

        net = load(model)
        if not sr.runs(net):
            raise PercepkitError(f"{path}: not a super-resolution checkpoint; use percepkit "
                                 f"stylize for style checkpoints")
        if scale is not None and scale != net.scale:
            raise PercepkitError(f"{path}: the checkpoint upscales x{net.scale}, but --scale "
                                 f"{scale} was given; drop --scale")
        return net
    if model not in TRANSFORMS:
        if path.suffix or "/" in model or path.exists():
            raise PercepkitError(f"{model}: no such checkpoint file")
        try:
            TRANSFORMS.entry(model)
        except PercepkitError as e:
            hint = str(e).split(". ", 1)[-1].replace("Available:", "Available transforms:")
            models = ", ".join(e.name for e in MODELS.entries() if e.obj.task == sr.name)
            raise PercepkitError(f"{model!r} is neither a checkpoint file, a model name "
                                 f"({models or 'none'}) nor a transform name. {hint}") from None
    try:
        net = TRANSFORMS.build({"name": model, "scale": 4 if scale is None else scale},
                               where=f"transform {model}")
    except ValueError as e:  # the constructor's own check, e.g. johnson_sr's scales
        raise PercepkitError(f"transform {model} with --scale {scale}: {e}") from None
    if not sr.runs(net):
        raise PercepkitError(f"transform {model!r} is not a super-resolution transform")
    if any(True for _ in net.parameters()):
        user_console(stderr=True).print(
            f"[yellow]warning:[/] {escape(model)} is built with random weights; pass a trained "
            f"checkpoint to get real results")
    return net.eval()


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
