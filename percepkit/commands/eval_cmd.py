"""``percepkit eval``: PSNR / SSIM / LPIPS on Set5, Set14, BSD100 or your own folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from ..errors import PercepkitError
from ..runtime.devices import resolve_device, use_cpu_threads
from ..runtime.files import check_output, check_output_folder
from . import precision_option
from ._scoring import (
    convention_lines,
    format_value,
    metric_conventions,
    metric_names,
    metric_options,
    whole_image_metrics,
)


def _model_info(path: Path, transform: Any) -> dict[str, Any]:
    """What the results file records about a model file."""
    from ..models.checkpoint import is_checkpoint
    from ..nets.spandrel_arch import SpandrelSR
    from ..runtime.files import sha256_file

    info: dict[str, Any] = {"file": str(path), "sha256": sha256_file(path)}
    if isinstance(transform, SpandrelSR) and not is_checkpoint(path):
        import spandrel

        info.update(format=f"third-party, read by spandrel {spandrel.__version__}",
                    architecture=transform.architecture, purpose=transform.purpose,
                    degradation="LR = MATLAB bicubic, 8-bit (what public x4 SR models are "
                                "trained on; models for other degradations score lower here)")
    else:
        info["format"] = "percepkit checkpoint" if is_checkpoint(path) else "third-party"
        info["architecture"] = getattr(transform, "architecture", type(transform).__name__)
    if isinstance(transform, SpandrelSR) and transform.channels == 1:
        from ..nets.ychannel import PROTOCOL

        info["protocol"] = PROTOCOL
    return info


def _load_model(model: str | None, checkpoint: str | None, scale: int | None,
                device: torch.device, task: Any
                ) -> tuple[Any, str, int, list[str], dict[str, Any]]:
    """The transform, its display name, the scale, warnings for the footer, and what the
    results file records about the model's file; ``task`` is the ``--task`` class
    (:mod:`percepkit.models.loader`: --model takes a file, a model name or a transform name,
    --checkpoint a file or a model name)."""
    from ..models.loader import load_network

    if model is not None and checkpoint is not None:
        raise PercepkitError("give either --model or --checkpoint, not both")
    loaded = load_network(checkpoint or model or task.eval_baseline, task=task.name, scale=scale,
                          device=device, transforms=checkpoint is None,
                          asked_by=f"--task {task.name}",
                          hint=f"eval scores {task.title or task.name} models")
    transform, name, notes = loaded.net, loaded.source.name, []
    if loaded.source.path is None:  # a transform by name
        if loaded.untrained_parameters:
            notes.append(f"--model {name} was built from scratch "
                         f"({loaded.untrained_parameters:,} parameters, as initialised): to "
                         f"score trained weights use --checkpoint CKPT")
        return transform, name, loaded.scale, notes, {"architecture": type(transform).__name__}
    info = _model_info(loaded.source.path, transform)
    if info.get("purpose"):
        notes.append(f"{loaded.source.path.name}: {info['architecture']} x{loaded.scale} "
                     f"({info['purpose']}), {info['format']}; {info['degradation']}")
    return transform, name, loaded.scale, notes, info


def _task(name: str) -> Any:
    """The ``--task`` class; unknown names and tasks without a benchmark protocol are errors."""
    from ..registry import TASKS
    from ..train.tasks import task_class

    task = task_class(name, "--task")
    if not task.protocol:
        scored = [e.name for e in TASKS.entries() if getattr(e.obj, "protocol", None)]
        raise PercepkitError(f"--task {name}: the {name} task has no benchmark protocol; eval "
                             f"scores {', '.join(scored)}")
    return task


def _task_defaults(task: Any, metrics: str, channel: str) -> tuple[str, str]:
    """``--metrics`` and ``--channel``: the task protocol's unless given on the command line."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return metrics, channel
    given = {n for n in ("metrics", "channel")
             if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)}
    return (metrics if "metrics" in given else ",".join(task.eval_metrics),
            channel if "channel" in given else task.eval_channel)


