"""Training-run robustness: stop signals to the process or its group, the run-directory lock,
time-based checkpoints, elapsed time across resumes, the progress bar at 80 columns.

The subprocess tests start ``percepkit train`` in a new session (its own process group), wait
for its first logged step and signal it as ``timeout``, systemd or a closed terminal would.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console

from percepkit.errors import PercepkitError
from percepkit.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from percepkit.recipes.recipe import load_recipe
from percepkit.train import Trainer, find_checkpoints
from percepkit.train.lock import LOCK_FILE, RunLock
from percepkit.train.signals import REPEAT_WINDOW, StopSignals, TrainingAborted, exit_code

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
LONG = ["train.iterations=100000", "train.log_every=1", "train.val_every=100000",
        "train.sample_every=100000", "checkpoint.every=100000"]
WAIT = 300  # seconds: a guard against a hung child on a loaded machine, not a measurement


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _argv(out: Path, workers: int, *sets: str) -> list[str]:
    args = [sys.executable, "-m", "percepkit.cli", "train", str(TINY_SR), "--out", str(out),
            "--no-progress"]
    for s in [*LONG, f"train.workers={workers}", *sets]:
        args += ["--set", s]
    return args


def _start(out: Path, workers: int, *sets: str) -> tuple[subprocess.Popen, list[str]]:
    """A training run in its own process group, returned once it has logged a step."""
    proc = subprocess.Popen(_argv(out, workers, *sets), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step "):
            return proc, lines
    proc.wait()
    raise AssertionError("the run ended before its first step:\n" + "".join(lines))


def _finish(proc: subprocess.Popen, lines: list[str]) -> str:
    rest, _ = proc.communicate(timeout=WAIT)
    return "".join(lines) + rest


def _stopped_step(text: str, out: Path) -> int:
    """The step of the checkpoint the run says it saved (and that it names how to resume)."""
    m = re.search(r"stopped at step (\d+) of 100000; checkpoint saved to (\S+)\. Continue with: "
                  r"percepkit train --resume (\S+)", text)
    assert m, text
    step = int(m.group(1))
    assert Path(m.group(2)) == out / "checkpoints" / f"step_{step:08d}.safetensors"
    assert Path(m.group(3)) == out
    return step


def _assert_clean(out: Path) -> None:
    assert not (out / LOCK_FILE).exists()
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize(("signame", "workers", "group"), [
    ("SIGTERM", 1, True), ("SIGINT", 0, True), ("SIGHUP", 2, True), ("SIGTERM", 2, False)])
def test_a_stop_signal_saves_a_resumable_checkpoint(tmp_path, capsys, signame, workers, group):
    sig = getattr(signal, signame)
    out = tmp_path / "run"
    proc, lines = _start(out, workers)
    if group:  # as `timeout` does: the process, then its whole group (workers included)
        os.kill(proc.pid, sig)
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    text = _finish(proc, lines)
    assert proc.returncode == exit_code(sig) == 128 + sig, text
    assert "Traceback" not in text and "DataLoader worker" not in text, text
    assert text.count(f"{signame}: stopping after this step") == 1, text  # one request
    step = _stopped_step(text, out)
    assert [s for s, _ in find_checkpoints(out)][0] == step
    _assert_clean(out)

    code = run_cli(["train", "--resume", str(out), "--no-progress", "--set",
                    f"train.iterations={step + 2}"])
    text = capsys.readouterr().out
    assert code == 0 and f"resuming at step {step}," in text and f"step {step + 2}/" in text
    _assert_clean(out)


@pytest.mark.slow
def test_a_second_signal_aborts_at_once_and_keeps_earlier_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["train.iterations=10", "checkpoint.every=2", "checkpoint.keep_last=0",
            "train.log_every=1"]
    script = textwrap.dedent(f"""
        import os, signal
        import percepkit.runtime.files as files
        import percepkit.train.signals as sigs
        from percepkit.losses import PixelLoss
        sigs.REPEAT_WINDOW = -1.0  # every repeat counts as a second signal
        calls = {{"n": 0}}
        real_forward = PixelLoss.forward
        def forward(self, inputs):
            calls["n"] += inputs.output.device.type != "meta"
            if calls["n"] == 3:  # during step 3: the first SIGTERM
                os.kill(os.getpid(), signal.SIGTERM)
            return real_forward(self, inputs)
        PixelLoss.forward = forward
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("step_00000003.safetensors"):  # the save the first asked for
                os.kill(os.getpid(), signal.SIGTERM)
            return real_replace(src, dst)
        files.os.replace = replace
        from percepkit.cli import main
        main(["train", {str(TINY_SR)!r}, "--out", {str(out)!r}, "--no-progress",
              *[a for s in {sets!r} for a in ("--set", s)]])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_env(), timeout=WAIT)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert "SIGTERM again: stopped at once at step 3" in proc.stderr, proc.stderr
    assert "step_00000002.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert [s for s, _ in find_checkpoints(out)] == [2]  # the interrupted save left nothing
    _assert_clean(out)
    assert run_cli(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "resuming at step 2," in capsys.readouterr().out


@pytest.mark.slow
def test_a_closed_terminal_stops_with_a_checkpoint(tmp_path):
    """SIGHUP from a hung-up terminal: writes to it fail (EIO), the checkpoint is still saved."""
    import fcntl
    import termios

    out = tmp_path / "run"
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # runs after setsid (start_new_session)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(_argv(out, 1), stdin=slave, stdout=slave, stderr=slave, env=_env(),
                            start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    while b"\nstep " not in seen:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            chunk = b""
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    os.close(master)  # the terminal goes away: the kernel sends SIGHUP
    assert proc.wait(timeout=WAIT) == 128 + signal.SIGHUP
    steps = [s for s, _ in find_checkpoints(out)]
    assert steps and 0 < steps[0] < 100000
    _assert_clean(out)


def test_repeats_within_the_window_are_one_request_later_ones_abort():
    """Real signals, raised in this process with the handlers installed."""
    now = [100.0]
    stops: list[int] = []
    handler = StopSignals(stops.append, clock=lambda: now[0])
    assert handler.install()
    try:
        with pytest.raises(TrainingAborted):  # not armed (set-up): nothing to finish, stop at once
            signal.raise_signal(signal.SIGTERM)
    finally:
        handler.restore()
    handler = StopSignals(stops.append, clock=lambda: now[0])
    assert handler.install()
    try:
        handler.arm()
        signal.raise_signal(signal.SIGTERM)
        now[0] += REPEAT_WINDOW / 2
        signal.raise_signal(signal.SIGTERM)  # timeout's second copy: ignored
        assert stops == [signal.SIGTERM]
        now[0] += REPEAT_WINDOW
        with pytest.raises(TrainingAborted) as e:
            signal.raise_signal(signal.SIGINT)
    finally:
        handler.restore()
    assert e.value.signum == signal.SIGINT and exit_code(e.value.signum) == 130
    assert not isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), StopSignals)


