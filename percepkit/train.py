"""Training: the loop, the run directory and exact resume, for SR and style recipes.

One :class:`Trainer` runs one recipe into one *run directory*::

    runs/<recipe>-<YYYYmmdd-HHMMSS>/
      recipe.yaml        the resolved recipe (after --set overrides)
      run.json           one entry per session: command, versions, device, start step
      log.csv            step, lr, loss and every weighted loss term, speed (every log_every)
      val.csv            validation metrics (every val_every)
      samples/           step_XXXXXXXX.png preview grids (every sample_every)
      checkpoints/       step_XXXXXXXX.safetensors (the last keep_last) and best.safetensors
      tensorboard/       if the tensorboard package is installed

Checkpoints are safetensors (no pickle) holding the model, optimiser, scheduler, AMP scaler,
EMA weights and every RNG state, plus metadata (recipe text, transform spec, step, versions);
they are written atomically, so a run killed at any moment resumes from the newest intact one.
Data order and augmentation depend only on (seed, epoch, index) (see
:class:`percepkit.datasets.TrainSampler`), so on CPU a resumed run reproduces the losses of an
uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import json
import math
import os
import platform
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from . import __version__
from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .devices import resolve_device
from .errors import CheckpointError, PercepkitError, RecipeError
from .recipe import Recipe, expand_path
from .registry import DATASETS

__all__ = [
    "NonFiniteLossError", "ResumePoint", "TrainResult", "Trainer", "TrainingInterrupted",
    "find_checkpoints", "latest_intact_checkpoint", "resolve_resume", "train",
]

CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"
LATEST = "latest"
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


class NonFiniteLossError(PercepkitError):
    """The loss became NaN or infinite; training stopped without saving that step."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (``checkpoint`` attribute)."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a training session did."""

    run_dir: Path
    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    val: dict[str, float] = field(default_factory=dict)

    def images_per_second(self, batch: int, skip: int = 0) -> float:
        """Throughput over this session's steps after the first ``skip`` (warm-up)."""
        t = self.step_times[skip:]
        return batch * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


# -- run directories and resume points -----------------------------------------------------------
def _step_name(step: int) -> str:
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
                console.print(f"[yellow]warning:[/] {msg}", highlight=False)
            else:
                warnings.warn(msg, stacklevel=2)
            continue
        return path
    return None


