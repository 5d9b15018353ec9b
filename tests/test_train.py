"""Training: tiny recipes learn, checkpoints reload, resume is exact, failures are clean."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console

from percepkit.cli import main
from percepkit.errors import CheckpointError, PercepkitError
from percepkit.models.checkpoint import (
    MODEL,
    OPTIMIZER,
    load_checkpoint,
    load_transform,
    save_checkpoint,
    save_model,
)
from percepkit.recipes.recipe import load_recipe
from percepkit.train import (
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    find_checkpoints,
    resolve_resume,
)

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
TINY_STYLE = REPO / "recipes" / "tiny_style.yaml"
QUIET = ["train.log_every=1", "train.sample_every=1000", "train.val_every=1000"]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def run(recipe: Path, out: Path, *overrides: str, **kwargs):
    rec = load_recipe(recipe, [*QUIET, *overrides])
    trainer = Trainer(rec, out=out, console=kwargs.pop("console", quiet()), progress=False,
                      **kwargs)
    return trainer, trainer.run()


def test_tiny_sr_learns_and_its_checkpoint_reloads(tmp_path):
    trainer, result = run(TINY_SR, tmp_path / "run", "train.val_every=20",
                          "train.sample_every=20", "train.iterations=40")
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    run_dir = tmp_path / "run"
    for name in ("recipe.yaml", "run.json", "log.csv", "val.csv", "samples/step_00000040.png",
                 "checkpoints/step_00000040.safetensors", "checkpoints/best.safetensors"):
        assert (run_dir / name).is_file(), name
    assert [s for s, _ in find_checkpoints(run_dir)] == [40, 20]  # keep_last: 2
    log = (run_dir / "log.csv").read_text().splitlines()
    assert log[0].split(",")[:6] == ["step", "epoch", "lr", "loss", "pixel", "feature"]
    assert len(log) == 41
    val = (run_dir / "val.csv").read_text().splitlines()
    assert val[0].split(",") == ["step", "psnr", "ssim", "grid", "blobs"]  # artifact metrics too
    assert len(val) == 3 and all(float(v) >= 0 for v in val[-1].split(",")[3:])

    state, meta = load_checkpoint(result.last_checkpoint)
    assert meta["step"] == 40 and meta["task"] == "sr"
    assert meta["transform"]["name"] == "johnson_sr" and "tiny_sr" in meta["recipe"]
    assert meta["torch_version"] == torch.__version__ and meta["percepkit_version"]
    assert {"model", "optimizer", "scheduler", "rng"} <= set(state)
    assert {"torch", "numpy", "python"} <= set(state["rng"]["rank0"])

    model = load_transform(result.last_checkpoint)
    x = torch.rand(2, 3, 12, 12)
    trainer.module.eval()
    with torch.no_grad():
        assert torch.equal(model(x), trainer.module(x))
    assert model(x).shape == (2, 3, 48, 48)
    best = load_checkpoint(result.best_checkpoint, tensors=False)[1]
    assert best["best"]["metric"] == "psnr" and best["best"]["step"] in (20, 40)


def test_tiny_style_learns_with_ema(tmp_path):
    trainer, result = run(TINY_STYLE, tmp_path / "run", "train.ema=0.9", "train.iterations=30")
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    state, meta = load_checkpoint(result.last_checkpoint)
    assert meta["task"] == "style" and "ema" in state
    header = (tmp_path / "run" / "val.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "step" and header[1] == "loss" and header[-2:] == ["grid", "blobs"]
    model = load_transform(result.last_checkpoint)  # EMA weights by default
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trainer.ema.module(x))
        assert not torch.equal(model(x), trainer.module.eval()(x))


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    steps = ["train.iterations=12", "checkpoint.every=6", "checkpoint.keep_last=0"]
    _, full = run(TINY_SR, tmp_path / "full", *steps)
    _, first = run(TINY_SR, tmp_path / "split", "train.iterations=6", "checkpoint.every=6")
    assert first.losses == full.losses[:6]
    # the second half runs with DataLoader workers: the data must not depend on them
    trainer, second = run(TINY_SR, None, *steps, "train.workers=2",
                          resume=tmp_path / "split")
    assert second.start_step == 6
    assert second.losses == full.losses[6:]
    a = load_checkpoint(full.last_checkpoint)[0]
    b = load_checkpoint(second.last_checkpoint)[0]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == [str(i) for i in range(1, 13)]


MIXED_TERMS = ("losses=[{name: pixel, weight: 1.0}, {name: charbonnier, weight: 1.0}, "
               "{name: feature, layers: [conv2_2], criterion: l1, weight: 0.1}, "
               "{name: contextual, layers: [relu2_1], weight: 0.01}, {name: fft, weight: 0.1}, "
               "{name: focal_frequency, weight: 0.1}, {name: ssim, weight: 0.1}, "
               "{name: tv, weight: 1.0e-4}]")


def test_a_recipe_mixing_old_and_new_terms_resumes_exactly_random_init(tmp_path):
    """Old and new terms together (the contextual term samples positions at random: the
    resumed run must draw the same ones) train, log every term and resume exactly."""
    steps = ["train.iterations=6", "checkpoint.every=3", "checkpoint.keep_last=0", MIXED_TERMS]
    _, full = run(TINY_SR, tmp_path / "full", *steps)
    _, first = run(TINY_SR, tmp_path / "split", *steps[1:], "train.iterations=3")
    assert first.losses == full.losses[:3]
    _, second = run(TINY_SR, None, *steps, resume=tmp_path / "split")
    assert second.losses == full.losses[3:]
    header = (tmp_path / "full" / "log.csv").read_text().splitlines()[0].split(",")
    for term in ("pixel", "charbonnier", "feature", "contextual", "fft", "focal_frequency",
                 "ssim", "tv"):
        assert term in header, term
    a = load_checkpoint(full.last_checkpoint)[0]["model"]
    b = load_checkpoint(second.last_checkpoint)[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_during_a_save_resumes_from_the_newest_intact_checkpoint(tmp_path):
    out = tmp_path / "killed"
    steps = ["train.iterations=12", "checkpoint.every=4", "checkpoint.keep_last=0"]
    # same thread count as this process: float reductions must run in the same order
    script = textwrap.dedent(f"""
        import os, sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        import percepkit.runtime.files as ck  # where checkpoints are renamed into place
        real = os.replace
        calls = []
        def dying_replace(src, dst):
            if str(dst).endswith(".safetensors"):
                calls.append(dst)
                if len(calls) == 2:  # the step-8 checkpoint: written, not yet renamed
                    os._exit(137)
            return real(src, dst)
        ck.os.replace = dying_replace
        from percepkit.cli import main
        main(["train", {str(TINY_SR)!r}, "--out", {str(out)!r}, "--no-progress",
              *[a for s in {[*QUIET, *steps]!r} for a in ("--set", s)]])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)  # a hang guard, not a measurement
    assert proc.returncode == 137, proc.stderr
    leftovers = list((out / "checkpoints").glob(".*.tmp"))
    assert leftovers  # the half-finished save
    assert [s for s, _ in find_checkpoints(out)] == [4]

    _, full = run(TINY_SR, tmp_path / "full", *steps)
    _, resumed = run(TINY_SR, None, *steps, resume=out)
    assert resumed.start_step == 4
    assert resumed.losses == full.losses[4:]
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_a_damaged_newest_checkpoint_is_skipped(tmp_path):
    out = tmp_path / "run"
    run(TINY_SR, out, "train.iterations=4", "checkpoint.every=2")
    newest = out / "checkpoints" / "step_00000004.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    console = quiet()
    point = resolve_resume(out, console=console)
    assert point.checkpoint.name == "step_00000002.safetensors"
    assert "step_00000004" in console.file.getvalue()
    with pytest.raises(CheckpointError, match="truncated"):
        resolve_resume(newest)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                            capsys):
    from percepkit.losses import PixelLoss

    calls = {"n": 0}
    real = PixelLoss.forward

    def flaky(self, inputs):
        calls["n"] += inputs.output.device.type != "meta"  # not the memory estimate's pass
        value = real(self, inputs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(PixelLoss, "forward", flaky)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        run(TINY_SR, out, "train.iterations=10", "checkpoint.every=2")
    msg = str(err.value)
    assert "NaN at step 5" in msg and "step_00000004.safetensors" in msg
    assert [s for s, _ in find_checkpoints(out)] == [4, 2]
    load_transform(out / "checkpoints" / "step_00000004.safetensors")

    calls["n"] = 0
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(TINY_SR), "--out", str(tmp_path / "cli"), "--no-progress",
              "--set", "train.iterations=10"])
    assert exit_.value.code == 2
    err_text = capsys.readouterr().err
    assert "NaN at step 5" in err_text and "Traceback" not in err_text


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path, monkeypatch):
    from percepkit.losses import PixelLoss

    calls = {"n": 0}
    real = PixelLoss.forward

    def interrupting(self, inputs):
        calls["n"] += inputs.output.device.type != "meta"  # not the memory estimate's pass
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, inputs)

    monkeypatch.setattr(PixelLoss, "forward", interrupting)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background
    with pytest.raises(TrainingInterrupted, match="stopped at step 3"):
        run(TINY_SR, out, "train.iterations=10", handle_signals=True)
    assert [s for s, _ in find_checkpoints(out)] == [3]
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_cli_train_resume_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--set", "train.iterations=3", "--set", "train.log_every=1"]
    main(["train", str(TINY_STYLE), "--out", str(out), "--device", "cpu", "--no-progress", *args])
    text = capsys.readouterr().out
    assert "step 3/3" in text and "best checkpoint" in text
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert sessions[0]["device"] == "cpu"

    def fails(argv, pattern):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert pattern in err and "Traceback" not in err, err

    fails(["train", str(TINY_STYLE), "--out", str(out), *args], "already holds a run")
    fails(["train", "--resume", str(tmp_path / "nope")], "no such run directory")
    fails(["train", "--resume", str(tmp_path)], "not a percepkit run directory")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    fails(["train", "--resume", str(foreign)], "not a percepkit checkpoint")
    fails(["train", str(TINY_STYLE), "--set", "data.train.root=x"], "data.train")
    fails(["train", str(TINY_STYLE), "--device", "cuda:7" if not torch.cuda.is_available()
           else "nonsense", *args, "--out", str(tmp_path / "d")], "--device")

    # resume without a recipe: the stored one is used; more iterations continue the run
    main(["train", "--resume", str(out), "--set", "train.iterations=5", "--no-progress"])
    text = capsys.readouterr().out
    assert "resuming at step 3" in text and "step 5/5" in text
    main(["train", "--resume", str(out), "--no-progress"])
    assert "nothing to do" in capsys.readouterr().out
    # a bare --resume continues --out (or the newest runs/<recipe>-*)
    main(["train", str(TINY_STYLE), "--out", str(out), "--resume", "--set", "train.iterations=6",
          "--no-progress"])
    assert "resuming at step 5" in capsys.readouterr().out


