"""The rich Console every command prints its messages through."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def user_console(stderr: bool = False, **kwargs: Any) -> Console:
    """A Console for user messages: wrapped at the terminal's width on a terminal, never wrapped
    when the output is a pipe or file (so a copied path or command stays on one line)."""
    console = Console(stderr=stderr, highlight=False, **kwargs)
    console.soft_wrap = not console.is_terminal
    return console
