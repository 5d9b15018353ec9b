"""The training loop: one :class:`Trainer` runs one recipe into one run directory.

The loop owns AMP, DDP, EMA, ``torch.compile``, NaN checks, the LR schedule and exact resume;
what differs between tasks is a :class:`~percepkit.train.tasks.Task`, the files are a
:class:`~percepkit.train.rundir.RunDir`, and what a checkpoint holds is defined in
:mod:`percepkit.models.checkpoint`. Data order and augmentation depend only on (seed, epoch, index)
(see :class:`percepkit.data.datasets.TrainSampler`), so on CPU a resumed run reproduces the losses
of an uninterrupted one exactly.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from ..errors import CheckpointError, PercepkitError, RecipeError, WriteError
from ..models.checkpoint import Checkpoint, training_metadata
from ..recipes.recipe import Recipe
from ..registry import DATASETS
from ..runtime.console import user_console
from ..runtime.devices import resolve_device
from ..runtime.files import is_write_error, write_error
from ..runtime.precision import resolve_precision
from . import distributed as D
from .adversarial import make_adversary
from .data import preview_items, resume_position, training_loader, validation_items
from .lock import RunLock
from .memory_check import check_data_memory, check_training_memory
from .report import Reporter
from .rundir import (
    ResumePoint,
    RunDir,
    default_run_dir,
    is_run_dir,
    require_tensorboard,
    resolve_resume,
    session_entry,
)
from .signals import StopSignals, TrainingAborted, signal_name, stop_signals_blocked
from .state import (
    EMA,
    init_weights,
    restore_training_state,
    rng_state,
    seed_everything,
    set_rng_state,
    training_state,
)
from .tasks import make_task


class NonFiniteLossError(PercepkitError):
    """The loss became NaN or infinite; training stopped without saving that step."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM/SIGHUP after saving a checkpoint (``checkpoint``);
    ``signum`` is the signal (see :mod:`.signals` for the exit status)."""

    def __init__(self, message: str, checkpoint: Path | None,
                 signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signum = signum


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
    best_metric: float | None = None  # the best validation value (of ``best_by``)
    best_by: str | None = None        # the metric that picks the best checkpoint
    best_step: int | None = None
    val: dict[str, float] = field(default_factory=dict)

    def images_per_second(self, batch: int, skip: int = 0) -> float:
        """Throughput over this session's steps after the first ``skip`` (warm-up)."""
        t = self.step_times[skip:]
        return batch * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def encode_flags(stop: bool, due: bool, world_size: int) -> float:
    """One process's (stop requested, time-based checkpoint due) as a number whose mean over
    ``world_size`` processes :func:`decode_flags` reads back: either flag set on any process."""
    return float(stop) + (world_size + 1) * float(due)  # more than world_size stop requests


def decode_flags(mean: float, world_size: int) -> tuple[bool, bool]:
    """``(stop, due)`` from the mean of :func:`encode_flags` over ``world_size`` processes."""
    due, stops = divmod(round(mean * world_size), world_size + 1)
    return stops > 0, due > 0


