"""Helpers shared by ``percepkit eval`` and ``percepkit score`` (commands don't import each
other)."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..errors import PercepkitError


def metric_names(metrics: str, channel: str, lpips_net: str) -> list[str]:
    """Registry names for a --metrics list under --channel and --lpips-net."""
    names = [m.strip().lower() for m in metrics.split(",") if m.strip()]
    if not names:
        raise PercepkitError("--metrics is empty; e.g. --metrics psnr,ssim,lpips")
    mapped = []
    for n in names:
        if channel == "rgb" and n in ("psnr", "ssim", "ms_ssim"):
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


def metric_conventions(metrics: list) -> list[str]:
    """Short statements of the metrics' conventions for a table footer (eval and score)."""
    names = [m.name for m in metrics if not m.unavailable]
    parts = []
    on_y = [n.upper().replace("_", "-") for n in names if n in ("psnr", "ssim", "ms_ssim")]
    if on_y:
        parts.append(f"{'/'.join(on_y)} on Y = MATLAB rgb2ycbcr (BT.601 studio range; tools "
                     f"using full-range YIQ read about 1.32 dB lower)")
    if any(n in ("psnr_rgb", "ssim_rgb", "ms_ssim_rgb") for n in names):
        parts.append("*_RGB on all RGB channels")
    if any(n.startswith(("psnr", "ssim")) for n in names):
        parts.append("SSIM 11x11 Gaussian sigma 1.5 (MATLAB ssim_index)")
    if any(n.startswith("ms_ssim") for n in names):
        parts.append("MS-SSIM as MATLAB msssim.m (5 scales)")
    return parts


def whole_image_metrics(metrics: list) -> list[str]:
    """Names of the metrics that score the whole image (no border cropped)."""
    return [m.name.upper() for m in metrics
            if not m.unavailable and "whole image" in m.convention]


def metric_options(border: str) -> Callable[[Callable], Callable]:
    """--metrics, --channel, --lpips-net, --crop-lpips and --device, shared by eval and score;
    ``border`` names the border that --crop-lpips removes."""
    options = [
        click.option("--metrics", default="psnr,ssim,lpips", show_default=True,
                     help="Comma-separated registered metrics (see `percepkit list metrics`)."),
        click.option("--channel", type=click.Choice(["y", "rgb"]), default="y",
                     show_default=True,
                     help="PSNR/SSIM/MS-SSIM on MATLAB BT.601 Y (as published tables) or on RGB."),
        click.option("--lpips-net", type=click.Choice(["alex", "vgg"]), default="alex",
                     show_default=True, help="LPIPS backbone."),
        click.option("--crop-lpips", is_flag=True,
                     help=f"Remove {border} before LPIPS and DISTS too; by default they score the "
                          "whole image, as published SR tables do."),
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:1, auto."),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def convention_lines(metrics: list, data: str, short: str, verbose: bool) -> list[str]:
    """Rich lines under an eval/score table: the exact conventions (``verbose``) or the short
    statement, then one line per metric that could not be computed."""
    from rich.markup import escape

    if verbose:
        lines = [f"[dim]data:[/] {escape(data)}"]
        lines += [f"[dim]{escape(m.convention)}[/]" for m in metrics if not m.unavailable]
    else:
        lines = [f"[dim]convention:[/] {escape(short)}"]
    reduced = [m for m in metrics if m.precision and m.precision != "fp32"]
    if reduced:
        lines.append(f"[yellow]precision:[/] {', '.join(m.name for m in reduced)} networks in "
                     f"{reduced[0].precision} (published values are fp32)")
    return lines + [f"[yellow]{m.name.upper()} n/a:[/] {escape(m.unavailable)}"
                    for m in metrics if m.unavailable]

