"""``percepkit convert``: a third-party network file as a percepkit checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import PercepkitError


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def command(source: Path, output: Path, overwrite: bool) -> None:
    """Convert SOURCE into a percepkit checkpoint OUTPUT (.safetensors), usable by stylize,
    upscale, eval, export, percepkit.load and train --init.

    SOURCE is a pytorch/examples fast_neural_style .pth (mapped onto johnson_style) or an SR
    model that spandrel recognises (pip install 'percepkit[models]'), which becomes a
    spandrel:ARCH transform with its constructor arguments and keeps the architecture's own
    weight keys. The file is read as tensors only (pickled code is never run); the result holds
    the weights, the transform spec, and the source's name and SHA-256.
    """
    from rich.markup import escape

    from ..models.checkpoint import is_checkpoint, save_model
    from ..models.foreign import convert
    from ..models.loader import resolve
    from ..registry import TRANSFORMS
    from ..runtime.console import user_console
    from ..runtime.files import sha256_file

    found = resolve(source, transforms=False).path  # a file, or a model name's file
    assert found is not None
    if is_checkpoint(found):
        raise PercepkitError(f"{source}: already a percepkit checkpoint; use it as it is")
    source = found
    if output.suffix != ".safetensors":
        raise PercepkitError(f"{output}: the output must be a .safetensors file")
    if output.exists() and not overwrite:
        raise PercepkitError(f"{output} exists; pass --overwrite to replace it")
    spec, state, description = convert(source)
    model = TRANSFORMS.build(spec)
    model.load_state_dict(state)  # checks that the mapping fits before anything is written
    save_model(output, state,
               {"task": model.task, "transform": spec, "converted_from": source.name,
                "source_sha256": sha256_file(source), "source_format": description})
    built = " ".join(str(v) for v in (spec["name"], spec.get("arch")) if v)  # spandrel RCAN
    console = user_console()
    console.print(f"[green]✓[/] {escape(str(source))} ({description}) -> "
                  f"{escape(str(output))} ({escape(built)})")
    console.print(f"to fine-tune it (train --init {escape(str(output))}), use this recipe "
                  f"transform: {escape(json.dumps(spec))}", soft_wrap=True)
