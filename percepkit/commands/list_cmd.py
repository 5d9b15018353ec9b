"""``percepkit list``: the registered parts, plugins included; ``list KIND NAME``: one part."""

from __future__ import annotations

import json
from typing import Any

import click

from ..registry import REGISTRIES


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
@click.argument("name", required=False)
@click.option("--filter", "pattern", default="*", show_default=True,
              help="Shell-style wildcard on names, e.g. 'vgg*'.")
def command(kind: str | None, name: str | None, pattern: str) -> None:
    """Show registered transforms, loss networks, losses, datasets, metrics, optimisers.

    \b
    percepkit list                    every part, one line each
    percepkit list lossnets           one kind
    percepkit list losses feature     one part: docstring, aliases, source, arguments
    """
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # don't wrap in pipes
    if kind is not None and name is not None:
        _show_part(console, kind, name)
        return
    for key in [kind] if kind else list(REGISTRIES):
        registry = REGISTRIES[key]
        if key == "models":
            console.print(_models_table(registry, pattern))
            continue
        table = Table(title=f"{key} ({registry.kind})", title_justify="left")
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("aliases")
        table.add_column("from")
        table.add_column("description")
        matched = set(registry.list(pattern))
        for entry in registry.entries():
            if entry.name in matched:
                table.add_row(escape(entry.display_name), ", ".join(entry.aliases),
                              escape(entry.source), escape(entry.description))
        console.print(table)
    if kind is not None:
        console.print(f"[dim]details of one: percepkit list {kind} NAME[/]", highlight=False)


def _default_text(value: Any) -> str:
    """A default as it would be written in a recipe (lists, null, true/false)."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def _show_part(console: Any, kind: str, name: str) -> None:
    """Everything the registry knows about one part (unknown names: did-you-mean, exit 2)."""
    from rich.markup import escape
    from rich.table import Table

    from ..registry.arguments import arguments

    registry = REGISTRIES[kind]
    entry = registry.entry(name)  # PercepkitError with suggestions -> one paragraph, exit 2
    obj = entry.obj
    where = f"{obj.__module__}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else \
        type(obj).__module__
    console.print(f"[bold cyan]{escape(entry.display_name)}[/] ({registry.kind})",
                  highlight=False)
    if entry.aliases:
        console.print(f"aliases: {', '.join(entry.aliases)}", highlight=False)
    console.print(f"from: {escape(entry.source)} ({escape(where)})", highlight=False)
    if entry.prefix_arg:
        console.print(f"'{entry.name}:VALUE' passes VALUE as {entry.prefix_arg!r}",
                      highlight=False)
    console.print()
    console.print(escape(entry.doc or "(no docstring)"), highlight=False)
    if kind == "models":
        _show_model(console, obj)
        return
    if kind == "tasks":
        _show_task(console, obj)
        return
    from ..recipes.recipe import PART_BLOCKS

    supplied = next((sup for reg, sup in PART_BLOCKS.values() if reg is registry), ())
    args = [a for a in arguments(obj) if a.name not in supplied]
    console.print()
    if supplied:
        console.print(f"set by percepkit, not by recipes: {', '.join(supplied)}",
                      highlight=False)
    if not args:
        console.print("arguments: none", highlight=False)
        return
    table = Table(title="arguments (recipe keys)", title_justify="left")
    for col in ("key", "accepts", "default"):
        table.add_column(col, style="bold" if col == "key" else None, no_wrap=col == "key")
    for a in args:
        table.add_row(a.name, escape(a.type_text),
                      "[yellow]required[/]" if a.required else escape(_default_text(a.default)))
    console.print(table)


def _show_task(console: Any, task: Any) -> None:
    """A task: its samples, the networks it trains, validation defaults, its eval protocol."""
    from rich.markup import escape

    from ..train.tasks import metric_direction

    best = task.default_best
    higher = metric_direction(best, task.own_values)
    lines = [
        f"sample: input {task.input_key!r}, target {task.target_key!r}"
        + (" (the data's scale is the transform's)" if task.uses_scale else ""),
        f"networks: transforms whose task is {' or '.join(task.network_tasks) or 'any'}",
        f"val.metrics default: {', '.join([*task.own_values, *task.default_val_metrics])}",
        f"train.best default: {best} ({'higher' if higher else 'lower'} is better)",
        "eval protocol: " + (f"{task.protocol} ({task.protocol_summary})" if task.protocol
                             else "none (percepkit eval does not score this task)"),
    ]
    lines += [f"recipe needs data.{k}: {v}" for k, v in task.required_data.items()]
    console.print()
    for line in lines:
        console.print(escape(line), highlight=False, soft_wrap=True)


def _show_model(console: Any, model: Any) -> None:
    """A trained model: its task, file, checksum and card (if its file is at hand)."""
    from rich.markup import escape

    from ..errors import PercepkitError

    lines = [f"task: {model.task}", f"file: {model.file}", f"sha256: {model.sha256}"]
    if model.url:
        lines.append(f"url: {model.url}")
    try:
        card = model.card()
        lines += [f"{key}: {value if isinstance(value, str) else _default_text(value)}"
                  for key, value in card.items()]
    except PercepkitError as e:
        lines.append(f"card: unavailable ({e})")
    console.print()
    for line in lines:
        console.print(escape(line), highlight=False, soft_wrap=True)


def _models_table(registry, pattern: str):
    """The trained models with the headline numbers of their cards."""
    from rich.markup import escape
    from rich.table import Table

    from ..errors import PercepkitError

    table = Table(title="models (trained networks; use the name wherever a checkpoint goes)",
                  title_justify="left")
    for col in ("name", "task", "from", "description", "measured"):
        table.add_column(col, style="bold cyan" if col == "name" else None,
                         no_wrap=col == "name")
    matched = set(registry.list(pattern))
    for entry in registry.entries():
        if entry.name not in matched:
            continue
        try:
            measured = escape(str(entry.obj.card().get("headline", "")))
        except PercepkitError as e:
            measured = f"[yellow]unavailable[/]: {escape(str(e))}"
        table.add_row(entry.name, entry.obj.task, entry.source, escape(entry.description),
                      measured)
    return table
