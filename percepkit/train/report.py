"""What a training session tells the user and writes to its logs (rank 0 only)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .rundir import CSVLog, RunDir


class Reporter:
    """The console lines, progress bar, ``log.csv``/``val.csv`` rows and TensorBoard scalars.

    Only the main process reports; on the others every method does nothing.
    """

    def __init__(self, console: Console, is_main: bool, show_progress: bool, iterations: int
                 ) -> None:
        self.console, self.is_main, self.show_progress = console, is_main, show_progress
        self.iterations = iterations
        self.terms: list[str] = []
        self.log_csv: CSVLog | None = None
        self.val_csv: CSVLog | None = None
        self.tb: Any = None
        self._bar: tuple[Any, Any] | None = None

    def open(self, run: RunDir, terms: Sequence[str], val_columns: Sequence[str],
             tensorboard: bool | None = None) -> None:
        """Open the run directory's logs for these loss terms (main process); ``tensorboard``
        as ``train.tensorboard`` (:func:`~percepkit.train.rundir.open_tensorboard`)."""
        self.terms = list(terms)
        self.log_csv, self.val_csv, self.tb = run.open_logs(
            ["step", "epoch", "lr", "loss", *self.terms, "sec_per_step", "images_per_sec",
             "elapsed_sec"], ["step", *val_columns], tensorboard)

    def close(self) -> None:
        """Close TensorBoard (the CSV logs are opened per row)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def start_progress(self, step: int) -> tuple[Any, Any]:
        """``(rich Progress, task id)``, or ``(None, None)`` without a progress bar."""
        if not (self.show_progress and self.is_main):
            return None, None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        # step and times first, then one flexible column (losses, speed) that takes the width
        # that is left and is cut with an ellipsis: at 80 columns step count and ETA stay whole
        rest = Column(ratio=1, no_wrap=True, overflow="ellipsis", min_width=0)
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}  [cyan]{task.fields[speed]}",
                       table_column=rest),
            console=self.console, transient=False, expand=True)
        task = progress.add_task("train", total=self.iterations, completed=step, losses="",
                                 speed="")
        progress.start()
        self._bar = (progress, task)
        return progress, task

    def log(self, step: int, window: list[list[float]], seconds: float, steps: int,
            elapsed: float, lr: float, epoch: float, images_per_step: int) -> None:
        """Average the losses of the last ``steps`` steps into ``log.csv`` and the console."""
        if not window or not self.is_main:
            return
        terms = self.terms
        mean = _column_means(window)
        sec = seconds / max(1, steps)
        ips = images_per_step / sec if sec > 0 else float("nan")
        # a value not measured in the whole window (NaN: the discriminator's during its
        # warm-up) is left out: an empty CSV cell, no TensorBoard point, not on the console
        measured = {k: v for k, v in zip(terms, mean[1:]) if not math.isnan(v)}
        row = {"step": step, "epoch": round(epoch, 4), "lr": float(lr), "loss": mean[0],
               **measured, "sec_per_step": sec, "images_per_sec": ips, "elapsed_sec": elapsed}
        if self.log_csv is not None:
            self.log_csv.write(row)
        if self.tb is not None:
            for k in ("loss", *measured, "lr", "images_per_sec"):
                self.tb.add_scalar(f"train/{k}", row[k], step)
        parts = "  ".join(f"{k} {v:.4g}" for k, v in measured.items())
        if self._bar is not None:
            self._bar[0].update(self._bar[1], speed=f"{1 / sec:.2f} it/s  {ips:.1f} img/s")
        self.console.print(log_line(step, self.iterations, mean[0], parts, lr, sec, ips, elapsed),
                           soft_wrap=True)

    def validation(self, step: int, metrics: Mapping[str, float], best: bool) -> None:
        """One ``val.csv`` row and console line."""
        if self.val_csv is not None:
            self.val_csv.write({"step": step, **metrics})
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"val/{k}", v, step)
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        mark = " (best)" if best else ""
        self.console.print(f"validation at step {step}: {text}{mark}", soft_wrap=True)

    def samples(self, grid: torch.Tensor, step: int) -> None:
        """The preview grid to TensorBoard (the PNG is written by the trainer)."""
        if self.tb is not None:
            self.tb.add_image("samples", grid, step)


def _column_means(window: list[list[float]]) -> list[float]:
    """Per-column means of the window's rows, over the rows where the value is not NaN (NaN
    when it is NaN in every row)."""
    values = np.array(window, dtype=np.float64)
    seen = ~np.isnan(values)
    sums = np.where(seen, values, 0.0).sum(axis=0)
    counts = seen.sum(axis=0)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]


def duration(seconds: float) -> str:
    """``'45s'``, ``'3m12s'``, ``'2h05m'``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def log_line(step: int, iterations: int, loss: float, parts: str, lr: float, sec: float,
             ips: float, elapsed: float) -> str:
    """The periodic console line; the ETA assumes the recent ``sec`` per step."""
    eta = duration((iterations - step) * sec) if math.isfinite(sec) else "?"
    return (f"step {step}/{iterations}  loss {loss:.4g}  ({parts})  lr {lr:.3g}  "
            f"{1 / sec:.2f} it/s  {ips:.1f} img/s  elapsed {duration(elapsed)}, ETA {eta}")