def _is_run_dir(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() or (path / CHECKPOINTS).is_dir()


def latest_run(recipe_name: str, runs_root: str | Path = "runs") -> Path | None:
    """The most recent ``runs/<recipe_name>-*`` run directory, if any."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    runs = [p for p in root.glob(f"{glob_escape(recipe_name)}-*") if p.is_dir() and _is_run_dir(p)]
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
        if not run_dir.is_dir() or not _is_run_dir(run_dir):
            raise PercepkitError(f"--resume: {run_dir} is not a percepkit run directory (no "
                                 f"recipe.yaml or {CHECKPOINTS}/ inside)")
        return ResumePoint(latest_intact_checkpoint(run_dir, console), run_dir)
    path = Path(value).expanduser()
    if path.is_dir():
        if not _is_run_dir(path):
            raise PercepkitError(f"--resume {path}: not a percepkit run directory (no recipe.yaml "
                                 f"or {CHECKPOINTS}/ inside) and not a checkpoint file")
        if out is not None and Path(out).resolve() != path.resolve():
            raise PercepkitError(f"--resume {path} continues in that run directory; drop --out "
                                 f"{out}, or resume from a checkpoint file to branch into --out")
        return ResumePoint(latest_intact_checkpoint(path, console), path)
    if not path.exists():
        raise PercepkitError(f"--resume {path}: no such run directory or checkpoint file")
    load_checkpoint(path, tensors=False)  # CheckpointError for foreign/truncated files
    parent = path.parent.parent
    if out is not None:
        run_dir = Path(out)
    elif path.parent.name == CHECKPOINTS and (parent / "recipe.yaml").is_file():
        run_dir = parent
    else:
        name = recipe_name or str(read_meta(path).get("recipe_name") or "run")
        run_dir = default_run_dir(name, runs_root)
    return ResumePoint(path, run_dir)


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata (cheap)."""
    return load_checkpoint(path, tensors=False)[1]


def recipe_text_for_resume(point: ResumePoint) -> tuple[str, str]:
    """``(yaml text, source label)`` of the recipe a resumed run was trained with."""
    if point.checkpoint is not None:
        text = read_meta(point.checkpoint).get("recipe")
        if isinstance(text, str) and text.strip():
            return text, f"{point.checkpoint} (stored recipe)"
    path = point.run_dir / "recipe.yaml"
    if path.is_file():
        from .recipe import read_recipe_text

        return read_recipe_text(path), str(path)
    raise PercepkitError(f"{point.run_dir}: cannot find the run's recipe (no recipe.yaml and no "
                         f"checkpoint); pass the recipe file as well")


# -- small helpers --------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process (torch CPU, CUDA, NumPy, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s result."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(cuda))


def _init_weights(model: nn.Module, spec: str) -> None:
    """Copy the weights of a model name or checkpoint (``train.init``) into ``model``."""
    from .checkpoint import state_dict_mismatch
    from .zoo import load

    try:
        source = load(spec)
    except PercepkitError as e:
        raise RecipeError(f"train.init: {e}") from None
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as e:
        raise RecipeError(f"train.init: the weights of {spec} do not fit the recipe's transform "
                          f"({state_dict_mismatch(e)})") from None


def load_style_image(spec: str, size: int | None) -> torch.Tensor:
    """The style image (1, 3, H, W): a file (shorter side resized to ``size``) or ``synthetic[:N]``.

    ``synthetic:N`` is a procedural texture from :func:`percepkit.datasets.synthetic_image`
    (for tests and tiny recipes that must not depend on files).
    """
    from .datasets import _resize_short, synthetic_image

    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return synthetic_image(size or 256, seed)[None]
    from .images import read_image

    try:
        img = read_image(expand_path(spec))
    except PercepkitError as e:
        raise PercepkitError(f"data.style_image: {e} (recipe paths are relative to the current "
                             f"directory, {Path.cwd()})") from None
    return (_resize_short(img, size) if size else img)[None]


class EMA:
    """Exponential moving average of a module's parameters and buffers (``decay`` per step)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise RecipeError(f"train.ema: decay must be between 0 and 1, got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for e, v in zip(self.module.state_dict().values(), module.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(v.to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(v)


def _clean_dataloader_error(e: PercepkitError) -> PercepkitError:
    """A worker's PercepkitError without DataLoader's embedded traceback."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return type(e)(text)


def _stack_rows(rows: list[torch.Tensor], pad: int = 4) -> torch.Tensor:
    """Stack 3xHxW grids vertically (white padding to the widest)."""
    width = max(r.shape[-1] for r in rows)
    out = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    return torch.cat(out, dim=-2)


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
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, path)


class _CSVLog:
    """Append-only CSV file with a fixed header (written by rank 0 only)."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        if path.is_file() and path.stat().st_size:
            with path.open(newline="") as f:
                old = next(csv.reader(f), [])
            if old != header:  # e.g. a resumed run with other loss terms: keep the old log
                path.rename(path.with_name(f"{path.stem}.old{int(time.time())}{path.suffix}"))
        if not path.is_file() or not path.stat().st_size:
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(header)

    def write(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.header])


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _open_tensorboard(folder: Path) -> Any:
    """A TensorBoard SummaryWriter if the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed (it is optional)
        return None
    return SummaryWriter(str(folder))


