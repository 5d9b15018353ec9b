"""The run directory: its layout, step/best checkpoints, pruning, resume points and logs.

::

    runs/<recipe>-<YYYYmmdd-HHMMSS>/
      recipe.yaml        the resolved recipe (after --set overrides)
      run.json           one entry per session: command, versions, device, start step
      log.csv            step, lr, loss and every weighted loss term, speed (every log_every)
      val.csv            validation metrics (every val_every)
      samples/           step_XXXXXXXX.png preview grids (every sample_every)
      checkpoints/       step_XXXXXXXX.safetensors (the last keep_last) and best.safetensors
      tensorboard/       train.tensorboard (default: if the tensorboard package is installed)
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import platform
import re
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import CheckpointError, PercepkitError
from ..models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..runtime.files import append_text, atomic_write, make_folder

CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
BEST = "best.safetensors"
LATEST = "latest"
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


def step_name(step: int) -> str:
    """The file name of the step checkpoint of ``step``."""
    return f"step_{step:08d}.safetensors"


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of a run directory's step checkpoints, newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_file() and (m := _STEP_FILE.match(p.name))]
    return sorted(found, reverse=True)


def latest_intact_checkpoint(run_dir: Path, console: Console | None = None) -> Path | None:
    """The newest step checkpoint that reads back; damaged newer ones are reported and skipped."""
    for _, path in find_checkpoints(run_dir):
        try:
            load_checkpoint(path)  # all tensors: a header can be intact while the data is cut
        except CheckpointError as e:
            msg = f"skipping a damaged checkpoint: {e}"
            if console is not None:
                console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False)
            else:
                warnings.warn(msg, stacklevel=2)
            continue
        return path
    return None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a percepkit run directory."""
    return (path / "recipe.yaml").is_file() or (path / CHECKPOINTS).is_dir()


def latest_run(recipe_name: str, runs_root: str | Path = "runs") -> Path | None:
    """The most recent ``runs/<recipe_name>-*`` run directory, if any."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    runs = [p for p in root.glob(f"{glob_escape(recipe_name)}-*") if p.is_dir() and is_run_dir(p)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def default_run_dir(recipe_name: str, runs_root: str | Path = "runs") -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>`` (with a suffix if that exists already)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{recipe_name}-{stamp}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


# -- resume points ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: a checkpoint (None: from step 0) and its run directory."""

    checkpoint: Path | None
    run_dir: Path


def resolve_resume(resume: str | Path, out: str | Path | None = None,
                   recipe_name: str | None = None, runs_root: str | Path = "runs",
                   console: Console | None = None) -> ResumePoint:
    """Turn ``--resume [PATH]`` into a checkpoint and run directory.

    ``PATH`` is a run directory (its newest intact checkpoint is used) or a checkpoint file; an
    empty value or ``"latest"`` means ``--out`` or else the newest ``runs/<recipe>-*`` run.
    """
    value = str(resume)
    if value in ("", LATEST):
        if out is not None:
            run_dir = Path(out)
        elif recipe_name is not None:
            found = latest_run(recipe_name, runs_root)
            if found is None:
                raise PercepkitError(f"--resume: no earlier run of {recipe_name!r} in "
                                     f"{runs_root}/ to resume; start without --resume, or pass "
                                     f"the run directory or checkpoint: --resume PATH")
            run_dir = found
        else:
            raise PercepkitError("--resume without a path needs a recipe or --out to know which "
                                 "run to continue; pass --resume RUN_DIR or CHECKPOINT")
        if not run_dir.is_dir() or not is_run_dir(run_dir):
            raise PercepkitError(f"--resume: {run_dir} is not a percepkit run directory (no "
                                 f"recipe.yaml or {CHECKPOINTS}/ inside)")
        return ResumePoint(latest_intact_checkpoint(run_dir, console), run_dir)
    path = Path(value).expanduser()
    if path.is_dir():
        if not is_run_dir(path):
            raise PercepkitError(f"--resume {path}: not a percepkit run directory (no recipe.yaml "
                                 f"or {CHECKPOINTS}/ inside) and not a checkpoint file")
        if out is not None and Path(out).resolve() != path.resolve():
            raise PercepkitError(f"--resume {path} continues in that run directory; drop --out "
                                 f"{out}, or resume from a checkpoint file to branch into --out")
        return ResumePoint(latest_intact_checkpoint(path, console), path)
    if not path.exists():
        raise PercepkitError(f"--resume {path}: no such run directory or checkpoint file")
    ckpt = Checkpoint.read(path, tensors=False)  # CheckpointError for foreign/truncated files
    parent = path.parent.parent
    if out is not None:
        run_dir = Path(out)
    elif path.parent.name == CHECKPOINTS and (parent / "recipe.yaml").is_file():
        run_dir = parent
    else:
        run_dir = default_run_dir(recipe_name or str(ckpt.recipe_name or "run"), runs_root)
    return ResumePoint(path, run_dir)


def recipe_text_for_resume(point: ResumePoint) -> tuple[str, str]:
    """``(yaml text, source label)`` of the recipe a resumed run was trained with."""
    if point.checkpoint is not None:
        text = Checkpoint.read(point.checkpoint, tensors=False).recipe_text
        if text is not None:
            return text, f"{point.checkpoint} (stored recipe)"
    path = point.run_dir / "recipe.yaml"
    if path.is_file():
        from ..recipes.recipe import read_recipe_text

        return read_recipe_text(path), str(path)
    raise PercepkitError(f"{point.run_dir}: cannot find the run's recipe (no recipe.yaml and no "
                         f"checkpoint); pass the recipe file as well")