def test_a_checkpoint_for_another_transform_is_refused(tmp_path):
    out = tmp_path / "run"
    _, result = run(TINY_SR, out, "train.iterations=2")
    state, meta = load_checkpoint(result.last_checkpoint)
    other = tmp_path / "other.safetensors"
    state["model"] = {k: torch.zeros(1) for k in state["model"]}
    save_checkpoint(other, state, meta)
    with pytest.raises(PercepkitError, match="do not fit"):
        run(TINY_SR, tmp_path / "branch", "train.iterations=4", resume=other)


def test_resume_edge_cases_fresh_run_dir_and_older_checkpoint(tmp_path):
    # killed before its first checkpoint: the run starts again from step 0 in the same directory
    early = tmp_path / "early"
    early.mkdir()
    (early / "recipe.yaml").write_text(TINY_SR.read_text())
    _, result = run(TINY_SR, None, "train.iterations=2", resume=early)
    assert result.start_step == 0 and result.step == 2 and result.run_dir == early

    # resuming an older checkpoint of a run keeps the newer ones, moved aside
    out = tmp_path / "run"
    run(TINY_SR, out, "train.iterations=4", "checkpoint.every=2", "checkpoint.keep_last=0")
    older = out / "checkpoints" / "step_00000002.safetensors"
    _, result = run(TINY_SR, None, "train.iterations=3", "checkpoint.keep_last=0", resume=older)
    assert result.start_step == 2 and result.run_dir == out
    assert [s for s, _ in find_checkpoints(out)] == [3, 2]
    aside = list((out / "checkpoints").glob("superseded-*/step_00000004.safetensors"))
    assert len(aside) == 1
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]