# -- the run-directory lock ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_refuses_and_the_lock_goes_at_exit(tmp_path, capsys):
    out = tmp_path / "run"
    proc, lines = _start(out, 0)
    try:
        lock = json.loads((out / LOCK_FILE).read_text())
        assert lock["pid"] == proc.pid and lock["host"] == platform.node()
        for argv in (["train", str(TINY_SR), "--out", str(out)], ["train", "--resume", str(out)]):
            assert run_cli(argv) == 2
            err = capsys.readouterr().err
            assert "in use by another training run" in err and f"pid {proc.pid}" in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        text = _finish(proc, lines)
    assert proc.returncode == 143, text
    _assert_clean(out)


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    proc, lines = _start(out, 1, "checkpoint.every=1")
    os.killpg(proc.pid, signal.SIGKILL)
    _finish(proc, lines)
    assert proc.returncode == -signal.SIGKILL
    stale = json.loads((out / LOCK_FILE).read_text())
    assert stale["pid"] == proc.pid
    assert run_cli(["train", "--resume", str(out), "--no-progress", "--set",
                    "train.iterations=1", "--set", "checkpoint.every=1"]) == 0
    text = capsys.readouterr().out
    assert f"took over the lock of a run that is no longer running (pid {proc.pid}" in text
    _assert_clean(out)


