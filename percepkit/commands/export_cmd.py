"""``percepkit export``: a checkpoint's network as ONNX or TorchScript, verified against PyTorch."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..errors import PercepkitError
from . import style_option


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise PercepkitError(f"--size {text!r}: expected HxW (e.g. 512x768) or one number")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


@click.command("export")
@click.argument("checkpoint", metavar="MODEL|CKPT")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "safetensors"]),
              default="onnx", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: the checkpoint's name with .onnx, .pt or "
                   ".weights.safetensors).")
@click.option("--size", default=None,
              help="Fix the input size HxW (default: dynamic height and width).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--atol", type=float, default=1e-4, show_default=True,
              help="Largest allowed difference from PyTorch (images in [0, 1]).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@style_option
def command(checkpoint: str, fmt: str, output: Path | None, size: str | None, opset: int,
            atol: float, overwrite: bool, style_mix: str | None) -> None:
    """Export a model's (percepkit list models) or a checkpoint file's network to ONNX or
    TorchScript and check it against PyTorch, or its weights alone to safetensors.

    The exported model maps (B, 3, H, W) RGB in [0, 1] of any size to the output stylize or
    upscale gives (it pads to the network's stride inside; with --size, that size only). ONNX
    exports are run with onnxruntime when it is installed (pip install 'percepkit[export]').
    ``safetensors`` writes the network's state dict (EMA weights if any) with plain keys: for
    ``spandrel:*`` transforms that is the architecture's own layout, which chaiNNer and other
    spandrel tools load (checked with spandrel).
    """
    from rich.markup import escape

    from ..models.checkpoint import Checkpoint, is_checkpoint
    from ..models.export import export
    from ..models.loader import FILE, read_network, resolve
    from ..nets.conditional import one_style
    from ..runtime.console import user_console
    from ..runtime.files import check_output

    source = resolve(checkpoint, transforms=False)
    path = source.path
    assert path is not None  # files and models only
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".weights.safetensors"}[fmt]
    # a model name exports into the current folder, never next to the installed package file
    out = output or (path.with_suffix(suffix) if source.kind == FILE
                     else Path(checkpoint + suffix))
    check_output("-o", out, overwrite)  # a folder, a file in the way, no permission: say so now
    if out.resolve() == path.resolve():
        raise PercepkitError("the output would replace the checkpoint; choose another -o")
    model = one_style(read_network(path), checkpoint, style_mix)
    ckpt = Checkpoint.read(path, tensors=False) if is_checkpoint(path) else None
    transform = ckpt.transform if ckpt else \
        getattr(model, "architecture", type(model).__name__)
    step = ckpt.step if ckpt else None
    extra = {"transform": str(transform), "checkpoint": path.name,
             "step": "" if step is None else str(step), **({"style": style_mix} if style_mix
                                                           else {})}
    console = user_console()
    if fmt == "safetensors":
        _export_weights(model, out, extra, console)
        return
    report = export(model, out, fmt, size=_size(size), opset=opset, atol=atol, metadata=extra)
    sizes = ", ".join(f"{h}x{w}" for h, w in report.input_sizes)
    shape = "dynamic height/width" if report.dynamic else f"fixed input {sizes}"
    if report.verified_with:
        console.print(f"[green]✓[/] wrote {escape(str(out))} ({fmt}, {shape}); matches PyTorch "
                      f"within {report.max_abs_diff:.1e} at {sizes} ({report.verified_with})")
    else:
        console.print(f"[yellow]![/] wrote {escape(str(out))} ({fmt}, {shape}); not verified: "
                      f"install onnxruntime (pip install 'percepkit\\[export]') to check it")


def _export_weights(model, out: Path, metadata: dict[str, str], console) -> None:
    """The network's state dict as a plain safetensors file (spandrel transforms: checked to
    load in spandrel with the same output)."""
    from rich.markup import escape

    from ..models.checkpoint import save_weights
    from ..nets.spandrel_arch import SpandrelSR, verify_weights_file

    save_weights(out, model.state_dict(), metadata)
    if isinstance(model, SpandrelSR):
        detected = verify_weights_file(out, model)
        console.print(f"[green]✓[/] wrote {escape(str(out))} (weights in {model.arch_id}'s own "
                      f"layout); spandrel loads it as {escape(detected)} with the same output")
    else:
        console.print(f"[green]✓[/] wrote {escape(str(out))} (weights only, percepkit's layout "
                      f"of {escape(metadata['transform'])})")