def test_init_starts_from_given_weights_with_a_fresh_optimizer(tmp_path, capsys):
    _, first = run(TINY_SR, tmp_path / "a", "train.iterations=3")
    source = load_transform(first.last_checkpoint)
    # one step at learning rate 0: the parameters stay those it started from
    _, second = run(TINY_SR, tmp_path / "b", "train.iterations=1", "optimizer.lr=0",
                    f"train.init={first.last_checkpoint}")
    state, meta = load_checkpoint(second.last_checkpoint)
    assert meta["step"] == 1  # a new run, counted from 0
    for name, value in source.named_parameters():
        assert torch.equal(state[MODEL][name], value), name
    steps = {int(s["step"]) for s in state[OPTIMIZER]["state"].values()}
    assert steps == {1}  # a fresh optimiser: one step, not 3 + 1
    other = tmp_path / "style.safetensors"
    spec = {"name": "johnson_style", "channels": [4, 4, 4], "residual_blocks": 1}
    from percepkit.registry import TRANSFORMS

    save_model(other, TRANSFORMS.build(spec).state_dict(),
               {"task": "style", "transform": spec})
    code = run_cli(["train", str(TINY_SR), "--init", str(other), "--out", str(tmp_path / "c")])
    assert code == 2 and "train.init" in capsys.readouterr().err