def test_a_lock_file_naming_a_dead_process_of_this_host_is_stale(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": platform.node()}))
    console = Console(file=io.StringIO(), width=200)
    lock = RunLock.acquire(run_dir, console)
    assert f"pid {pid} on host" in console.file.getvalue()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(PercepkitError, match="in use by another training run"):
        RunLock.acquire(run_dir)  # the same process, a second Trainer
    lock.release()
    lock.release()
    assert not (run_dir / LOCK_FILE).exists() and run_dir.is_dir()  # not created by the lock

    fresh = tmp_path / "new" / "run"
    RunLock.acquire(fresh).release()  # a folder the lock created and nothing filled
    assert not fresh.exists()


def test_stop_and_checkpoint_flags_survive_the_mean_over_processes():
    from percepkit.train.loop import decode_flags, encode_flags

    for world in (1, 2, 3, 8):
        for stops in range(world + 1):
            for dues in range(world + 1):
                values = [encode_flags(r < stops, r < dues, world) for r in range(world)]
                mean = float(torch.tensor(values, dtype=torch.float32).mean())
                assert decode_flags(mean, world) == (stops > 0, dues > 0), (world, stops, dues)


# -- checkpoint.every_minutes and elapsed time --------------------------------------------------
def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_every_minutes_saves_on_time_as_well_as_every_n_steps(tmp_path):
    rec = load_recipe(TINY_SR, ["train.iterations=10", "train.log_every=100",
                                "train.val_every=1000", "train.sample_every=1000",
                                "checkpoint.every=1000", "checkpoint.keep_last=0",
                                "checkpoint.every_minutes=1"])
    trainer = Trainer(rec, out=tmp_path / "run", console=quiet(), progress=False)
    trainer.clock = lambda: trainer.step * 25.0  # each step "takes" 25 seconds
    trainer.run()
    # due once 60 s have passed since the last save: after 3 more steps (75 s), saved at the end
    # of the step in which it was found due; plus the final checkpoint
    assert [s for s, _ in find_checkpoints(tmp_path / "run")] == [10, 8, 4]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_every_minutes_is_validated(value):
    with pytest.raises(PercepkitError, match="checkpoint"):
        load_recipe(TINY_SR, [f"checkpoint.every_minutes={value}"])


def test_elapsed_time_continues_across_resumes(tmp_path):
    sets = ["train.log_every=1", "train.val_every=1000", "train.sample_every=1000",
            "checkpoint.keep_last=0"]
    out = tmp_path / "run"
    Trainer(load_recipe(TINY_SR, [*sets, "train.iterations=2"]), out=out, console=quiet(),
            progress=False).run()
    ckpt = out / "checkpoints" / "step_00000002.safetensors"
    state, meta = load_checkpoint(ckpt)
    assert 0 < meta["elapsed_sec"] < 1000
    save_checkpoint(ckpt, state, {**meta, "elapsed_sec": 1000.0})  # as if it had run 1000 s
    Trainer(load_recipe(TINY_SR, [*sets, "train.iterations=4"]), resume=out, console=quiet(),
            progress=False).run()
    rows = (out / "log.csv").read_text().splitlines()
    col = rows[0].split(",").index("elapsed_sec")
    elapsed = {int(r.split(",")[0]): float(r.split(",")[col]) for r in rows[1:]}
    assert elapsed[1] < elapsed[2] < 1000 < elapsed[3] < elapsed[4]
    later = read_metadata(out / "checkpoints" / "step_00000004.safetensors")["elapsed_sec"]
    assert later >= elapsed[4]  # saved after the last log row


# -- what the console shows -------------------------------------------------------------------
def test_the_progress_bar_keeps_step_and_eta_at_80_columns():
    from percepkit.train.report import Reporter

    losses = "loss 0.08743  pixel 0.0832  feature 0.004226  style 1.234e-05  tv 1.23e-05"
    for width in (80, 250):
        console = Console(file=io.StringIO(), width=width, force_terminal=True,
                          color_system=None)
        progress, task = Reporter(console, True, True, 200000).start_progress(1234)
        progress.update(task, completed=1500, losses=losses, speed="8.01 it/s  32.0 img/s")
        progress.refresh()
        progress.stop()
        last = console.file.getvalue().split("\r")[-1].split("\x1b[2K")[-1]
        line = last.replace("\x1b[?25h", "").rstrip()
        assert len(line) <= width and "1500/200000" in line and "ETA -:--:--" in line, line
        if width == 80:
            assert "loss 0.08743" in line and line.endswith("…")
        else:
            assert losses in line and "32.0 img/s" in line


def test_an_out_folder_with_brackets_is_named_in_the_final_lines(tmp_path, capsys):
    out = tmp_path / "exp[lr=1e-3]"
    code = run_cli(["train", str(TINY_SR), "--out", str(out), "--no-progress", "--set",
                    "train.iterations=2", "--set", "train.val_every=1000"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"run directory: {out}\n" in text
    assert f"last checkpoint: {out / 'checkpoints' / 'step_00000002.safetensors'}" in text
