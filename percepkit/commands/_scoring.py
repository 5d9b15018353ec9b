"""Helpers shared by ``percepkit eval`` and ``percepkit score`` (commands don't import each
other)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PercepkitError


def check_output(flag: str, path: Path | None, overwrite: bool) -> None:
    """Refuse an output file that exists (without --overwrite) or cannot be written."""
    if path is None or str(path) == "-":
        return
    if path.is_dir():
        raise PercepkitError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise PercepkitError(f"{flag} {path}: exists; pass --overwrite to replace it")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise PercepkitError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PercepkitError(f"{flag} {path}: {parent} is not writable")

def metric_names(metrics: str, channel: str, lpips_net: str) -> list[str]:
    """Registry names for a --metrics list under --channel and --lpips-net."""
    names = [m.strip().lower() for m in metrics.split(",") if m.strip()]
    if not names:
        raise PercepkitError("--metrics is empty; e.g. --metrics psnr,ssim,lpips")
    mapped = []
    for n in names:
        if channel == "rgb" and n in ("psnr", "ssim"):
            n = f"{n}_rgb"
        if lpips_net == "vgg" and n == "lpips":
            n = "lpips_vgg"
        if n not in mapped:
            mapped.append(n)
    return mapped

def format_value(value: float | None, fmt: str) -> str:
    """A metric value for a table: n/a, inf/nan as words, else ``fmt``."""
    if value is None:
        return "n/a"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return format(value, fmt)
