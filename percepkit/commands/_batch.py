"""Batches of image files for ``stylize``, ``upscale`` and ``optimize``: their shared options,
pairing inputs with outputs, and running them so that a bad file is reported and the batch goes
on. Private to the commands (no command imports another)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import PercepkitError
from . import precision_option

#: write errors that stop a batch (exit 2) instead of failing one file: the disk is full, the
#: quota exceeded or the file system read-only, so every later file would fail the same way
STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

if TYPE_CHECKING:
    import rich.console
    import torch
    from torch import nn

    from ..inference import Predictor, TileCallback


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
                          "GPU memory, or 40% of free RAM up to 1G)."),
        click.option("--norm-stats", type=click.Choice(["exact", "approx"]), default="exact",
                     show_default=True,
                     help="Instance-norm statistics when an image must be tiled: exact (extra "
                          "passes over the tiles; output = untiled output) or approx (from a "
                          "downscaled copy: faster, seamless, slightly different)."),
        precision_option("auto", "auto: bf16 (fp16 on CUDA GPUs without bf16) when the "
                         "network's output stays within 0.5 level (mean) / 4 levels (99.9th "
                         "percentile) of fp32 on a calibration image, measured once and cached, "
                         "where the device runs it natively; else fp32."),
        click.option("--half/--no-half", default=None, hidden=True,
                     help="Deprecated: --precision fp16 / fp32."),
        click.option("--compile", "compile_", is_flag=True,
                     help="torch.compile the network (pays off for many images of one size)."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="CPU threads (default: torch's choice less the cores other "
                          "processes are using)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_predictor(model: nn.Module, options: dict) -> Predictor:
    """A :class:`~percepkit.inference.Predictor` from :func:`inference_options`."""
    from ..inference import Predictor, parse_memory
    from ..runtime.devices import use_cpu_threads

    use_cpu_threads(options["threads"])
    budget = parse_memory(options["memory"]) if options["memory"] else None
    precision = options["precision"]
    if options.get("half") is not None:
        precision = "fp16" if options["half"] else "fp32"
    return Predictor(model, options["device"], precision=precision, compile=options["compile_"],
                     tile=options["tile"], memory_budget=budget,
                     norm_stats=options["norm_stats"], keep_memory=True)


def run_predictor(inputs: tuple[str, ...], model: nn.Module, options: dict,
                  prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  what: str = "images",
                  post: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> int:
    """Plan, run and summarise a batch of :func:`inference_options` through a
    :class:`~percepkit.inference.Predictor`; returns the exit code (1 when some files failed).

    ``prepare(image)`` runs before the network, ``post(image, output)`` after it.
    """
    from ..runtime.console import user_console

    console = user_console(stderr=True)
    if not inputs:
        raise PercepkitError("no input images given")
    items = plan_batch(inputs, options["output"], options["ext"])
    predictor = make_predictor(model, options)
    if not options["quiet"]:
        console.print(f"[dim]precision: {predictor.precision.describe()}[/]")

    def process(image: torch.Tensor, cb: TileCallback | None) -> torch.Tensor:
        output = predictor(image, progress=cb)
        return post(image, output) if post is not None else output

    summary = run_batch(items, process,
                        overwrite=options["overwrite"], skip_existing=options["skip_existing"],
                        console=console, show_progress=not options["quiet"], prepare=prepare)
    return summary.report(
        console, f"[green]{len(summary.written)}[/] {what} written to {options['output']}")


@dataclass
class BatchItem:
    """One input file and where its result goes, or why it cannot be processed."""

    label: str
    source: Path | None = None
    target: Path | None = None
    error: str | None = None


@dataclass
class BatchSummary:
    """Counts of a batch run and the per-file problems, in order."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every file was written (or deliberately skipped), else 1."""
        return 1 if self.failed else 0

    def report(self, console: rich.console.Console, headline: str) -> int:
        """Print ``headline`` with the skipped/failed counts; return :attr:`exit_code` (the
        command returns it and ``percepkit.cli.main`` exits with it)."""
        parts = [headline]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (already there)")
        if self.failed:
            parts.append(f"[red]{len(self.failed)} failed[/]")
        console.print(", ".join(parts))
        return self.exit_code


