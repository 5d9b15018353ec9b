"""Training: the loop, task objects, the run directory and exact resume.

One :class:`Trainer` runs one recipe into one run directory (layout in :mod:`.rundir`):

- :mod:`.loop` — the :class:`Trainer` (AMP, DDP, EMA, compile, NaN checks, LR schedule);
- :mod:`.tasks` — the tasks registered in :data:`percepkit.registry.TASKS` (sr, style,
  plugins): what differs between them;
- :mod:`.rundir` — files, step/best checkpoints, pruning, resume points, logs;
- :mod:`.state` — the restorable state (model, optimiser, scheduler, scaler, EMA, RNG);
- :mod:`.data` — the training loader, preview and validation items;
- :mod:`.report` — console lines, progress bar, ``log.csv``/``val.csv``, TensorBoard;
- :mod:`.signals` — SIGINT/SIGTERM/SIGHUP: stop after the step with a checkpoint;
- :mod:`.lock` — ``train.lock``: one run per run directory.

Checkpoints are safetensors (no pickle) holding the model, optimiser, scheduler, AMP scaler,
EMA weights and every RNG state, plus metadata (recipe text, transform spec, step, versions);
what they hold is defined in :mod:`percepkit.models.checkpoint`. They are written atomically, so a
run killed at any moment resumes from the newest intact one.
"""

from __future__ import annotations

from ..runtime.devices import resolve_device
from .lock import RunLock
from .loop import NonFiniteLossError, Trainer, TrainingInterrupted, TrainResult, train
from .rundir import (
    BEST,
    CHECKPOINTS,
    LATEST,
    ResumePoint,
    default_run_dir,
    find_checkpoints,
    glob_escape,
    latest_intact_checkpoint,
    latest_run,
    recipe_text_for_resume,
    resolve_resume,
)
from .signals import TrainingAborted
from .state import EMA, rng_state, seed_everything, set_rng_state
from .tasks import TASKS, SRTask, StyleTask, Task, load_style_image

__all__ = [
    "BEST", "CHECKPOINTS", "EMA", "LATEST", "TASKS", "NonFiniteLossError", "ResumePoint",
    "RunLock", "SRTask", "StyleTask", "Task", "TrainResult", "Trainer", "TrainingAborted",
    "TrainingInterrupted",
    "default_run_dir", "find_checkpoints", "glob_escape", "latest_intact_checkpoint",
    "latest_run", "load_style_image", "recipe_text_for_resume", "resolve_device",
    "resolve_resume", "rng_state", "seed_everything", "set_rng_state", "train",
]
