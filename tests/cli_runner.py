"""Run the percepkit CLI in-process and return its exit status (shared by the CLI tests)."""

from __future__ import annotations

from percepkit.cli import main


def run_cli(argv: list[str]) -> int:
    """``percepkit ARGV``'s exit status; output goes to pytest's capture as usual."""
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