def test_a_first_non_finite_validation_value_never_becomes_best(tmp_path, monkeypatch):
    from percepkit.train.tasks import StyleTask

    real = StyleTask.validate
    calls = {"n": 0}

    def validate(self, model, items):
        calls["n"] += 1
        metrics = real(self, model, items)
        return {**metrics, "loss": float("nan")} if calls["n"] == 1 else metrics

    monkeypatch.setattr(StyleTask, "validate", validate)
    console = quiet()
    _, result = run(TINY_STYLE, tmp_path / "run", "train.iterations=2", "train.val_every=1",
                    "checkpoint.every=1000", "checkpoint.keep_last=0", console=console)
    lines = [x for x in console.file.getvalue().splitlines() if x.startswith("validation at")]
    assert len(lines) == 2 and "nan" in lines[0] and "(best)" not in lines[0]
    assert "(best)" in lines[1]
    # step 1 was not "improved": no checkpoint was written for it, best.safetensors is step 2's
    assert [s for s, _ in find_checkpoints(tmp_path / "run")] == [2]
    best = load_checkpoint(result.best_checkpoint, tensors=False)[1]["best"]
    assert best["step"] == 2 and best["value"] == result.best_metric
    assert result.best_metric == result.best_metric  # not NaN


def test_log_line_carries_elapsed_time_and_eta():
    from percepkit.train.report import duration, log_line

    assert [duration(s) for s in (0, 45.4, 192, 3600 + 5 * 60 + 7)] == ["0s", "45s", "3m12s",
                                                                       "1h05m"]
    line = log_line(10, 40, 0.5, "pixel 0.5", 1e-3, 20.0, 0.2, 192.0)
    assert line.startswith("step 10/40  loss 0.5  (pixel 0.5)  lr 0.001")
    assert line.endswith("elapsed 3m12s, ETA 10m00s")