def _clean_dataloader_error(e: PercepkitError) -> PercepkitError:
    """A worker's PercepkitError without DataLoader's embedded traceback."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return type(e)(text)


class Trainer:
    """Trains ``recipe``'s transform network into a run directory (see :mod:`.rundir`).

    ``resume`` is a :class:`ResumePoint`, a run directory or checkpoint path, or ``"latest"``.
    ``progress`` shows a rich progress bar (default: when the console is a terminal);
    ``handle_signals`` makes SIGINT/SIGTERM/SIGHUP stop after the current step with a
    checkpoint (:mod:`.signals`). The run directory is locked while the run trains (:mod:`.lock`).
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
        self.console = console if console is not None else user_console()
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
        self._save_due = False
        self._saved_step: int | None = None
        self._elapsed_before = 0.0  # training seconds of earlier sessions (from the checkpoint)
        self._t_start = time.perf_counter()
        self.clock = time.monotonic  # for checkpoint.every_minutes
        self._t_saved = self.clock()
        self._signals = StopSignals(self._request_stop)
        self.lock: RunLock | None = None
        self._position: int | None = None
        self._dist_owned = False
        self.report = Reporter(self.console, self.env.is_main, self.show_progress,
                               self.settings.iterations)

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        s, recipe = self.settings, self.recipe
        if s.iterations < 1 or s.batch_size < 1:
            raise RecipeError("train: iterations and batch_size must be positive")
        if not recipe.data.train:
            raise RecipeError("data.train: a training dataset is needed to train (e.g. "
                              "{name: sr_patches, root: DIR} or {name: image_folder, root: DIR})")
        if s.tensorboard:  # before anything is built or written
            require_tensorboard()
        self.device = resolve_device(s.device, self.env.local_rank)
        self._dist_owned = self.env.enabled and not torch.distributed.is_initialized()
        self.dist = D.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(s.precision, self.device, "train.precision")
        if self.cuda:
            torch.backends.cudnn.benchmark = not s.deterministic
        if s.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.task = make_task(recipe, self.device)
        self.dataset = DATASETS.build(recipe.data.train, where="data.train")
        check_data_memory(recipe, self.dataset)  # before images of the recipe's sizes are made
        check_training_memory(recipe, self.dataset[(0, 0)], self.task, self.device)

        point = self._resume_point()
        self.run_dir = point.run_dir if point else (self.out or D.broadcast_object(
            default_run_dir(recipe.name, self.runs_root) if self.dist.is_main else None))
        self.run = RunDir(self.run_dir)
        if self.dist.is_main:
            self.lock = RunLock.acquire(self.run_dir, self.console)
        if point is None and self.dist.is_main and self.run_dir.exists() \
                and is_run_dir(self.run_dir):
            raise PercepkitError(f"--out {self.run_dir} already holds a run; continue it with "
                                 f"--resume {self.run_dir}, or choose another --out")

        seed_everything(s.seed)
        try:
            model = recipe.build_transform()
        except ValueError as e:
            raise RecipeError(f"transform: {e}") from None
        problem = self.task.network_problem(model)
        if problem:
            raise RecipeError(f"task: the recipe says {recipe.task!r} but transform "
                              f"{self._transform_spec()['name']!r} is {problem}")
        if s.init is not None and point is None:  # a resumed run has its own weights
            init_weights(model, s.init, recipe.task)
        self.loss = recipe.build_loss().to(self.device)
        self.module = model.to(self.device)
        # NHWC pays on CUDA and with the CPU's bf16 units (oneDNN's blocked bf16 kernels); fp32
        # on the CPU stays NCHW
        self.channels_last = bool(s.channels_last) and (self.cuda or self.precision.reduced)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self.loss.to(memory_format=torch.channels_last)
        self.optimizer = recipe.build_optimizer(self.module.parameters())
        self.scheduler = recipe.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.ema = EMA(self.module, s.ema) if s.ema else None
        self.adversary = make_adversary(recipe, self.loss, self.device, self._autocast,
                                        self.scaler.is_enabled(), self.channels_last)

        self.task.check_train_item(self.dataset[(0, 0)], recipe.data.train.get("name"),
                                   self.module)
        if self.adversary is not None:  # D takes the training targets' size
            self.adversary.check_target(self.task.unpack(self.dataset[(0, 0)])[1])
        self.task.setup(self.module, self.loss)
        self.preview = preview_items(self.dataset, max(1, s.sample_images))
        self.has_val = bool(recipe.data.val) or self.task.validates_on_previews  # on every rank
        self.val_items = validation_items(recipe, self.task, self.preview) \
            if self.dist.is_main else []

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
            if self.adversary is not None:
                self.adversary.distribute(ids)
        if s.compile:
            self.train_model = torch.compile(self.train_model)

        self.sampler, self.loader = training_loader(
            self.dataset, recipe, self.dist.rank, self.dist.world_size, self.start_position,
            pin_memory=self.cuda)
        if self.dist.is_main:
            session = session_entry(
                self.step, s.iterations, point.checkpoint if point else None, str(self.device),
                self.dist.world_size, self.precision.name)
            self.run.prepare(self.step, point is not None, recipe.to_yaml(), session,
                             self.console)
            terms = list(self.loss.terms.keys())
            self.report.open(self.run, self._columns(), self.task.val_columns(terms),
                             s.tensorboard)
        D.barrier()

    def _columns(self) -> list[str]:
        """The logged values after the total: each loss term, then the discriminator's."""
        extra = list(self.adversary.columns) if self.adversary is not None else []
        return [*self.loss.terms.keys(), *extra]

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

    # -- checkpoints ---------------------------------------------------------------------------
    def _position_now(self) -> int:
        """How many training keys this process has consumed so far."""
        return self.start_position + (self.step - self.start_step) * self.settings.batch_size

    def _save(self, best: bool) -> None:
        """Write the step checkpoint (and best.safetensors); prune old ones. All ranks call."""
        state = training_state(self.module, self.optimizer, self.scheduler, self.scaler,
                               self.ema, D.gather_objects(rng_state()))
        if self.adversary is not None:
            state.update(self.adversary.state())
        if self.dist.is_main:
            s = self.settings
            meta = training_metadata(
                task=self.recipe.task, transform=self._transform_spec(),
                recipe=self.recipe.to_yaml(), recipe_name=self.recipe.name, step=self.step,
                iterations=s.iterations, batch_size=s.batch_size,
                world_size=self.dist.world_size, seed=s.seed,
                samples_per_rank=self._position_now(), best_metric=self.task.metric,
                best_value=self.best, best_step=self.best_step, val=self.last_val,
                device=str(self.device), precision=self.precision.name)
            meta["elapsed_sec"] = round(self._elapsed(), 3)
            last, best_path = self.run.save(self.step, state, meta, best,
                                            self.ckpt_settings.keep_last)
            self.last_checkpoint = last
            self.best_checkpoint = best_path or self.best_checkpoint
        self._t_saved = self.clock()
        self._saved_step = self.step
        D.barrier()

    def _load(self, path: Path) -> bool:
        """Restore everything from a checkpoint; returns whether RNG states were restored."""
        ckpt = Checkpoint.read(path)
        if ckpt.task not in (None, self.recipe.task):
            raise CheckpointError(f"{path}: this checkpoint was trained for the {ckpt.task!r} "
                                  f"task, but the recipe is for the {self.recipe.task!r} task; "
                                  f"resume it with a {ckpt.task} recipe")
        restore_training_state(ckpt, self.module, self.optimizer, self.scheduler, self.scaler,
                               self.ema, self._transform_spec())
        if self.adversary is not None:
            self.adversary.load(ckpt)
        self.step = ckpt.step or 0
        self._elapsed_before = float(ckpt.meta.get("elapsed_sec") or 0.0)
        self.best, self.best_step = ckpt.best
        chosen_by = (ckpt.meta.get("best") or {}).get("metric")
        if chosen_by not in (None, self.task.metric):  # the recipe now selects by another
            self.best, self.best_step = None, None
            self.console.print(f"[yellow]note:[/] the best checkpoint so far was chosen by "
                               f"{chosen_by}; from now on by {self.task.metric}")
        self.best_checkpoint = self.run.best_checkpoint()
        self.last_checkpoint = path
        self._position, exact = resume_position(ckpt, self.dist.world_size,
                                                self.settings.batch_size)
        if not exact:
            self.console.print(
                f"[yellow]note:[/] the checkpoint was trained with {ckpt.world_size} "
                f"process(es) x batch {ckpt.batch_size}; now {self.dist.world_size} x "
                f"{self.settings.batch_size}: resuming at the same point in the data, but not "
                f"bit-exactly")
        rng = ckpt.rng(self.dist.rank)
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
        x, y = self.task.unpack(batch)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x_dev = x.to(self.device, non_blocking=True, memory_format=fmt)
        if y is x:
            return x_dev, x_dev
        return x_dev, y.to(self.device, non_blocking=True, memory_format=fmt)

    def _autocast(self) -> Any:
        return self.precision.autocast()

    def _train_step(self, it: Any) -> list[float]:
        """One optimisation step; returns [total, *terms] averaged over processes."""
        x, y = self._batch(it)
        self.task.before_step(self.step)
        if self.adversary is not None:
            self.adversary.prepare(self.step)
        with self._autocast():
            out = self.train_model(x)
            total, parts = self.loss(out, y)
        values = torch.stack([total.detach().float(), *(p.float() for p in parts.values()),
                              self._flags(total.device)])
        D.all_reduce_mean(values)
        vals = values.tolist()
        self._read_flags(vals.pop())
        if not all(math.isfinite(v) for v in vals):
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
        if self.adversary is not None:
            return vals + self._discriminator_step(y, out, vals)
        return vals

    def _flags(self, device: torch.device) -> torch.Tensor:
        """This process's stop request and time-based checkpoint due, as one number to average
        over processes (:func:`encode_flags`)."""
        minutes = self.ckpt_settings.every_minutes
        due = bool(minutes) and self.clock() - self._t_saved >= 60 * float(minutes)
        return torch.tensor(encode_flags(self._stop, due, self.dist.world_size), device=device)

    def _read_flags(self, mean: float) -> None:
        self._stop, self._save_due = decode_flags(mean, self.dist.world_size)

    def _request_stop(self, signum: int) -> None:
        """The first stop signal: stop after this step, with a checkpoint."""
        self._stop = True
        with suppress(OSError):  # the terminal is gone; the run directory says it all
            self.console.print(f"\n{signal_name(signum)}: stopping after this step and saving a "
                               f"checkpoint (send it again to abort at once)")

    def _elapsed(self) -> float:
        """Training seconds of this run so far, earlier sessions included."""
        return self._elapsed_before + time.perf_counter() - self._t_start

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor,
                            vals: list[float]) -> list[float]:
        """D's updates after the generator's (see :mod:`.adversarial`); its logged values."""
        d_vals = self.adversary.train_step(self.step, real, fake)
        D.all_reduce_mean(d_vals)
        out = d_vals.tolist()
        if self.adversary.active(self.step) and not all(math.isfinite(v) for v in out):
            self._diverged(vals + out)
        return out

    def _diverged(self, vals: list[float]) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(self._columns(), vals[1:]))
        last = (f"the last good checkpoint is {self.last_checkpoint} (resume with --resume "
                f"{self.run_dir})" if self.last_checkpoint else "no checkpoint had been saved yet")
        kind = "NaN" if any(math.isnan(v) for v in vals) else "infinite"
        hint = "; in reduced precision, also try --precision fp32" \
            if self.precision.reduced else ""
        raise NonFiniteLossError(
            f"the loss became {kind} at step {self.step + 1} ({terms}); training stopped without "
            f"saving that step, and {last}. Lower optimizer.lr or set train.grad_clip{hint}.")

    def run(self) -> TrainResult:
        """Train to ``train.iterations`` (or until interrupted); returns what happened.

        Raises :class:`TrainingInterrupted` after a stop signal (with a checkpoint) and
        :class:`~percepkit.train.signals.TrainingAborted` after a second one (or one during
        set-up), when ``handle_signals``.
        """
        try:
            if self.handle_signals:
                self._signals.install()
            self._setup()
            return self._loop()
        except TrainingAborted as e:
            raise TrainingAborted(e.signum, self._aborted(e.signum)) from None
        except OSError as e:  # a write the files module did not see (TensorBoard, ...)
            if not is_write_error(e):
                raise
            raise self._write_stopped(write_error(e.filename or self.out or ".", e,
                                                  cleaned=False)) from None
        except WriteError as e:
            raise self._write_stopped(e) from None
        finally:
            self._close()

    def _resume_hint(self) -> str:
        return f"percepkit train --resume {shlex.quote(str(self.run_dir))}"

    def _aborted(self, signum: int) -> str:
        name = signal_name(signum)
        saved = self.last_checkpoint is not None and self._saved_step == self.step
        if not self._signals.armed:
            head = f"{name}: stopped before training started; nothing new to save"
        elif saved:
            head = f"{name} again: stopped at once after saving step {self.step}"
        else:
            head = f"{name} again: stopped at once at step {self.step}, without saving that step"
        if getattr(self, "run_dir", None) is None or self.lock is None:
            return head  # this run had not taken its folder yet
        if self.last_checkpoint is None:
            return f"{head}; no checkpoint was saved. Start again with: {self._resume_hint()}"
        return (f"{head}; the newest checkpoint is {self.last_checkpoint}. Continue with: "
                f"{self._resume_hint()}")

    def _write_stopped(self, error: WriteError) -> WriteError:
        """``error`` (a failed write: disk full, quota, ...) with where the run stands."""
        run_dir = getattr(self, "run_dir", None)
        if run_dir is None or not is_run_dir(run_dir):
            return error
        saved = (f"the checkpoints written before are intact (the newest: "
                 f"{self.last_checkpoint})" if self.last_checkpoint is not None
                 else "no checkpoint had been written yet")
        return WriteError(f"{error} Training stopped at step {self.step}; {saved}. Once it can "
                          f"be written, continue with: {self._resume_hint()}", error.errno)

    def _loop(self) -> TrainResult:
        s, ck = self.settings, self.ckpt_settings
        result = TrainResult(self.run_dir, self.start_step, self.step)
        self._announce()
        if self.step >= s.iterations:
            self.console.print(f"nothing to do: the run is at step {self.step} of "
                               f"{s.iterations}; raise train.iterations (--set "
                               f"train.iterations=N) to train longer")
            return self._result(result)
        terms = self._columns()
        window: list[list[float]] = []
        t_log = time.perf_counter()
        self._t_start = t_log
        self._t_saved = self.clock()
        steps_at_log = self.step
        progress, task = self.report.start_progress(self.step)
        self._signals.arm()  # from here a stop signal gets a checkpoint
        with stop_signals_blocked():  # workers start with them blocked, then ignore them
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
                    self._log(window, now - t_log, self.step - steps_at_log,
                              self._elapsed_before + now - self._t_start)
                    window, t_log, steps_at_log = [], now, self.step
                improved = False
                if (self.step % max(1, s.val_every) == 0 or final) and self.has_val:
                    improved = D.broadcast_object(self._validate())
                if self.step % max(1, s.sample_every) == 0 or final:
                    self._samples()
                if self.step % max(1, ck.every) == 0 or final or self._stop or improved \
                        or self._save_due:
                    self._save(best=improved and ck.keep_best)
                if self._stop and not final:
                    signum = self._signals.signum or signal.SIGTERM  # or another process's
                    raise TrainingInterrupted(
                        f"{signal_name(signum)}: stopped at step {self.step} of {s.iterations}; "
                        f"checkpoint saved to {self.last_checkpoint}. Continue with: "
                        f"{self._resume_hint()}", self.last_checkpoint, signum)
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
        result.best_by, result.best_step = self.task.metric, self.best_step
        result.val = dict(self.last_val)
        return result

    def _close(self) -> None:
        try:
            self.report.close()
            if self._dist_owned:
                D.cleanup()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            self._signals.restore()

    # -- reporting, validation and previews --------------------------------------------------------
    def _announce(self) -> None:
        s = self.settings
        n_params = sum(p.numel() for p in self.module.parameters())
        where = f"resuming at step {self.step}" if self.step else "starting"
        world = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        self.console.print(
            f"[bold]{self.recipe.name}[/] ({self.recipe.task}): {where}, {s.iterations} steps, "
            f"batch {s.batch_size}{world}, {len(self.dataset)} training images, "
            f"{n_params / 1e6:.2f}M parameters, device {self.device}, "
            f"{self.precision.describe()}"
            f"{', channels_last' if self.channels_last else ''}"
            f"{', compiled' if s.compile else ''}\nrun directory: {escape(str(self.run_dir))}",
            soft_wrap=True)
        if self.adversary is not None:
            self.console.print(self.adversary.describe(), soft_wrap=True)
        if self.val_items and self.step == 0:
            line = self.task.baseline(self.val_items)
            if line is not None:
                self.console.print(line)

    def _log(self, window: list[list[float]], seconds: float, steps: int, elapsed: float) -> None:
        if not window or not self.dist.is_main:
            return
        epoch = self._position_now() / max(1, self.sampler.per_rank)
        self.report.log(self.step, window, seconds, steps, elapsed,
                        self.optimizer.param_groups[0]["lr"], epoch,
                        self.settings.batch_size * self.dist.world_size)

    def _eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.module

    def _validate(self) -> bool:
        """Validate on rank 0; returns whether the metric improved on the best so far."""
        if not self.dist.is_main:
            return False
        model = self._eval_module()
        was_training = model.training
        model.eval()
        try:
            metrics = self.task.validate(model, self.val_items)
        finally:
            model.train(was_training)
        self.last_val = metrics
        better = self.task.better(metrics[self.task.metric], self.best)
        if better:
            self.best, self.best_step = metrics[self.task.metric], self.step
        self.report.validation(self.step, metrics, better)
        return better

    @torch.no_grad()
    def _samples(self) -> None:
        """Write ``samples/step_XXXXXXXX.png``: inputs, outputs (and targets) of fixed images."""
        if not self.dist.is_main:
            return
        from ..data.images import write_image

        model = self._eval_module()
        was_training = model.training
        model.eval()
        try:
            grid = self.task.preview(model, self.preview, self.val_items, self.step)
        finally:
            model.train(was_training)
        write_image(self.run.sample_path(self.step), grid)
        self.report.samples(grid, self.step)


def train(recipe: Recipe, **kwargs: Any) -> TrainResult:
    """Train ``recipe`` (keyword arguments as :class:`Trainer`)."""
    return Trainer(recipe, **kwargs).run()
