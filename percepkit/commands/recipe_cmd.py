"""``percepkit recipe check|show|schema``: validate recipes without training."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import MissingExtraError, RecipeError
from ..recipes.recipe import load_recipe


@click.group("recipe")
def command() -> None:
    """Check, show or describe recipes."""


@command.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set train.iterations=100.")
@click.option("--skip-data", is_flag=True,
              help="Don't require the data folders and the style image to exist (a recipe "
                   "meant for another machine).")
def check(files: tuple[Path, ...], overrides: tuple[str, ...], skip_data: bool) -> None:
    """Validate recipe FILES as training would, without loading weights or building networks.

    Registry names, constructor arguments and their types and ranges, layer names of the loss
    network, the transform's scale against the data, and that data folders exist.
    """
    from rich.markup import escape

    from ..runtime.console import user_console
    from ..train.tasks import task_class

    console = user_console()
    errors = []
    for path in files:
        try:
            recipe = load_recipe(path, overrides, check_files=not skip_data)
        except (RecipeError, MissingExtraError) as e:
            errors.append(str(e))
            continue
        terms = ", ".join(recipe.loss_terms)
        _, best, higher = task_class(recipe.task).selection(recipe.raw)
        console.print(f"[green]ok[/] {escape(str(path))}: {recipe.task} · "
                      f"{recipe.raw['transform']['name']} · {terms} · best: "
                      f"{'highest' if higher else 'lowest'} {best}", soft_wrap=True)
    if errors:
        raise RecipeError(("\n" if len(errors) > 1 else "").join(errors))


@command.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def show(file: Path, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe (short forms normalised, --set applied) as YAML."""
    click.echo(load_recipe(file, overrides).to_yaml(), nl=False)


@command.command("schema")
def schema() -> None:
    """Print a JSON Schema of recipes (every registered part, plugins included).

    \b
    percepkit recipe schema > recipe.schema.json
    then start a recipe with:  # yaml-language-server: $schema=recipe.schema.json
    """
    import json

    from ..recipes.schema import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))
