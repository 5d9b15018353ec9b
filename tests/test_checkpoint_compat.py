"""Checkpoints of the previous release (0.2.0, ``tests/data/v0.2``) load and resume with today's
code: the metadata they lack (``precision``, ``elapsed_sec``) and the ``amp`` key they have are
handled, and the resumed run ends where the 0.2 run ended."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from percepkit.models.checkpoint import Checkpoint, load_checkpoint, load_transform

FIXTURES = Path(__file__).resolve().parent / "data" / "v0.2"


def test_a_02_checkpoint_is_a_02_checkpoint():
    meta = Checkpoint.read(FIXTURES / "tiny_sr_step2.safetensors").meta
    assert meta["percepkit_version"] == "0.2.0" and "amp" in meta and "precision" not in meta


def test_02_checkpoints_load_as_transforms():
    for name in ("tiny_sr_step2", "tiny_sr_step4"):
        net = load_transform(FIXTURES / f"{name}.safetensors")
        with torch.no_grad():
            y = net(torch.rand(1, 3, 12, 12))
        assert y.shape[-2:] == (48, 48) and torch.isfinite(y).all()


def test_a_02_run_resumes_to_the_02_runs_end(tmp_path):
    # a subprocess with the 0.2 run's thread count: float reductions in the same order
    out = tmp_path / "resumed"
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(2)
        from percepkit.cli import main
        main(["train", "--resume", {str(FIXTURES / "tiny_sr_step2.safetensors")!r},
              "--out", {str(out)!r}, "--no-progress"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    resumed = load_checkpoint(out / "checkpoints" / "step_00000004.safetensors")
    expected = load_checkpoint(FIXTURES / "tiny_sr_step4.safetensors")[0]["model"]
    got = resumed[0]["model"]
    assert got.keys() == expected.keys()
    # bit-exact with 2 threads on the machine that made them; another CPU's kernels (an AVX-512
    # Xeon with AMX) sum in another order: one weight of 2304 off by 2.5e-6 there
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-3, atol=1e-5)
    assert resumed[1]["step"] == 4 and resumed[1]["precision"] == "fp32"
