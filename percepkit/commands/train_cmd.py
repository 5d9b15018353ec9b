"""``percepkit train``: train a transform network from a recipe, or resume a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import precision_option

if TYPE_CHECKING:
    from rich.console import Console

    from ..train import TrainResult

_EPILOG = """\b
Examples:
  percepkit train recipes/sr_x4_cpu_demo.yaml --set train.iterations=200 --device cpu
  percepkit train recipes/style_johnson2016.yaml --set data.train.root=data/coco --out runs/candy
  percepkit train --resume runs/candy            # continue from its newest intact checkpoint
  percepkit train recipes/tiny_sr.yaml --resume  # continue the newest runs/tiny_sr-* run
  torchrun --nproc_per_node 4 -m percepkit.cli train recipes/sr_x4_feat.yaml --device cuda

\b
Exit status: 0 trained; 2 a user error (one paragraph), also when another run is using --out;
128+N stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP): the first signal saves a
checkpoint and prints the resume command, a second one stops at once.
"""


@click.command("train", epilog=_EPILOG)
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value (repeatable), e.g. --set train.iterations=200.")
@click.option("--device", default=None, metavar="DEVICE",
              help="cpu, cuda, cuda:N, mps or auto (default: the recipe's train.device).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/<recipe>-<time>).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None,
              metavar="[RUN_DIR|CHECKPOINT]",
              help="Continue a run: a run directory (newest intact checkpoint), a checkpoint "
                   "file, or nothing for --out / the newest runs/<recipe>-* run.")
@click.option("--init", default=None, metavar="MODEL|CKPT",
              help="Start from these weights (a model name or checkpoint) with a fresh "
                   "optimiser; shorthand for --set train.init=...")
@precision_option(None, "auto (bf16 on bf16-capable GPUs and CPUs with bf16 units, else "
                        "fp32), fp32, bf16, fp16 (CUDA); default: the recipe's train.precision.")
@click.option("--amp/--no-amp", default=None, hidden=True,
              help="Deprecated: --precision auto / --precision fp32.")
@click.option("--compile", "compile_", is_flag=True, default=None,
              help="torch.compile the transform network.")
@click.option("--progress/--no-progress", default=None,
              help="Show the progress bar (default: when the output is a terminal).")
def command(recipe: str | None, overrides: tuple[str, ...], device: str | None,
            out: str | None, resume: str | None, init: str | None, precision: str | None,
            amp: bool | None,
            compile_: bool | None, progress: bool | None) -> None:
    """Train a transform network from RECIPE (a YAML file), or resume a run with --resume."""
    from rich.markup import escape

    from ..recipes.recipe import load_recipe, parse_yaml, recipe_from_mapping
    from ..runtime.console import user_console
    from ..train import Trainer, TrainingInterrupted, recipe_text_for_resume, resolve_resume
    from ..train.signals import TrainingAborted, exit_code

    console = user_console()
    if recipe is None and resume is None:
        raise click.UsageError("give a RECIPE file, or --resume RUN_DIR|CHECKPOINT")
    if recipe is None and resume is not None and Path(resume).suffix in (".yaml", ".yml") \
            and Path(resume).is_file():
        recipe, resume = resume, "latest"  # `train --resume recipe.yaml` means "latest run"
    extra = list(overrides)
    if device is not None:
        extra.append(f"train.device={device}")
    if amp is not None:
        extra.append(f"train.amp={'true' if amp else 'false'}")
    if precision is not None:
        extra.append(f"train.precision={precision}")
    if compile_:
        extra.append("train.compile=true")
    if init is not None:
        extra.append(f"train.init={init}")

    if out is not None:  # a file in the way, no permission: say so before any work
        from ..runtime.files import check_output_folder

        check_output_folder("--out", Path(out))
    point = None
    if recipe is not None:
        rec = load_recipe(recipe, extra)
        if resume is not None:
            point = resolve_resume(resume, out, rec.name, console=console)
    else:
        assert resume is not None
        point = resolve_resume(resume, out, console=console)
        text, source = recipe_text_for_resume(point)
        rec = recipe_from_mapping(parse_yaml(text, source), source, extra)
    trainer = Trainer(rec, out=out, resume=point, console=console, progress=progress,
                      handle_signals=True)
    try:
        result = trainer.run()
    except TrainingInterrupted as e:  # a checkpoint was saved
        console.print(f"[yellow]{escape(str(e))}[/]", soft_wrap=True)
        sys.exit(exit_code(e.signum))
    except TrainingAborted as e:  # a second signal, or one during set-up
        user_console(stderr=True).print(f"[bold red]{escape(str(e))}[/]", soft_wrap=True)
        sys.exit(exit_code(e.signum))
    if trainer.env.is_main:
        _summary(console, result)


def _summary(console: Console, result: TrainResult) -> None:
    """Where the run's files are, and its last validation."""
    from rich.markup import escape

    lines = [f"run directory: {result.run_dir}"]
    if result.last_checkpoint:
        lines.append(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        value = "" if result.best_metric is None else f" {result.best_metric:.4f}"
        lines.append(f"best checkpoint: {result.best_checkpoint} ({result.best_by}{value}"
                     f"{'' if result.best_step is None else f' at step {result.best_step}'})")
    if result.val:
        lines.append("last validation: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                      result.val.items()))
    console.print(escape("\n".join(lines)), soft_wrap=True)