def session_entry(step: int, iterations: int, resumed_from: Path | None, device: str,
                  world_size: int, precision: str) -> dict[str, Any]:
    """One training session's entry in ``run.json``."""
    return {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv, "start_step": step, "iterations": iterations,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "device": device, "world_size": world_size, "precision": precision,
        "percepkit": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "host": platform.node(),
    }


# -- logs -------------------------------------------------------------------------------------
class CSVLog:
    """Append-only CSV file with a fixed header (written by rank 0 only)."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        if path.is_file() and path.stat().st_size:
            with path.open(newline="") as f:
                old = next(csv.reader(f), [])
            if old != header:  # e.g. a resumed run with other loss terms: keep the old log
                path.rename(path.with_name(f"{path.stem}.old{int(time.time())}{path.suffix}"))
        if not path.is_file() or not path.stat().st_size:
            atomic_write(path, lambda f: f.write(_csv_line(header).encode("utf-8")))

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (missing columns empty, floats to 6 significant digits), whole or
        not at all (:func:`~percepkit.runtime.files.append_text`)."""
        append_text(self.path, _csv_line([_fmt(row.get(k, "")) for k in self.header]))


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (they are about to be redone by a resumed run)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if len(kept) != len(rows):
        text = "".join(_csv_line(r) for r in kept)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def open_tensorboard(folder: Path, wanted: bool | None = None) -> Any:
    """A TensorBoard SummaryWriter, or None. ``wanted``: True requires the tensorboard package
    (the optional extra ``percepkit[tensorboard]``; one paragraph if it is missing), None uses
    it when it is installed, False never."""
    if wanted is False:
        return None
    if wanted:
        require_tensorboard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # not installed (it is optional)
        return None
    return SummaryWriter(str(folder))


def require_tensorboard() -> None:
    """Raise :class:`~percepkit.errors.MissingExtraError` unless TensorBoard can be written."""
    from ..runtime.extras import import_optional

    import_optional("tensorboard", "train.tensorboard: true (TensorBoard logs)")
    import_optional("torch.utils.tensorboard", "train.tensorboard: true (TensorBoard logs)")


# -- one run directory --------------------------------------------------------------------------
class RunDir:
    """The files of one run directory (only rank 0 writes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS

    def best_checkpoint(self) -> Path | None:
        """``checkpoints/best.safetensors`` if it exists."""
        best = self.checkpoints / BEST
        return best if best.is_file() else None

    def sample_path(self, step: int) -> Path:
        """Where the preview grid of ``step`` goes."""
        return self.path / SAMPLES / f"step_{step:08d}.png"

    def prepare(self, step: int, resumed: bool, recipe_yaml: str, session: Mapping[str, Any],
                console: Console) -> None:
        """Create the layout; on resume set aside checkpoints and log rows newer than ``step``.

        Writes ``recipe.yaml`` and appends ``session`` to ``run.json``.
        """
        run = self.path
        make_folder(self.checkpoints)
        make_folder(run / SAMPLES)
        for tmp in self.checkpoints.glob(".*.tmp"):  # left by a save that was killed
            tmp.unlink(missing_ok=True)
        if resumed:
            newer = [p for st, p in find_checkpoints(run) if st > step]
            if newer:
                aside = self.checkpoints / f"superseded-{_dt.datetime.now():%Y%m%d-%H%M%S}"
                aside.mkdir()
                for p in newer:
                    p.rename(aside / p.name)
                console.print(f"note: moved {len(newer)} checkpoint(s) newer than step "
                              f"{step} to {escape(str(aside))}", soft_wrap=True)
            _truncate_csv(run / "log.csv", step)
            _truncate_csv(run / "val.csv", step)
        atomic_write(run / "recipe.yaml", lambda f: f.write(recipe_yaml.encode()))
        info_path = run / "run.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"sessions": []}
        info["sessions"].append(dict(session))
        atomic_write(info_path, lambda f: f.write(json.dumps(info, indent=2).encode()))

    def open_logs(self, log_header: list[str], val_header: list[str],
                  tensorboard: bool | None = None) -> tuple[CSVLog, CSVLog, Any]:
        """``(log.csv, val.csv, TensorBoard writer or None)`` (see :func:`open_tensorboard`)."""
        return (CSVLog(self.path / "log.csv", log_header),
                CSVLog(self.path / "val.csv", val_header),
                open_tensorboard(self.path / "tensorboard", tensorboard))

    def save(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any], best: bool,
             keep_last: int) -> tuple[Path, Path | None]:
        """Write the step checkpoint (and best.safetensors); keep the newest ``keep_last``.

        Returns ``(step checkpoint, best checkpoint or None)``.
        """
        last = save_checkpoint(self.checkpoints / step_name(step), state, meta)
        best_path = save_checkpoint(self.checkpoints / BEST, state, meta) if best else None
        if keep_last > 0:
            for _, old in find_checkpoints(self.path)[keep_last:]:
                old.unlink(missing_ok=True)
        return last, best_path
