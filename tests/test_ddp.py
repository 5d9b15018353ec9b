"""Multi-process training with torchrun on CPU (gloo): 2 processes x batch 2 == 1 x batch 4."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from rich.console import Console

from percepkit.models.checkpoint import load_checkpoint
from percepkit.recipes.recipe import load_recipe
from percepkit.train import Trainer, find_checkpoints

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
# no batch norm: per-process BN statistics would (rightly) differ from one process's
COMMON = ["transform.norm=none", "train.log_every=1", "train.val_every=4",
          "train.sample_every=1000", "checkpoint.every=4", "checkpoint.keep_last=0"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "percepkit.cli", "train", *args, "--no-progress", "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)  # hang guard


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    out = tmp_path / "ddp"
    sets = [a for s in [*COMMON, "train.batch_size=2", "train.iterations=4"] for a in ("--set", s)]
    proc = torchrun(str(TINY_SR), "--out", str(out), *sets)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x 2 processes" in proc.stdout
    assert proc.stdout.count("step 4/4") == 1  # rank 0 logs, rank 1 is quiet

    sets = [a for s in [*COMMON, "train.batch_size=2", "train.iterations=8"] for a in ("--set", s)]
    proc = torchrun("--resume", str(out), *sets)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming at step 4" in proc.stdout

    assert [s for s, _ in find_checkpoints(out)] == [8, 4]
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(i) for i in range(1, 9)]  # one writer
    state, meta = load_checkpoint(out / "checkpoints" / "step_00000008.safetensors")
    assert meta["world_size"] == 2 and set(state["rng"]) == {"rank0", "rank1"}

    rec = load_recipe(TINY_SR, [*COMMON, "train.batch_size=4", "train.iterations=8"])
    single = Trainer(rec, out=tmp_path / "single", console=Console(file=io.StringIO()),
                     progress=False).run()
    ddp_losses = [float(r.split(",")[3]) for r in rows]
    assert ddp_losses == pytest.approx(single.losses, rel=1e-4)
    ref = load_checkpoint(single.last_checkpoint)[0]["model"]
    for key, value in ref.items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-4, atol=1e-5)