def plan_batch(inputs: Sequence[str | Path], output: str | Path, ext: str = ".png"
               ) -> list[BatchItem]:
    """Pair inputs (files, or folders searched recursively) with output paths.

    ``output`` is a folder (created as needed; folder inputs keep their sub-folders), or a file
    name when there is exactly one input file. Missing inputs and empty folders become items
    with an error, so the rest of the batch can go on.
    """
    from ..data.images import IMAGE_EXTENSIONS, list_images

    output = Path(output)
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise PercepkitError(f"--ext {ext}: not an image extension; use one of "
                             f"{', '.join(IMAGE_EXTENSIONS)}")
    as_file = output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir()
    if as_file and (len(inputs) != 1 or Path(inputs[0]).is_dir()):
        raise PercepkitError(f"-o {output}: an image file name, but several images were given; "
                             f"pass a folder for -o")
    items: list[BatchItem] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            files = list_images(path)
            if not files:
                items.append(BatchItem(str(path), error="folder contains no image files"))
            for f in files:
                items.append(BatchItem(str(f), f, output / f.relative_to(path).with_suffix(ext)))
        elif path.exists():
            items.append(BatchItem(str(path), path, output if as_file else
                                   output / (path.stem + ext)))
        else:
            items.append(BatchItem(str(path), error="no such file or folder"))
    seen: dict[Path, str] = {}
    for item in items:
        if item.target is None or item.error:
            continue
        key = item.target.resolve()
        if item.source is not None and key == item.source.resolve():
            item.error = f"the output {item.target} would replace the input; choose another -o"
        elif key in seen:
            item.error = f"same output file {item.target} as {seen[key]}; rename one of them"
        else:
            seen[key] = item.label
    return items


def run_batch(
    items: Sequence[BatchItem],
    transform: Callable[[torch.Tensor, TileCallback | None], torch.Tensor],
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
    console: object | None = None,
    show_progress: bool = True,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step_label: str = "tiles",
) -> BatchSummary:
    """Read, transform and write each item; a bad file is reported and the batch goes on.

    ``transform(image, step_progress)`` maps a (3, H, W) image to its result and may report
    steps (tiles, iterations: ``step_label``) as ``step_progress(done, total)``. Single-channel
    inputs get single-channel outputs. Existing outputs are kept unless ``overwrite``; with
    ``skip_existing`` keeping them is not an error.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..data.images import read_image, write_image
    from ..errors import ImageError, WriteError
    from ..runtime.console import user_console

    con = console if isinstance(console, Console) else user_console(stderr=True)
    summary = BatchSummary()

    def fail(item: BatchItem, message: str) -> None:
        summary.failed.append((item.label, message))
        con.print(f"[red]✗[/] {escape(item.label)}: {escape(message)}", soft_wrap=True)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=con, transient=True, disable=not show_progress) as bar:
        files = bar.add_task("images", total=len(items))
        tiles = None
        for item in items:
            bar.update(files, description=f"[bold]{escape(Path(item.label).name)}")
            try:
                if item.error:
                    fail(item, item.error)
                    continue
                assert item.source is not None and item.target is not None
                if item.target.exists() and not overwrite:
                    if skip_existing:
                        summary.skipped.append(item.label)
                    else:
                        fail(item, f"{item.target} exists; pass --overwrite to replace it "
                                   "(or --skip-existing)")
                    continue
                try:
                    image = read_image(item.source, mode="keep")
                except ImageError as e:
                    fail(item, str(e).removeprefix(f"{item.source}: "))
                    continue
                gray = image.shape[0] == 1
                if gray:
                    image = image.expand(3, -1, -1)
                if prepare is not None:
                    image = prepare(image)

                def on_tile(done: int, total: int) -> None:
                    nonlocal tiles
                    if tiles is None:
                        tiles = bar.add_task(f"  {step_label}", total=total)
                    bar.update(tiles, completed=done, total=total)

                result = transform(image, on_tile)
                if gray:
                    result = result.mean(0, keepdim=True)
                try:
                    write_image(item.target, result)
                except (OSError, ImageError) as e:
                    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    fail(item, f"cannot write {item.target}: {reason}")
                    continue
                summary.written.append(item.target)
            except WriteError as e:
                if e.errno in STOP_ERRNOS:  # every later file would fail the same way
                    raise
                fail(item, str(e))
            except PercepkitError as e:
                fail(item, str(e))
            finally:
                if tiles is not None:
                    bar.remove_task(tiles)
                    tiles = None
                bar.advance(files)
    return summary