def _with_histogram_matching(transform: Any, device: torch.device) -> Any:
    """``transform`` followed by matching the output's histogram to the LR input's."""
    from ..inference.postprocess import match_histogram

    if isinstance(transform, torch.nn.Module):
        transform = transform.to(device).eval()
    return lambda lr: match_histogram(transform(lr).clamp(0, 1), lr)


def _datasets(sets: list[str], scale: int, data_dir: Path | None, hr_dir: Path | None,
              lr_dir: Path | None, download: bool, mod: int | None = None) -> list[Any]:
    from ..registry import DATASETS

    out = []
    for key in sets:
        spec: dict[str, Any] = {"name": key, "scale": scale, "mod": mod}
        if key != "set5":
            spec.update(root=str(data_dir) if data_dir else None, download=download)
        out.append(DATASETS.build(spec, where=f"--{key}"))
    if lr_dir is not None:
        if hr_dir is None:
            raise PercepkitError("--lr-dir needs --hr-dir (the matching HR images)")
        from ..data.benchmark_sets import paired_folder

        out.append(paired_folder(str(lr_dir), str(hr_dir), scale))
    elif hr_dir is not None:
        out.append(DATASETS.build({"name": "hr_folder", "root": str(hr_dir), "scale": scale,
                                   "mod": mod}))
    return out






def _render(console: Any, result: Any, per_image: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    for s in result.sets:
        table = Table(title=f"{s.name} x{s.scale} — {result.model} ({len(s.rows)} images)",
                      title_justify="left")
        table.add_column("image" if per_image else "", style="bold" if not per_image else "")
        for m in result.metrics:
            arrow = {True: " ↑", False: " ↓"}.get(m.higher_is_better, "")
            table.add_column(f"{m.name.upper()}{arrow}", justify="right")
        if per_image:
            for r in s.rows:
                table.add_row(r.name, *[format_value(r.values.get(m.name), m.fmt)
                                        for m in result.metrics])
            table.add_section()
        table.add_row("mean", *[format_value(s.mean(m.name), m.fmt) for m in result.metrics],
                      style="bold")
        console.print(table)
        if s.source or s.checksum_note:
            console.print(f"[dim]{escape(s.source)}: {escape(s.checksum_note or 'not checked')}[/]",
                          soft_wrap=True, highlight=False)


def _short_convention(result: Any) -> str:
    parts = metric_conventions(result.metrics)
    if result.data_note:  # a task protocol with its own statement
        return "; ".join([*parts, result.data_note]) + ". Exact statement: -v, --json or --csv."
    crop = {s.scale for s in result.sets}
    mods = {s.mod_crop for s in result.sets}
    whole = whole_image_metrics(result.metrics)
    given = {s.given_lr for s in result.sets}
    lr = {frozenset({False}): "LR = MATLAB bicubic, 8-bit", frozenset({True}): "LR = the given "
          "files (--lr-dir)"}.get(frozenset(given), "LR = the given files (--lr-dir) or MATLAB "
                                                     "bicubic, 8-bit (per set)")
    parts.append(f"{'/'.join(str(c) for c in sorted(crop))} px border cropped"
                 + (f" ({'/'.join(whole)}: whole image)" if whole else "") + "; HR mod-cropped to "
                 f"a multiple of {'/'.join(str(m) for m in sorted(mods))}; {lr}; outputs "
                 f"rounded to 8 bits")
    return "; ".join(parts) + ". Exact statement: -v, --json or --csv."


def _footer(console: Any, result: Any, notes: list[str], n_images: int, verbose: bool) -> None:
    from rich.markup import escape

    lines = convention_lines(result.metrics, result.convention["data"],
                             _short_convention(result), verbose)
    for s in result.sets:
        for f, why in s.skipped:
            lines.append(f"[yellow]skipped[/] {s.name}/{escape(f)}: {escape(why)}")
        for r in s.rows:
            for note in r.notes:
                lines.append(f"[dim]note[/] {s.name}/{escape(r.name)}: {escape(note)}")
    lines += [f"[yellow]note:[/] {escape(n)}" for n in notes]
    rate = n_images / result.seconds if result.seconds > 0 else float("inf")
    lines.append(f"{n_images} images in {result.seconds:.2f} s ({rate:.1f} images/s) on "
                 f"{result.device}")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


@click.command("eval")
@click.option("--task", "task_name", default="sr", show_default=True,
              help="The task whose benchmark protocol to score (percepkit list tasks).")
@click.option("--set5", "use_set5", is_flag=True, help="Set5 (ships with percepkit; default).")
@click.option("--set14", "use_set14", is_flag=True, help="Set14 (--data-dir, PERCEPKIT_DATA "
              "or downloaded).")
@click.option("--bsd100", "use_bsd100", is_flag=True, help="BSD100 (--data-dir, PERCEPKIT_DATA "
              "or downloaded).")
@click.option("--all", "use_all", is_flag=True, help="Set5, Set14 and BSD100.")
@click.option("--cbsd68", "use_cbsd68", is_flag=True, help="CBSD68, the colour-denoising set "
              "(--data-dir, PERCEPKIT_DATA or downloaded).")
@click.option("--set12", "use_set12", is_flag=True, help="Set12, the grey-denoising set "
              "(--data-dir, PERCEPKIT_DATA or downloaded).")
@click.option("--sigma", type=float, default=None,
              help="--task denoise: the noise sigma on 0-255 (15, 25, 50; default 25); "
                   "--task deblur: the blur's sigma in px (default 1.6).")
@click.option("--quality", type=int, default=None,
              help="--task jpeg: the JPEG quality (10, 20, 30, 40; default 20).")
@click.option("--kernel", default=None,
              help="--task deblur: levin09:N blurs with the N-th (1-8) motion kernel of Levin et "
                   "al. 2009 instead of the Gaussian.")
@click.option("--hr-dir", type=click.Path(path_type=Path), default=None,
              help="Any folder of HR images (LR made by MATLAB bicubic).")
@click.option("--lr-dir", type=click.Path(path_type=Path), default=None,
              help="LR images matching --hr-dir by file name.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding Set14/ and BSD100/ (default: $PERCEPKIT_DATA, then the cache).")
@click.option("--scale", type=click.IntRange(1, 16), default=None,
              help="Upscaling factor (default 4, or the checkpoint's).")
@click.option("--model", default=None,
              help="A model file, a trained model (percepkit list models) or a registered "
                   "transform by name (default bicubic), in that order.")
@click.option("--checkpoint", default=None,
              help="A trained percepkit checkpoint file (rebuilt from its stored recipe) or a "
                   "model name.")
@click.option("--match-histogram", is_flag=True,
              help="Match each channel's histogram of the output to the LR input's before "
                   "scoring (the paper's post-processing for l_feat models).")
@metric_options("the scale border (percepkit 0.1's LPIPS numbers)")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="CPU threads for the model and LPIPS/DISTS (default: torch's choice less the "
                   "cores other processes are using).")
