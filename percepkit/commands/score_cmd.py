"""``percepkit score SR HR``: PSNR / SSIM / LPIPS of images you already have, as eval scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import PercepkitError
from ..runtime.files import check_output
from . import precision_option
from ._scoring import (
    convention_lines,
    format_value,
    metric_conventions,
    metric_names,
    metric_options,
    whole_image_metrics,
)


def _short_convention(result: Any) -> str:
    parts = metric_conventions(result.metrics)
    whole = whole_image_metrics(result.metrics)
    parts.append(f"{result.crop_border} px border cropped"
                 + (f" ({'/'.join(whole)}: whole image)" if whole else ""))
    crop = f"HR cropped to a multiple of {result.mod_crop}; " if result.mod_crop else ""
    parts.append(f"{crop}images read as 8-bit")
    return "; ".join(parts) + ". Exact statement: -v, --json or --csv."


def _render(console: Any, result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = result.images
    files = {p.name: p for p in result.pairs}
    table = Table(title=f"{escape(result.sr)} vs {escape(result.hr)} ({len(s.rows)} images)",
                  title_justify="left")
    table.add_column("image")
    table.add_column("SR file", style="dim")
    for m in result.metrics:
        arrow = {True: " ↑", False: " ↓"}.get(m.higher_is_better, "")
        table.add_column(f"{m.name.upper()}{arrow}", justify="right")
    for r in s.rows:
        table.add_row(escape(r.name), escape(files[r.name].sr.name),
                      *[format_value(r.values.get(m.name), m.fmt) for m in result.metrics])
    table.add_section()
    table.add_row("mean", "", *[format_value(s.mean(m.name), m.fmt) for m in result.metrics],
                  style="bold")
    console.print(table)


def _footer(console: Any, result: Any, verbose: bool) -> None:
    from rich.markup import escape

    lines = convention_lines(result.metrics, result.convention["data"],
                             _short_convention(result), verbose)
    lines += [f"[yellow]unmatched[/] {escape(line)}" for line in result.unmatched]
    lines += [f"[yellow]skipped[/] {escape(f)}: {escape(why)}"
              for f, why in result.images.skipped]
    for r in result.images.rows:
        lines += [f"[dim]note[/] {escape(r.name)}: {escape(n)}" for n in r.notes]
    n = len(result.pairs)
    seconds = result.images.seconds
    lines.append(f"{n} pairs in {seconds:.2f} s on {result.device}")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


@click.command("score")
@click.argument("sr", type=click.Path(path_type=Path))
@click.argument("hr", type=click.Path(path_type=Path))
@click.option("--crop-border", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="Pixels removed on every side before PSNR/SSIM (SR tables: the scale).")
@click.option("--mod-crop", "mod", type=click.IntRange(1, 96), default=None,
              help="Crop each HR top-left to a multiple of N first (eval's convention: N = the "
                   "scale). Default: SR and HR sizes must be equal.")
@metric_options("--crop-border")
@click.option("-v", "--verbose", is_flag=True, help="Print the exact metric conventions.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write results (with the convention) as JSON; '-' for stdout.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Write a plain CSV table ('-' for stdout); the convention goes to "
                   "NAME.conventions.json beside it.")
@click.option("--overwrite", is_flag=True, help="Replace existing --json / --csv files.")
@precision_option("fp32", "Precision of the metric networks (LPIPS, DISTS), as in eval.")
def command(sr: Path, hr: Path, crop_border: int, mod: int | None, metrics: str, channel: str,
            lpips_net: str, crop_lpips: bool, device: str, verbose: bool,
            json_path: Path | None, csv_path: Path | None, overwrite: bool,
            precision: str) -> None:
    """Score SR images against their ground truth HR, with eval's metrics and conventions.

    SR and HR are two folders, matched by file stem (baby.png, or BasicSR's baby_x4_SR.png,
    with baby.png), or two files.

    \b
    Examples:
      percepkit score results/Set5/ datasets/Set5/GTmod12/ --crop-border 4
      percepkit eval --set5 --save-images out/ && \\
        percepkit score out/set5/sr/ SET5_HR/ --mod-crop 4 --crop-border 4
      percepkit score sr.png hr.png --metrics psnr,ssim --json scores.json
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..evaluation.evaluate import build_metrics
    from ..evaluation.score import ScoreResult, match_pairs, score_pairs
    from ..runtime.console import user_console
    from ..runtime.devices import resolve_device, use_cpu_threads

    for flag, path in (("--json", json_path), ("--csv", csv_path)):
        check_output(flag, path, overwrite)  # before any work, not after it
    if str(json_path) == "-" and str(csv_path) == "-":
        raise PercepkitError("--json - and --csv - would both write to stdout; give one a file")
    console = user_console(stderr=str(json_path) == "-" or str(csv_path) == "-")
    pairs, unmatched = match_pairs(sr, hr)
    dev = resolve_device(device)
    use_cpu_threads(None)
    built, infos = build_metrics(metric_names(metrics, channel, lpips_net),
                                 crop_border=crop_border, crop_whole_image=crop_lpips, device=dev,
                                 precision=precision)
    name = sr.name if sr.is_dir() else sr.stem
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("score", total=len(pairs))
        scored = score_pairs(pairs, built, infos, name=name, mod_crop=mod,
                             on_image=lambda n: progress.update(task, advance=1, description=n))
    result = ScoreResult(str(sr), str(hr), crop_border, mod, str(dev), infos, scored, pairs,
                         unmatched)
    _render(console, result)
    _footer(console, result, verbose)
    if not scored.rows:
        raise PercepkitError(f"none of the {len(pairs)} pairs could be scored (reasons above)")
    if json_path is not None:
        result.write_json(json_path)
    if csv_path is not None:
        sidecar = result.write_csv(csv_path)
        if sidecar is not None:
            console.print(f"wrote {csv_path} (convention: {sidecar})", highlight=False)
    if json_path is not None and str(json_path) != "-":
        console.print(f"wrote {json_path}", highlight=False)
