"""``percepkit list``: the registered parts, plugins included."""

from __future__ import annotations

import click

from ..registry import REGISTRIES


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
@click.option("--filter", "pattern", default="*", show_default=True,
              help="Shell-style wildcard on names, e.g. 'vgg*'.")
def command(kind: str | None, pattern: str) -> None:
    """Show registered transforms, loss networks, losses, datasets, metrics, optimisers."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # don't wrap in pipes
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
                table.add_row(entry.display_name, ", ".join(entry.aliases), entry.source,
                              entry.description)
        console.print(table)


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
