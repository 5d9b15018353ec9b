"""``percepkit bench``: the paper's speed table (optimisation vs feed-forward) on this device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import PercepkitError
from . import precision_option


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PercepkitError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise PercepkitError(f"{what}: expected positive integers, got {text!r}")
    return values


def _secs(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s" if value < 100 \
        else f"{value:,.0f} s"


def render(result, console) -> None:
    """Print the speed table and the throughput table with rich."""
    from rich.table import Table

    from ..bench.speed_table import PAPER_TITAN_X

    iters = sorted(result.rows[0].optimization) if result.rows else []
    table = Table(title=f"Optimisation (Gatys et al., L-BFGS) vs feed-forward ({result.transform})"
                        f" — {result.device}, {result.precision}", title_justify="left")
    table.add_column("image", style="bold")
    for n in iters:
        table.add_column(f"{n} it", justify="right")
    table.add_column("feed-fwd", justify="right")
    table.add_column("best", justify="right", style="dim")
    table.add_column(f"speedup {' '.join(map(str, iters))}", justify="right")
    table.add_column("paper", justify="right", style="dim")
    for r in result.rows:
        cells = [f"{_secs(r.optimization[n])}{'*' if r.projected[n] else ''}" for n in iters]
        paper = PAPER_TITAN_X.get(r.size)
        paper_text = "—"
        if paper and all(n in paper["speedup"] for n in iters):
            paper_text = " ".join(f"{paper['speedup'][n]}x" for n in iters)
        table.add_row(f"{r.size}²", *cells, _secs(r.feedforward), _secs(r.feedforward_min),
                      " ".join(f"{r.speedup[n]:.0f}x" for n in iters), paper_text)
    console.print(table)
    timed = ", ".join(f"{r.size}²: {r.iterations_timed} at {_secs(r.seconds_per_iteration)}"
                      for r in result.rows)
    if any(any(r.projected.values()) for r in result.rows):
        console.print(f"[dim]* projected from the iterations timed ({timed} each) plus setup; "
                      "the cost per iteration is constant. paper: GTX Titan X speedups.[/]")
    else:
        console.print(f"[dim]all iterations timed ({timed} each). paper: GTX Titan X "
                      "speedups.[/]")
    low = result.reduced_precision
    peaks = f"fp32 matmul {result.matmul_gflops:,.0f} GFLOP/s"
    if low:
        peaks += f", {low} matmul {result.reduced_matmul_gflops:,.1f} GFLOP/s"
    t2 = Table(title=f"Feed-forward throughput ({peaks})", title_justify="left")
    columns = ["image", "images/s", "GFLOP", "GFLOP/s", "of matmul"]
    if low:
        columns += [f"{low} images/s", f"{low} GFLOP/s", f"of {low} matmul", f"{low} speedup"]
    for col in columns:
        t2.add_column(col, justify="right" if col != "image" else "left")
    for r in result.rows:
        cells = [f"{r.size}²", f"{r.images_per_second:.2f}", f"{r.gflop:.1f}",
                 f"{r.achieved_gflops:,.0f}", f"{100 * r.fraction_of_matmul:.0f}%"]
        if low and r.reduced_feedforward:
            cells += [f"{1 / r.reduced_feedforward:.2f}", f"{r.reduced_achieved_gflops:,.1f}",
                      f"{100 * r.reduced_fraction_of_matmul:.0f}%",
                      f"{r.feedforward / r.reduced_feedforward:.2f}x"]
        t2.add_row(*cells)
    console.print(t2)
    console.print("[dim]feed-fwd: median of the timed passes (speedups use it); best: the "
                  "fastest pass.[/]")
    for note in result.notes:
        if note.startswith("busy"):
            console.print(f"[yellow]warning[/]: {note}")
        elif not note.startswith("projected"):
            console.print(f"[dim]note: {note}[/]")


@click.command("bench")
@click.option("--sizes", default="256,512,1024", show_default=True,
              help="Square image sizes (pixels), comma-separated.")
@click.option("--iters", default="100,300,500", show_default=True,
              help="Optimisation iteration counts, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--device", default="auto", show_default=True)
@click.option("--checkpoint", default=None, metavar="MODEL|CKPT",
              help="Time this style model's or checkpoint's network (default: a johnson_style "
                   "net; speed does not depend on the weights).")
@click.option("--transform", "transform_name", default="johnson_style", show_default=True,
              help="Registered transform to time when no checkpoint is given, e.g. "
                   "johnson_style_fast.")
@click.option("--max-seconds", type=float, default=None,
              help="Time at most this long per size for the optimisation, then project "
                   "(default: 20 on CPU, 600 on CUDA).")
@click.option("--repeats", type=int, default=5, show_default=True,
              help="Timed feed-forward passes per size (median reported).")
@click.option("--matmul-size", type=int, default=None,
              help="Side of the square matrix product that measures peak throughput (default "
                   "2048 on CPU, 8192 on CUDA).")
@precision_option("auto",
                  "The paper's table is fp32; bf16/fp16 (or auto on a device with fast bf16) "
                  "also times the feed-forward pass in it. --train: the recipe's precision.")
@click.option("--half/--no-half", default=None, hidden=True, help="Deprecated: --precision fp16.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the style net.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads.")
@click.option("--train", "train_recipe", type=click.Path(path_type=Path), default=None,
              help="Instead: time training steps of this recipe (its own data and networks) "
                   "and report steps/s and images/s.")
@click.option("--steps", type=click.IntRange(2, 100000), default=10, show_default=True,
              help="--train: timed steps (after the warm-up).")
@click.option("--warmup", type=click.IntRange(1, 100000), default=3, show_default=True,
              help="--train: untimed steps first.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="--train: override a recipe key, e.g. --set train.batch_size=8.")
def command(sizes: str, iters: str, as_json: bool, device: str, checkpoint: str | None,
            transform_name: str, max_seconds: float | None, repeats: int,
            matmul_size: int | None, precision: str, half: bool | None, compile_: bool,
            threads: int | None, train_recipe: Path | None, steps: int, warmup: int,
            overrides: tuple[str, ...]) -> None:
    """Reproduce the paper's speed table on this device.

    Gatys et al. optimisation at 100/300/500 L-BFGS iterations against one feed-forward pass of
    the style network at 256, 512 and 1024 px, with speedups. On a slow device only some
    iterations are timed and the rest are projected (marked *). Also prints feed-forward
    images/s and the fraction of the measured matrix-multiply throughput achieved.
    """
    import torch

    from ..bench.speed_table import run_bench
    from ..runtime.console import user_console
    from ..runtime.devices import resolve_device

    if threads:
        torch.set_num_threads(threads)
    if half is not None:
        precision = "fp16" if half else "fp32"
    if train_recipe is not None:
        sets = (*overrides, *([f"train.precision={precision}"] if precision != "auto" else []))
        _bench_training(train_recipe, sets, device, steps, warmup, as_json)
        return
    size_list = _ints(sizes, "--sizes")
    iter_list = _ints(iters, "--iters")
    dev = resolve_device(device)
    model = None
    if checkpoint is not None:
        from ..models.loader import load_network

        loaded = load_network(checkpoint, task="style", transforms=False,
                              hint="bench times style networks (the paper's table)")
        model, transform_name = loaded.net, loaded.source.name
        names = getattr(model, "style_names", [])
        if names:  # what stylize runs: one style folded in (every blend costs the same)
            model = model.blend(names[0])
    console = user_console(stderr=True)
    with console.status("benchmarking") as status:
        result = run_bench(size_list, iter_list, device=dev, model=model,
                           transform_name=transform_name, precision=precision, compile=compile_,
                           max_seconds=max_seconds if max_seconds is not None else
                           (600.0 if dev.type == "cuda" else 20.0),
                           repeats=repeats, matmul_size=matmul_size,
                           progress=lambda msg: status.update(msg))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render(result, user_console())


def _bench_training(recipe: Path, overrides: tuple[str, ...], device: str, steps: int,
                    warmup: int, as_json: bool) -> None:
    """``bench --train``: steps/s and images/s of a recipe's training loop."""
    from rich.markup import escape
    from rich.table import Table

    from ..bench.speed_table import train_speed
    from ..runtime.console import user_console

    sets = [*overrides, *([f"train.device={device}"] if device != "auto" else [])]
    console = user_console(stderr=True)
    with console.status(f"training {steps + warmup} steps"):
        result = train_speed(str(recipe), sets, steps=steps, warmup=warmup)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    t = result.timing
    table = Table(title=f"Training speed: {escape(result.recipe)} — {escape(result.device)}, "
                        f"batch {result.batch_size}, {result.precision}", title_justify="left")
    for col in ("steps timed", "s/step best", "s/step median", "steps/s", "images/s"):
        table.add_column(col, justify="right")
    table.add_row(str(len(result.step_seconds)), f"{t.min:.3f}", f"{t.median:.3f}",
                  f"{1 / t.median:.2f}", f"{result.batch_size / t.median:.1f}")
    out = user_console()
    out.print(table)
    out.print(f"[dim]after {result.warmup} warm-up step(s); no validation, previews or "
              "checkpoints in between.[/]")
    for note in result.notes:
        out.print(f"[yellow]warning[/]: {escape(note)}")
