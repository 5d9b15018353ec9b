"""``percepkit recipe check|show``: validate recipes without training."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RecipeError
from ..recipe import load_recipe


@click.group("recipe")
def command() -> None:
    """Check or show recipes."""


@command.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set train.iterations=100.")
def check(files: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    """Validate recipe FILES: registry names, constructor arguments, layer names."""
    from rich.console import Console

    console = Console(highlight=False)
    errors = []
    for path in files:
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as e:
            errors.append(str(e))
            continue
        terms = ", ".join(f"{s['name']}×{s.get('weight', 1.0):g}" for s in recipe.raw["losses"])
        console.print(f"[green]ok[/] {path}: {recipe.task} · {recipe.raw['transform']['name']} · "
                      f"{terms}")
    if errors:
        raise RecipeError(("\n" if len(errors) > 1 else "").join(errors))


@command.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def show(file: Path, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe (after --set overrides) as YAML."""
    click.echo(load_recipe(file, overrides).to_yaml(), nl=False)