@click.option("--per-image", is_flag=True, help="One row per image, not only the mean.")
@click.option("-v", "--verbose", is_flag=True, help="Print the exact metric conventions.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write results (with the convention) as JSON; '-' for stdout.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Write results (with the convention) as CSV; '-' for stdout.")
@click.option("--save-images", type=click.Path(path_type=Path), default=None,
              help="Write bicubic | model | HR comparison grids with a zoomed crop here.")
@click.option("--mod-crop", "mod", type=click.IntRange(1, 96), default=None,
              help="Crop HR to a multiple of this (default: the scale; 12 = BasicSR GTmod12).")
@click.option("--no-download", is_flag=True, help="Never download Set14/BSD100.")
@click.option("--overwrite", is_flag=True, help="Replace existing --json / --csv files.")
@precision_option("fp32", "Precision of the metric networks (LPIPS, DISTS): fp32 gives the "
                          "published values; bf16 (or auto, bf16 where the device has it) is "
                          "faster where the device runs bf16 natively. PSNR/SSIM stay float64.")
def command(task_name: str, use_set5: bool, use_set14: bool, use_bsd100: bool, use_all: bool,
            use_cbsd68: bool, use_set12: bool, sigma: float | None, quality: int | None,
            kernel: str | None,
            hr_dir: Path | None, lr_dir: Path | None, data_dir: Path | None, scale: int | None,
            model: str | None, checkpoint: str | None, match_histogram: bool, metrics: str,
            channel: str, lpips_net: str, crop_lpips: bool, device: str, threads: int | None,
            per_image: bool, verbose: bool, json_path: Path | None, csv_path: Path | None,
            save_images: Path | None,
            mod: int | None, no_download: bool, overwrite: bool, precision: str) -> None:
    """Evaluate an SR model (or bicubic) with PSNR, SSIM and LPIPS, comparable to published tables.

    --task NAME scores another task's benchmark protocol (percepkit list tasks).

    \b
    Examples:
      percepkit eval --set5                      # bicubic x4 on the shipped Set5
      percepkit eval --all --checkpoint runs/sr_x4/checkpoints/best.safetensors --per-image
      percepkit eval --hr-dir photos/ --scale 2 --save-images grids/
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..evaluation.evaluate import build_metrics, evaluate, write_csv, write_json
    from ..runtime.console import user_console

    task_cls = _task(task_name).with_level(sigma=sigma, quality=quality, kernel=kernel)
    metrics, channel = _task_defaults(task_cls, metrics, channel)
    use_cpu_threads(threads)
    for flag, path in (("--json", json_path), ("--csv", csv_path)):
        check_output(flag, path, overwrite)  # before the evaluation, not after it
    check_output_folder("--save-images", save_images)
    to_stdout = str(json_path) == "-" or str(csv_path) == "-"
    console = user_console(stderr=to_stdout)
    dev = resolve_device(device)
    transform, name, scale, notes, model_info = _load_model(model, checkpoint, scale, dev,
                                                            task_cls)
    if lr_dir is not None and "degradation" in model_info:  # the LR inputs are given files
        given = "LR = the given files (--lr-dir)"
        notes = [n.replace(model_info["degradation"], given) for n in notes]
        model_info["degradation"] = given
    if match_histogram:
        transform, name = _with_histogram_matching(transform, dev), f"{name}+histmatch"

    sets = [k for k, on in (("set5", use_set5 or use_all), ("set14", use_set14 or use_all),
                            ("bsd100", use_bsd100 or use_all), ("cbsd68", use_cbsd68),
                            ("set12", use_set12)) if on]
    if not sets and hr_dir is None and lr_dir is None:
        sets = ["set5"]
    datasets = _datasets(sets, scale, data_dir, hr_dir, lr_dir, download=not no_download,
                         mod=mod)
    built, infos = build_metrics(metric_names(metrics, channel, lpips_net),
                                 crop_border=task_cls.eval_crop_border(scale),
                                 crop_whole_image=crop_lpips, device=dev, precision=precision,
                                 extra={"grid": {"period": scale}} if scale > 1 else None)
    total = sum(len(d) for d in datasets)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"eval {name} x{scale}", total=total)

        def advance(set_name: str, image: str) -> None:
            progress.update(task, advance=1, description=f"{set_name}/{image}")

        result = evaluate(transform, datasets, built, infos, model_name=name, device=dev,
                          save_images=save_images, on_image=advance,
                          make_input=task_cls.eval_input)
    result.model_info = model_info
    result.task, result.protocol = task_cls.name, task_cls.protocol or ""
    result.data_note = task_cls.eval_data_convention(scale) or ""
    given = [s.name for s in result.sets if s.given_lr]
    if result.data_note and given:  # a protocol's statement, but these inputs were files
        result.data_note += (f"; except {', '.join(given)}: inputs = the given files (--lr-dir, "
                             f"paired with the targets by name), 8-bit as read")
    _render(console, result, per_image)
    _footer(console, result, notes, total, verbose)
    if json_path is not None:
        write_json(result, json_path)
    if csv_path is not None:
        write_csv(result, csv_path)
    for path in (json_path, csv_path):
        if path is not None and str(path) != "-":
            console.print(f"wrote {path}")
    if save_images is not None:
        console.print(f"wrote comparison grids under {save_images}/")