# -- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Trains ``recipe``'s transform network; see the module docstring for the run directory.

    ``resume`` is a :class:`ResumePoint`, a run directory or checkpoint path, or ``"latest"``.
    ``progress`` shows a rich progress bar (default: when the console is a terminal);
    ``handle_signals`` makes SIGINT/SIGTERM stop after the current step with a checkpoint.
    """

    def __init__(self, recipe: Recipe, out: str | Path | None = None,
                 resume: ResumePoint | str | Path | None = None, console: Console | None = None,
                 progress: bool | None = None, handle_signals: bool = False,
                 runs_root: str | Path = "runs") -> None:
        self.recipe = recipe
        self.settings = recipe.train
        self.ckpt_settings = recipe.checkpoint
        self.out = Path(out) if out is not None else None
        self.resume = resume
        self.runs_root = Path(runs_root)
        self.env = D.env_info()
        self.console = console if console is not None else Console(highlight=False)
        if not self.env.is_main:
            self.console = Console(quiet=True)
        self.show_progress = self.console.is_terminal if progress is None else progress
        self.handle_signals = handle_signals
        self.step = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.last_val: dict[str, float] = {}
        self._stop = False
        self._position: int | None = None
        self._dist_owned = False
        self._tb: Any = None
        self._old_handlers: dict[int, Any] = {}

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        s, recipe = self.settings, self.recipe
        if s.iterations < 1 or s.batch_size < 1:
            raise RecipeError("train: iterations and batch_size must be positive")
        if not recipe.data.train:
            raise RecipeError("data.train: a training dataset is needed to train (e.g. "
                              "{name: sr_patches, root: DIR} or {name: image_folder, root: DIR})")
        self.device = resolve_device(s.device, self.env.local_rank)
        self._dist_owned = self.env.enabled and not torch.distributed.is_initialized()
        self.dist = D.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.cuda = self.device.type == "cuda"
        self.amp = bool(s.amp) and self.cuda
        self.amp_dtype = torch.bfloat16 if s.amp_dtype == "bfloat16" else torch.float16
        if self.cuda:
            torch.backends.cudnn.benchmark = not s.deterministic
        if s.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        point = self._resume_point()
        self.run_dir = point.run_dir if point else (self.out or D.broadcast_object(
            default_run_dir(recipe.name, self.runs_root) if self.dist.is_main else None))
        if point is None and self.dist.is_main and self.run_dir.exists() \
                and _is_run_dir(self.run_dir):
            raise PercepkitError(f"--out {self.run_dir} already holds a run; continue it with "
                                 f"--resume {self.run_dir}, or choose another --out")

        seed_everything(s.seed)
        try:
            model = recipe.build_transform()
        except ValueError as e:
            raise RecipeError(f"transform: {e}") from None
        task = getattr(model, "task", recipe.task)
        if task != recipe.task:
            raise RecipeError(f"task: the recipe says {recipe.task!r} but transform "
                              f"{self._transform_spec()['name']!r} is a {task!r} network")
        if s.init is not None and point is None:  # a resumed run has its own weights
            _init_weights(model, s.init)
        self.loss = recipe.build_loss().to(self.device)
        self.module = model.to(self.device)
        self.channels_last = bool(s.channels_last) and self.cuda
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self.loss.to(memory_format=torch.channels_last)
        self.optimizer = recipe.build_optimizer(self.module.parameters())
        self.scheduler = recipe.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp and self.amp_dtype == torch.float16)
        self.ema = EMA(self.module, s.ema) if s.ema else None

        self.dataset = DATASETS.build(recipe.data.train, where="data.train")
        self._check_dataset()
        if recipe.task == "style":
            style = load_style_image(recipe.data.style_image, recipe.data.style_size)
            self.loss.set_style(style.to(self.device))
            self.style_image = style[0]
        self._build_validation()

        restored = False
        self.start_step = 0
        if point is not None and point.checkpoint is not None:
            restored = self._load(point.checkpoint)
        if not restored:
            seed_everything(s.seed + 1000003 * self.dist.rank)
        self.start_step = self.step
        self.start_position = self._position if self._position is not None \
            else self.step * s.batch_size

        self.train_model: nn.Module = self.module
        if self.dist.enabled:
            ids = [self.device.index] if self.cuda else None
            self.train_model = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        if s.compile:
            self.train_model = torch.compile(self.train_model)

        self._build_loader()
        if self.dist.is_main:
            self._prepare_run_dir(point)
        D.barrier()

    def _resume_point(self) -> ResumePoint | None:
        if self.resume is None:
            return None
        if isinstance(self.resume, ResumePoint):
            return self.resume
        return resolve_resume(self.resume, self.out, self.recipe.name, self.runs_root,
                              self.console)

    def _transform_spec(self) -> dict[str, Any]:
        spec = self.recipe.raw["transform"]
        return {"name": spec} if isinstance(spec, str) else dict(spec)

    def _check_dataset(self) -> None:
        item = self.dataset[(0, 0)]
        name = self.recipe.data.train.get("name")
        if self.recipe.task == "sr":
            if not {"lr", "hr"} <= set(item):
                raise RecipeError(f"data.train: the sr task needs a dataset yielding 'lr' and 'hr' "
                                  f"(e.g. sr_patches), but {name} yields {sorted(item)}")
            scale = getattr(self.module, "scale", None)
            if scale and item["hr"].shape[-1] != item["lr"].shape[-1] * scale:
                raise RecipeError(f"data.train: {name} gives LR {tuple(item['lr'].shape[-2:])} "
                                  f"for HR {tuple(item['hr'].shape[-2:])}, but the transform "
                                  f"upscales x{scale}; make data.train.scale match")
        elif "image" not in item:
            raise RecipeError(f"data.train: the style task needs a dataset yielding 'image' (e.g. "
                              f"image_folder), but {name} yields {sorted(item)}")

    def _build_validation(self) -> None:
        """Fixed images for validation and preview grids (loaded once)."""
        s, data = self.settings, self.recipe.data
        n_preview = max(1, s.sample_images)
        self.preview = [self.dataset[(i % len(self.dataset), 7919 + i)]
                        for i in range(min(n_preview, len(self.dataset)))]
        self.val_items: list[dict[str, torch.Tensor]] = []
        self.has_val = bool(data.val) or self.recipe.task == "style"  # same on every rank
        self.val_metric = "psnr" if self.recipe.task == "sr" else "loss"
        self.higher_is_better = self.recipe.task == "sr"
        if not self.dist.is_main:
            return
        if data.val:
            val = DATASETS.build(data.val, where="data.val")
            limit = len(val) if s.val_images is None else min(len(val), s.val_images)
            for i in range(limit):
                item = val[i]
                if hasattr(item, "hr"):  # an SR benchmark Sample
                    item = {"lr": item.lr, "hr": item.hr, "name": item.name}
                self.val_items.append(item)
        elif self.recipe.task == "style":
            self.val_items = [dict(p) for p in self.preview]
        if self.val_items:
            key = "lr" if self.recipe.task == "sr" else "image"
            if key not in self.val_items[0]:
                raise RecipeError(f"data.val: the {self.recipe.task} task needs validation items "
                                  f"with {key!r}, but {data.val.get('name')} yields "
                                  f"{sorted(self.val_items[0])}")

    def _build_loader(self) -> None:
        from torch.utils.data import DataLoader

        from .datasets import TrainSampler

        s = self.settings
        self.sampler = TrainSampler(len(self.dataset), seed=s.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size,
                                    start=self.start_position)
        workers = max(0, int(s.workers))
        self.loader = DataLoader(
            self.dataset, batch_size=s.batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=self.cuda, drop_last=False,
            generator=torch.Generator().manual_seed(s.seed),  # never touch the global RNG
            prefetch_factor=4 if workers else None, persistent_workers=False)

    def _prepare_run_dir(self, point: ResumePoint | None) -> None:
        run = self.run_dir
        (run / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        (run / "samples").mkdir(exist_ok=True)
        for tmp in (run / CHECKPOINTS).glob(".*.tmp"):  # left by a save that was killed
            tmp.unlink(missing_ok=True)
        if point is not None:
            newer = [p for st, p in find_checkpoints(run) if st > self.step]
            if newer:
                aside = run / CHECKPOINTS / f"superseded-{_dt.datetime.now():%Y%m%d-%H%M%S}"
                aside.mkdir()
                for p in newer:
                    p.rename(aside / p.name)
                self.console.print(f"note: moved {len(newer)} checkpoint(s) newer than step "
                                   f"{self.step} to {aside}")
            _truncate_csv(run / "log.csv", self.step)
            _truncate_csv(run / "val.csv", self.step)
        (run / "recipe.yaml").write_text(self.recipe.to_yaml())
        info_path = run / "run.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"sessions": []}
        info["sessions"].append({
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "argv": sys.argv, "start_step": self.step, "iterations": self.settings.iterations,
            "resumed_from": str(point.checkpoint) if point and point.checkpoint else None,
            "device": str(self.device), "world_size": self.dist.world_size, "amp": self.amp,
            "percepkit": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node(),
        })
        info_path.write_text(json.dumps(info, indent=2))
        terms = list(self.loss.terms.keys())
        self.log_csv = _CSVLog(run / "log.csv", ["step", "epoch", "lr", "loss", *terms,
                                                 "sec_per_step", "images_per_sec", "elapsed_sec"])
        val_cols = ["psnr", "ssim"] if self.recipe.task == "sr" else ["loss", *terms]
        self.val_csv = _CSVLog(run / "val.csv", ["step", *val_cols])
        self._tb = _open_tensorboard(run / "tensorboard")

    # -- checkpoints ---------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        s = self.settings
        return {
            "task": self.recipe.task, "transform": self._transform_spec(),
            "recipe": self.recipe.to_yaml(), "recipe_name": self.recipe.name,
            "step": self.step, "iterations": s.iterations, "batch_size": s.batch_size,
            "world_size": self.dist.world_size, "seed": s.seed,
            "samples_per_rank": self._position_now(),
            "best": {"metric": self.val_metric, "value": self.best,
                     "step": self.best_step},
            "val": self.last_val, "percepkit_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "device": str(self.device), "amp": self.amp,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        }

    def _position_now(self) -> int:
        """How many training keys this process has consumed so far."""
        return self.start_position + (self.step - self.start_step) * self.settings.batch_size

    def _state(self) -> dict[str, Any]:
        states = D.gather_objects(rng_state())
        state: dict[str, Any] = {
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {f"rank{r}": st for r, st in enumerate(states)},
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def _save(self, best: bool) -> None:
        """Write the step checkpoint (and best.safetensors); prune old ones. All ranks call."""
        state = self._state()
        if self.dist.is_main:
            meta = self._metadata()
            folder = self.run_dir / CHECKPOINTS
            self.last_checkpoint = save_checkpoint(folder / _step_name(self.step), state, meta)
            if best:
                self.best_checkpoint = save_checkpoint(folder / BEST, state, meta)
            keep = self.ckpt_settings.keep_last
            if keep > 0:
                for _, old in find_checkpoints(self.run_dir)[keep:]:
                    old.unlink(missing_ok=True)
        D.barrier()

    def _load(self, path: Path) -> bool:
        """Restore everything from a checkpoint; returns whether RNG states were restored."""
        state, meta = load_checkpoint(path)
        if meta.get("task") not in (None, self.recipe.task):
            raise CheckpointError(f"{path}: a {meta.get('task')!r} checkpoint, but the recipe is "
                                  f"a {self.recipe.task!r} recipe")
        if "model" not in state:
            raise CheckpointError(f"{path}: checkpoint holds no model weights")
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: its weights do not fit the recipe's transform "
                                  f"{self._transform_spec()} (stored: {meta.get('transform')}): "
                                  f"{str(e).splitlines()[0]}") from None
        try:
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimiser/scheduler state does not fit the recipe's "
                                  f"optimizer ({type(e).__name__}: {e}); resume with the recipe it "
                                  f"was trained with") from None
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state.get("ema") or state["model"])
        self.step = int(meta.get("step", 0))
        best = meta.get("best") or {}
        self.best, self.best_step = best.get("value"), best.get("step")
        best_file = self.run_dir / CHECKPOINTS / BEST
        self.best_checkpoint = best_file if best_file.is_file() else None
        self.last_checkpoint = path
        s = self.settings
        same_layout = (meta.get("world_size") == self.dist.world_size
                       and meta.get("batch_size") == s.batch_size)
        if same_layout:
            self._position = int(meta.get("samples_per_rank", self.step * s.batch_size))
        else:
            consumed = int(meta.get("samples_per_rank", 0)) * int(meta.get("world_size") or 1)
            self._position = consumed // self.dist.world_size
            self.console.print(
                f"[yellow]note:[/] the checkpoint was trained with {meta.get('world_size')} "
                f"process(es) x batch {meta.get('batch_size')}; now {self.dist.world_size} x "
                f"{s.batch_size}: resuming at the same point in the data, but not bit-exactly")
        rng = (state.get("rng") or {}).get(f"rank{self.dist.rank}")
        if rng is None:
            return False
        set_rng_state(rng)
        return True

    # -- the loop ------------------------------------------------------------------------------
    def _batch(self, it: Any) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = next(it)
        except PercepkitError as e:
            raise _clean_dataloader_error(e) from None
        if self.recipe.task == "sr":
            x, y = batch["lr"], batch["hr"]
        else:
            x = y = batch["image"]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, non_blocking=True, memory_format=fmt)
        if self.recipe.task != "sr":
            return x, x
        return x, y.to(self.device, non_blocking=True, memory_format=fmt)

    def _autocast(self) -> Any:
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, it: Any) -> list[float]:
        """One optimisation step; returns [total, *terms] averaged over processes."""
        x, y = self._batch(it)
        with self._autocast():
            out = self.train_model(x)
            total, parts = self.loss(out, y)
        values = torch.stack([total.detach().float(), *(p.float() for p in parts.values()),
                              torch.tensor(float(self._stop), device=total.device)])
        D.all_reduce_mean(values)
        vals = values.tolist()
        self._stop = vals[-1] > 0
        if not all(math.isfinite(v) for v in vals[:-1]):
            self._diverged(vals)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)
        return vals[:-1]

    def _diverged(self, vals: list[float]) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.loss.terms.keys(), vals[1:]))
        last = (f"the last good checkpoint is {self.last_checkpoint} (resume with --resume "
                f"{self.run_dir})" if self.last_checkpoint else "no checkpoint had been saved yet")
        kind = "NaN" if any(math.isnan(v) for v in vals) else "infinite"
        hint = "; with AMP, also try --no-amp" if self.amp else ""
        raise NonFiniteLossError(
            f"the loss became {kind} at step {self.step + 1} ({terms}); training stopped without "
            f"saving that step, and {last}. Lower optimizer.lr or set train.grad_clip{hint}.")

    def run(self) -> TrainResult:
        """Train to ``train.iterations`` (or until interrupted); returns what happened."""
        try:
            self._setup()
            return self._loop()
        finally:
            self._close()

    def _loop(self) -> TrainResult:
        s, ck = self.settings, self.ckpt_settings
        result = TrainResult(self.run_dir, self.start_step, self.step)
        self._announce()
        if self.step >= s.iterations:
            self.console.print(f"nothing to do: the run is at step {self.step} of "
                               f"{s.iterations}; raise train.iterations (--set "
                               f"train.iterations=N) to train longer")
            return self._result(result)
        if self.handle_signals:
            self._install_signals()
        terms = list(self.loss.terms.keys())
        window: list[list[float]] = []
        t_log = time.perf_counter()
        t_start = t_log
        steps_at_log = self.step
        progress, task = self._progress()
        it = iter(self.loader)
        try:
            self.module.train()
            while self.step < s.iterations:
                vals = self._train_step(it)
                self.step += 1
                now = time.perf_counter()
                result.losses.append(vals[0])
                result.step_times.append(now)
                window.append(vals)
                if progress is not None:
                    shown = "  ".join(f"{k} {v:.4g}" for k, v in zip(["loss", *terms], vals))
                    progress.update(task, completed=self.step, losses=shown)
                final = self.step == s.iterations
                if self.step % max(1, s.log_every) == 0 or final or self._stop:
                    self._log(window, now - t_log, self.step - steps_at_log, now - t_start)
                    window, t_log, steps_at_log = [], now, self.step
                improved = False
                if (self.step % max(1, s.val_every) == 0 or final) and self.has_val:
                    improved = D.broadcast_object(self._validate())
                if self.step % max(1, s.sample_every) == 0 or final:
                    self._samples()
                if self.step % max(1, ck.every) == 0 or final or self._stop or improved:
                    self._save(best=improved and ck.keep_best)
                if self._stop and not final:
                    raise TrainingInterrupted(
                        f"stopped at step {self.step} of {s.iterations}; checkpoint saved to "
                        f"{self.last_checkpoint}. Continue with: percepkit train --resume "
                        f"{self.run_dir}", self.last_checkpoint)
        finally:
            if progress is not None:
                progress.stop()
            del it
        return self._result(result)

    def _result(self, result: TrainResult) -> TrainResult:
        result.step = self.step
        result.last_checkpoint = self.last_checkpoint
        result.best_checkpoint = self.best_checkpoint
        result.best_metric = self.best
        result.val = dict(self.last_val)
        return result

    def _close(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._dist_owned:
            D.cleanup()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop:
                signal.signal(signum, self._old_handlers.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            self._stop = True
            self.console.print(f"\n{signal.Signals(signum).name}: stopping after this step and "
                               f"saving a checkpoint (send it again to abort at once)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    # -- reporting -----------------------------------------------------------------------------
    def _announce(self) -> None:
        s = self.settings
        n_params = sum(p.numel() for p in self.module.parameters())
        amp = f"AMP {s.amp_dtype}" if self.amp else ("AMP off (CUDA only)" if s.amp else "AMP off")
        where = f"resuming at step {self.step}" if self.step else "starting"
        world = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        self.console.print(
            f"[bold]{self.recipe.name}[/] ({self.recipe.task}): {where}, {s.iterations} steps, "
            f"batch {s.batch_size}{world}, {len(self.dataset)} training images, "
            f"{n_params / 1e6:.2f}M parameters, device {self.device}, {amp}"
            f"{', channels_last' if self.channels_last else ''}"
            f"{', compiled' if s.compile else ''}\nrun directory: {self.run_dir}", soft_wrap=True)
        if self.recipe.task == "sr" and self.val_items and self.step == 0:
            from .transforms import Bicubic

            base = self._sr_metrics(Bicubic(self.module.scale))
            self.console.print(f"validation baseline (bicubic): PSNR {base['psnr']:.2f} dB, "
                               f"SSIM {base['ssim']:.4f} on {len(self.val_items)} image(s)")

    def _progress(self) -> tuple[Any, Any]:
        if not (self.show_progress and self.dist.is_main):
            return None, None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"), TextColumn("[cyan]{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False)
        task = progress.add_task("train", total=self.settings.iterations, completed=self.step,
                                 losses="", speed="")
        progress.start()
        self._progress_bar = (progress, task)
        return progress, task

    def _log(self, window: list[list[float]], seconds: float, steps: int, elapsed: float) -> None:
        if not window or not self.dist.is_main:
            return
        terms = list(self.loss.terms.keys())
        mean = np.mean(np.array(window), axis=0).tolist()
        sec = seconds / max(1, steps)
        ips = self.settings.batch_size * self.dist.world_size / sec if sec > 0 else float("nan")
        lr = self.optimizer.param_groups[0]["lr"]
        epoch = self._position_now() / max(1, self.sampler.per_rank)
        row = {"step": self.step, "epoch": round(epoch, 4), "lr": float(lr), "loss": mean[0],
               **dict(zip(terms, mean[1:])), "sec_per_step": sec, "images_per_sec": ips,
               "elapsed_sec": elapsed}
        self.log_csv.write(row)
        if self._tb is not None:
            for k in ("loss", *terms, "lr", "images_per_sec"):
                self._tb.add_scalar(f"train/{k}", row[k], self.step)
        parts = "  ".join(f"{k} {v:.4g}" for k, v in zip(terms, mean[1:]))
        bar = getattr(self, "_progress_bar", None)
        if bar is not None:
            bar[0].update(bar[1], speed=f"{1 / sec:.2f} it/s  {ips:.1f} img/s")
        self.console.print(f"step {self.step}/{self.settings.iterations}  loss {mean[0]:.4g}  "
                           f"({parts})  lr {lr:.3g}  {1 / sec:.2f} it/s  {ips:.1f} img/s",
                           soft_wrap=True)

    # -- validation and previews -----------------------------------------------------------------
    def _eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.module

    @torch.no_grad()
    def _sr_metrics(self, model: nn.Module) -> dict[str, float]:
        """Mean PSNR/SSIM (Y, border = scale) exactly as ``percepkit eval`` computes them."""
        from .evaluate import run_transform
        from .metrics import psnr, ssim

        scale = int(getattr(self.module, "scale", 1))
        p_fn, s_fn = psnr(crop_border=scale), ssim(crop_border=scale)
        ps, ss = [], []
        for item in self.val_items:
            out = run_transform(model, item["lr"], self.device)[None]
            hr = item["hr"][None]
            ps.append(float(p_fn(out, hr)[0]))
            ss.append(float(s_fn(out, hr)[0]))
        return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}

    @torch.no_grad()
    def _style_metrics(self, model: nn.Module) -> dict[str, float]:
        totals: list[list[float]] = []
        for item in self.val_items:
            x = item["image"][None].to(self.device)
            total, parts = self.loss(model(x), x)
            totals.append([float(total), *(float(v) for v in parts.values())])
        mean = np.mean(np.array(totals), axis=0).tolist()
        return {"loss": mean[0], **dict(zip(self.loss.terms.keys(), mean[1:]))}

    def _validate(self) -> bool:
        """Validate on rank 0; returns whether the metric improved on the best so far."""
        if not self.dist.is_main:
            return False
        model = self._eval_module()
        was_training = model.training
        model.eval()
        try:
            metrics = self._sr_metrics(model) if self.recipe.task == "sr" else \
                self._style_metrics(model)
        finally:
            model.train(was_training)
        self.last_val = metrics
        self.val_csv.write({"step": self.step, **metrics})
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"val/{k}", v, self.step)
        value = metrics[self.val_metric]
        better = self.best is None or (value > self.best if self.higher_is_better
                                       else value < self.best)
        if better and math.isfinite(value):
            self.best, self.best_step = value, self.step
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        mark = " (best)" if better else ""
        self.console.print(f"validation at step {self.step}: {text}{mark}", soft_wrap=True)
        return bool(better)

    @torch.no_grad()
    def _samples(self) -> None:
        """Write ``samples/step_XXXXXXXX.png``: inputs, outputs (and targets) of fixed images."""
        if not self.dist.is_main:
            return
        from .images import image_grid, write_image

        model = self._eval_module()
        was_training = model.training
        model.eval()
        rows = []
        try:
            if self.recipe.task == "sr":
                from .transforms import Bicubic

                bicubic = Bicubic(self.module.scale)
                for i, item in enumerate(self.preview):
                    lr = item["lr"][None]
                    out = model(lr.to(self.device)).float().cpu().clamp(0, 1)[0]
                    labels = ["bicubic", f"step {self.step}", "target"] if i == 0 else None
                    rows.append(image_grid([bicubic(lr)[0].clamp(0, 1), out, item["hr"]], labels))
            else:
                items = self.val_items or self.preview
                outs = [model(it["image"][None].to(self.device)).float().cpu().clamp(0, 1)[0]
                        for it in items]
                style = self.style_image
                h = items[0]["image"].shape[-2]
                rows.append(image_grid([it["image"] for it in items] + [style],
                                       ["content"] * len(items) + ["style"], height=h))
                rows.append(image_grid(outs, [f"step {self.step}"] * len(outs), height=h))
        finally:
            model.train(was_training)
        grid = _stack_rows(rows)
        write_image(self.run_dir / "samples" / f"step_{self.step:08d}.png", grid)
        if self._tb is not None:
            self._tb.add_image("samples", grid, self.step)


def train(recipe: Recipe, **kwargs: Any) -> TrainResult:
    """Train ``recipe`` (keyword arguments as :class:`Trainer`)."""
    return Trainer(recipe, **kwargs).run()
