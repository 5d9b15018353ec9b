"""``percepkit stylize``: apply a trained style network to images or folders of images."""

from __future__ import annotations

import click

from ..errors import PercepkitError
from . import style_option
from ._batch import inference_options, run_predictor


def _style_post(preserve: bool, strength: float):
    """``post(content, stylized)`` for --preserve-color / --strength (None when neither)."""
    from ..inference.postprocess import blend, preserve_color

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
@style_option
@inference_options
def command(checkpoint: str, inputs: tuple[str, ...], size: int | None, preserve_color: bool,
            strength: float, style_mix: str | None, **options) -> int:
    """Stylize images (files or folders) with a style MODEL name (see percepkit list models), a
    trained style checkpoint file or a pytorch/examples fast_neural_style .pth file.

    Any size and aspect ratio; large images are processed in overlapping tiles within a memory
    budget. A file that cannot be read or written is reported and the batch goes on; the exit
    code is 1 if any failed.
    """
    from ..models.loader import load_network
    from ..nets.conditional import one_style

    if size is not None and size < 16:
        raise PercepkitError(f"--size must be at least 16 pixels, got {size}")
    model = load_network(checkpoint, task="style", transforms=False,
                         hint="stylize runs style models; super-resolution models run with "
                              "percepkit upscale").net
    model = one_style(model, checkpoint, style_mix)
    return run_predictor(inputs, model, options,
                         prepare=(lambda im: _resize(im, size)) if size else None,
                         what="stylized images", post=_style_post(preserve_color, strength))


def _resize(image, size: int):  # noqa: ANN001, ANN202 (torch tensors; torch is imported late)
    """``--size``: the longer side resized to ``size``, after checking the result fits."""
    import torch

    from ..data.images import resize_longer_side
    from ..inference.memory import require_memory

    h, w = image.shape[-2:]
    f = size / max(h, w)
    require_memory(4 * 3 * round(h * f) * round(w * f) * 4, torch.device("cpu"),
                   f"--size {size}: resizing a {w}x{h} image to {round(w * f)}x{round(h * f)}",
                   "use a smaller --size")
    return resize_longer_side(image, size)
