"""The ``percepkit`` command line. Each sub-command lives in ``percepkit/commands/<name>_cmd.py``
and is imported only when used, so ``percepkit --help`` stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from . import __version__
from .errors import PercepkitError

COMMANDS = {
    "list": "Show the registered parts (transforms, loss networks, losses, ...).",
    "recipe": "Check or show a recipe.",
    "train": "Train a transform network from a recipe.",
    "eval": "Evaluate on Set5 / Set14 / BSD100 with PSNR, SSIM and LPIPS.",
    "score": "Score images you already have against their ground truth (PSNR, SSIM, LPIPS).",
    "degrade": "Show what a model is trained on: targets beside their degraded inputs.",
    "upscale": "Super-resolve images with a checkpoint or a named transform.",
    "stylize": "Stylize images with a trained style checkpoint.",
    "optimize": "The Gatys et al. optimisation baseline (optimise the image itself).",
    "bench": "Speed: feed-forward vs optimisation, the paper's speed table.",
    "export": "Export a checkpoint to ONNX or TorchScript.",
    "convert": "Convert a third-party network file into a percepkit checkpoint.",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _module_exists(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _module_exists(cmd_name):
            return None
        return importlib.import_module(f"percepkit.commands.{cmd_name}_cmd").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"percepkit.commands.{name}_cmd") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="percepkit")
def cli() -> None:
    """percepkit: perceptual losses for real-time style transfer and super-resolution."""


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one paragraph and exit with code 2, never a traceback."""
    import warnings

    warnings.formatwarning = _one_line_warning  # no source line under each warning
    try:
        code = cli.main(args=argv, prog_name="percepkit", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except PercepkitError as e:
        from rich.markup import escape

        from .runtime.console import user_console

        # escaped: messages quote paths and commands such as runs/exp[lr=1e-3] or 'pkg[extra]'
        user_console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`, `| grep -q`): nothing is lost
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(0)
    except OSError as e:  # a write the files module did not see: disk full, read-only, ...
        from .runtime.files import is_write_error, write_error

        if not is_write_error(e) or e.filename is None:
            raise
        click.echo(f"error: {write_error(e.filename, e, cleaned=False)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