# -- TensorBoard: the optional extra percepkit[tensorboard] ----------------------------------------
def test_tensorboard_true_without_the_package_is_one_line_before_anything_is_written(
        tmp_path, fail_import, capsys, monkeypatch):
    fail_import("tensorboard")
    for name in [k for k in sys.modules if k.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)  # imported by an earlier test: import it anew
    out = tmp_path / "run"
    assert run_cli(["train", str(TINY_SR), "--out", str(out), "--no-progress",
                    "--set", "train.iterations=1", "--set", "train.tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'percepkit[tensorboard]'" in err and err.count("\n") == 0
    assert not out.exists()
    # by default TensorBoard is used when installed: here it is not, and training goes on
    run(TINY_SR, out, "train.iterations=1")
    assert not (out / "tensorboard").exists() and (out / "log.csv").is_file()


@pytest.mark.extra("tensorboard")
def test_tensorboard_logs_are_written_when_asked_and_not_when_off(tmp_path):
    run(TINY_SR, tmp_path / "on", "train.iterations=2", "train.tensorboard=true")
    assert any((tmp_path / "on" / "tensorboard").iterdir())
    run(TINY_SR, tmp_path / "off", "train.iterations=2", "train.tensorboard=false")
    assert not (tmp_path / "off" / "tensorboard").exists()


# -- full disks, files in the way, no permission ---------------------------------------------------
def test_a_full_disk_during_a_checkpoint_save_exits_2_keeps_the_last_and_resume_works(
        tmp_path, full_disk, capsys):
    out = tmp_path / "run"
    args = ["train", str(TINY_SR), "--out", str(out), "--no-progress", "--set",
            "train.iterations=4", "--set", "checkpoint.every=2", "--set", "train.val_every=1000"]
    full_disk("step_00000004.safetensors")  # the disk fills up after the step-2 checkpoint
    assert run_cli(args) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "step_00000004.safetensors" in err and "disk is full" in err
    assert f"--resume {out}" in err and "Traceback" not in err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000002.safetensors"]  # no partial file, the last one intact
    assert load_checkpoint(out / "checkpoints" / names[0])[1]["step"] == 2
    full_disk(None)  # space freed
    assert run_cli(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert [s for s, _ in find_checkpoints(out)] == [4, 2]


def test_a_full_disk_while_logging_or_writing_samples_is_one_paragraph(tmp_path, full_disk,
                                                                      capsys):
    # "/log.csv" hits the appended rows, not the header (written through a temporary file)
    for i, (match, what) in enumerate((("/log.csv", "log.csv"), ("step_00000001.png", "samples"))):
        out = tmp_path / f"run{i}"
        full_disk(match)
        assert run_cli(["train", str(TINY_SR), "--out", str(out), "--no-progress", "--set",
                        "train.iterations=1", "--set", "train.log_every=1", "--set",
                        "train.sample_every=1"]) == 2
        err = capsys.readouterr().err.replace("\n", " ")
        assert what in err and "disk is full" in err and "Traceback" not in err
        full_disk(None)
        if match == "/log.csv":
            assert (out / "log.csv").read_text().count("\n") == 1  # the header, no half row


def test_train_out_under_a_file_or_in_an_unwritable_folder_is_one_paragraph(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    args = ["--no-progress", "--set", "train.iterations=1"]
    assert run_cli(["train", str(TINY_SR), "--out", str(tmp_path / "a_file" / "run"),
                    *args]) == 2
    err = capsys.readouterr().err
    assert "a_file is a file, not a folder" in err and "Traceback" not in err
    # an unwritable folder (faked: the tests may run as root, who may write anywhere)
    import errno

    from percepkit.runtime import files

    real_access = os.access
    monkeypatch.setattr(files.os, "access",
                        lambda path, mode: mode != os.W_OK and real_access(path, mode))
    assert run_cli(["train", str(TINY_SR), "--out", str(tmp_path / "ro" / "run"), *args]) == 2
    assert "is not writable" in capsys.readouterr().err
    monkeypatch.undo()

    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro2"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert run_cli(["train", str(TINY_SR), "--out", str(tmp_path / "ro2" / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "ro2" in err and "Traceback" not in err
