"""The one precision setting: what ``auto`` picks, refusals, deprecated keys, and bf16 in
training (exact resume), inference (the calibration budget) and metrics."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console
from torch import nn

import percepkit.runtime.precision as P
from percepkit.errors import PercepkitError
from percepkit.inference import Predictor
from percepkit.inference import calibration as C
from percepkit.models.checkpoint import Checkpoint, load_checkpoint
from percepkit.recipes.recipe import load_recipe
from percepkit.train import Trainer, find_checkpoints

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
QUIET = ["train.log_every=1", "train.sample_every=1000", "train.val_every=1000"]
CPU = torch.device("cpu")


@pytest.fixture
def fake_units(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16 units."""
    def set_units(value: bool) -> None:
        monkeypatch.setattr(P, "cpu_has_bf16_units", lambda: value)
    return set_units


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_units(fake_units):
    fake_units(False)
    assert P.resolve_precision("auto", CPU).name == "fp32"
    assert P.resolve_precision(None, CPU).dtype is None
    fake_units(True)
    chosen = P.resolve_precision("auto", CPU)
    assert (chosen.name, chosen.dtype, chosen.scaled) == ("bf16", torch.bfloat16, False)
    assert P.resolve_precision("fp32", CPU).name == "fp32"


def test_fp16_is_cuda_only_and_unknown_names_are_refused():
    with pytest.raises(PercepkitError, match="CUDA-only"):
        P.resolve_precision("fp16", CPU)
    with pytest.raises(PercepkitError, match="unknown precision.*auto, fp32, bf16, fp16"):
        P.check_precision("bf32")
    assert P.check_precision("bfloat16") == "bf16" and P.check_precision("FP32") == "fp32"


def test_forced_bf16_without_units_warns_that_it_is_slow(fake_units, recwarn):
    fake_units(False)
    with pytest.warns(UserWarning, match="no bf16 matrix units.*slower"):
        assert P.resolve_precision("bf16", CPU).name == "bf16"
    fake_units(True)
    P.resolve_precision("bf16", CPU)
    assert not [w for w in recwarn if "slower" in str(w.message)]


def test_the_capability_check_asks_torch_unless_overridden(monkeypatch):
    cpu = torch.cpu
    expected = any(getattr(cpu, n, lambda: False)() for n in
                   ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    monkeypatch.delenv("PERCEPKIT_CPU_BF16")  # the suite sets 0 (conftest)
    assert P.cpu_has_bf16_units() == expected
    for value, units in (("0", False), ("1", True)):
        monkeypatch.setenv("PERCEPKIT_CPU_BF16", value)
        assert P.cpu_has_bf16_units() is units


# -- recipes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("train", "expected"), [
    ("{amp: false}", "fp32"), ("{amp: true}", "auto"),
    ("{amp: true, amp_dtype: bfloat16}", "bf16"), ("{amp_dtype: float16}", "fp16"),
])
def test_deprecated_amp_keys_are_read_as_precision_with_a_notice(train, expected):
    with pytest.warns(FutureWarning, match="deprecated: read as train.precision"):
        recipe = load_recipe(TINY_SR, [f"train={train}"])
    assert recipe.train.precision == expected
    assert "amp" not in recipe.raw["train"] and "amp_dtype" not in recipe.raw["train"]


def test_an_amp_override_replaces_the_recipes_precision():
    with pytest.warns(FutureWarning):
        recipe = load_recipe(TINY_SR, ["train.precision=bf16", "train.amp=false"])
    assert recipe.train.precision == "fp32"


def test_invalid_precision_and_amp_values_name_the_key():
    with pytest.raises(PercepkitError, match="train: key 'precision'.*'fp8'"):
        load_recipe(TINY_SR, ["train.precision=fp8"])
    with pytest.raises(PercepkitError, match="train: key 'amp'"):
        load_recipe(TINY_SR, ["train.amp=sometimes"])


def test_shipped_recipes_use_precision_not_amp():
    for path in REPO.glob("recipes/**/*.yaml"):
        text = path.read_text()
        assert "amp:" not in text and "amp_dtype" not in text, path


# -- training ----------------------------------------------------------------------------------
def _train(out: Path | None, *overrides: str, **kwargs):
    recipe = load_recipe(TINY_SR, [*QUIET, *overrides])
    trainer = Trainer(recipe, out=out, console=Console(file=io.StringIO()), progress=False,
                      **kwargs)
    return trainer, trainer.run()


def test_bf16_training_records_its_precision_random_init(tmp_path, fake_units):
    fake_units(True)
    trainer, result = _train(tmp_path / "run", "train.iterations=3")
    assert trainer.precision.name == "bf16" and trainer.channels_last
    assert not trainer.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
    assert Checkpoint.read(result.last_checkpoint).meta["precision"] == "bf16"
    session = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"][0]
    assert session["precision"] == "bf16"
    fake_units(False)
    trainer, _ = _train(tmp_path / "fp32", "train.iterations=1")
    assert trainer.precision.name == "fp32" and not trainer.channels_last


