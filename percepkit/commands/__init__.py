"""The sub-commands of ``percepkit`` (one module each, imported on use) and the options that
several of them share."""

from __future__ import annotations

from collections.abc import Callable

import click

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def precision_option(default: str | None, help: str) -> Callable[[Callable], Callable]:
    """``--precision auto|fp32|bf16|fp16`` (see :mod:`percepkit.runtime.precision`)."""
    return click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=default,
                        show_default=default is not None, help=help)


#: ``--style`` of stylize and export: a multi-style model's style or blend
style_option = click.option(
    "--style", "style_mix", default=None, metavar="NAME[:W],...",
    help="A multi-style model's style, or a blend of its styles (candy:0.5,mosaic:0.5; the "
         "weights are normalised to sum 1).")