def test_bf16_changes_the_numbers_but_not_the_course_random_init(tmp_path, fake_units):
    fake_units(False)  # the forced-bf16 notice of a CPU without units, on any CPU
    _, fp32 = _train(tmp_path / "a", "train.iterations=6", "train.precision=fp32")
    with pytest.warns(UserWarning, match="bf16"):
        _, bf16 = _train(tmp_path / "b", "train.iterations=6", "train.precision=bf16")
    assert fp32.losses != bf16.losses  # autocast really ran
    for a, b in zip(fp32.losses, bf16.losses):
        assert b == pytest.approx(a, rel=0.05)


def test_a_bf16_run_killed_with_sigkill_resumes_to_identical_weights(tmp_path):
    out = tmp_path / "killed"
    steps = ["train.iterations=8", "checkpoint.every=2", "checkpoint.keep_last=0",
             "train.precision=bf16"]
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from percepkit.cli import main
        main(["train", {str(TINY_SR)!r}, "--out", {str(out)!r}, "--no-progress",
              *[a for s in {[*QUIET, *steps]!r} for a in ("--set", s)]])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a measurement
        while time.monotonic() < deadline and not any(s >= 4 for s, _ in find_checkpoints(out)):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = [s for s, _ in find_checkpoints(out)]
    assert done and max(done) < 8, done  # killed mid-run, with a checkpoint to resume
    _, full = _train(tmp_path / "full", *steps)
    _, resumed = _train(None, *steps, resume=out)
    assert resumed.losses == full.losses[resumed.start_step:]
    a = load_checkpoint(full.last_checkpoint)[0]["model"]
    b = load_checkpoint(resumed.last_checkpoint)[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- inference ---------------------------------------------------------------------------------
class Offset(nn.Module):
    """conv(x) + 1000 then - 1000: bf16 rounds the large intermediate to steps of 4 or 8, far
    outside the budget (a net that must stay fp32)."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            for conv, bias in ((self.a, offset), (self.b, -offset)):
                conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                conv.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_auto_inference_uses_bf16_only_within_the_budget_and_caches_it(monkeypatch, tmp_path,
                                                                        fake_units):
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path))
    fake_units(True)
    good, bad = Offset(0.0), Offset(1000.0)
    assert Predictor(good, "cpu").precision.name == "bf16"
    assert Predictor(bad, "cpu").precision.name == "fp32"
    record = json.loads((tmp_path / C.CACHE_FILE).read_text())
    verdicts = sorted(v["within_budget"] for v in record.values())
    assert verdicts == [False, True]
    assert max(v["mean"] for v in record.values()) > C.MEAN_BUDGET

    def never(*args, **kwargs):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(C, "measure_drift", never)
    assert Predictor(good, "cpu").precision.name == "bf16"
    assert Predictor(bad, "cpu").precision.name == "fp32"
    # explicit choices are obeyed without calibration; without units auto is fp32
    assert Predictor(bad, "cpu", precision="bf16").precision.name == "bf16"
    fake_units(False)
    assert Predictor(good, "cpu").precision.name == "fp32"


def test_a_bf16_predictor_output_stays_near_fp32_for_a_zoo_model(tmp_path, monkeypatch):
    import percepkit

    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path))
    net = percepkit.load("candy")
    image = C.calibration_image(64)
    ref = Predictor(net, "cpu", precision="fp32")(image[0])
    with pytest.warns(UserWarning) if not P.cpu_has_bf16_units() else _nothing():
        low = Predictor(net, "cpu", precision="bf16")(image[0])
    assert low.shape == ref.shape and not torch.equal(low, ref)
    assert ((low - ref).abs() * 255).mean() < 2.0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cli_refuses_fp16_on_the_cpu_in_one_paragraph(tmp_path, capsys):
    image = REPO / "percepkit" / "assets" / "Set5" / "bird.png"
    code = run_cli(["stylize", "candy", str(image), "-o", str(tmp_path / "o.png"),
                    "--precision", "fp16"])
    err = capsys.readouterr().err
    assert code == 2 and "fp16 autocast is CUDA-only" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


# -- metrics -----------------------------------------------------------------------------------
def test_metric_networks_run_in_bf16_and_say_so(real_weights_dir, monkeypatch):
    from percepkit.data.images import read_image
    from percepkit.evaluation.evaluate import build_metrics

    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    hr = read_image(REPO / "percepkit" / "assets" / "Set5" / "baby.png")[None, :, :96, :96]
    out = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    names = ["psnr", "lpips"]
    fp32, info32 = build_metrics(names)
    with pytest.warns(UserWarning) if not P.cpu_has_bf16_units() else _nothing():
        bf16, info16 = build_metrics(names, precision="bf16")
    assert bf16["lpips"].precision.name == "bf16" and bf16["psnr"].precision is None
    assert "bf16 autocast" in info16[1].convention and "bf16" not in info16[0].convention
    assert "bf16" not in info32[1].convention
    with torch.inference_mode():
        a, b = fp32["lpips"](out, hr).item(), bf16["lpips"](out, hr).item()
        assert fp32["psnr"](out, hr).item() == bf16["psnr"](out, hr).item()
    assert a != b and abs(a - b) < 5e-3
