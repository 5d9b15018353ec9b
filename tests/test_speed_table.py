"""The speed-table benchmark: plumbing at tiny sizes (speed itself is measured in benchmarks/)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from percepkit.bench import speed_table
from percepkit.bench.speed_table import PAPER_TITAN_X, conv_flops, matmul_throughput, run_bench
from percepkit.cli import main
from percepkit.nets.transforms import JohnsonStyle


def test_conv_flops_of_the_papers_style_net_by_hand():
    # per output pixel of each layer: c9s1-32, d64, d128, 10 x R128 convs, u64, u32, c9s1-3
    s = 64
    macs = (3 * 32 * 81 * s * s + 32 * 64 * 9 * (s // 2) ** 2 + 64 * 128 * 9 * (s // 4) ** 2
            + 10 * 128 * 128 * 9 * (s // 4) ** 2
            + 128 * 64 * 9 * (s // 4) ** 2 + 64 * 32 * 9 * (s // 2) ** 2  # transposed: per input
            + 32 * 3 * 81 * s * s)
    assert conv_flops(JohnsonStyle().eval(), s, s) == pytest.approx(2 * macs)


def test_matmul_throughput_is_flops_over_the_best_time_within_the_time_allowed(monkeypatch):
    """A fake clock: the runs take 3, 1 and 2 s; 2 n^3 FLOP per product; the time allowed
    (15 s since the start) has passed after run 3."""
    clock = iter([0.0,              # start (then a warm-up product)
                  1.0, 4.0, 4.0,    # run 1: 3 s; 4 s since the start
                  4.0, 5.0, 5.0,    # run 2: 1 s, the best
                  5.0, 7.0, 16.0,   # run 3: 2 s; the clock then reads 16 s > 15 s: stop
                  16.0, 17.0, 17.0])  # a run 4, taken only if the limit were ignored
    now = [0.0]

    def perf_counter() -> float:
        now[0] = next(clock)
        return now[0]

    monkeypatch.setattr(speed_table, "time", types.SimpleNamespace(perf_counter=perf_counter))
    n = 16
    assert matmul_throughput(torch.device("cpu"), n=n, max_seconds=15.0) == 2 * n**3 / 1.0
    assert now[0] == 16.0  # stopped after run 3


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))


def test_run_bench_measures_and_projects():
    result = run_bench(sizes=(16, 24), iterations=(2, 5), device="cpu",
                       transform_name="johnson_style_fast", max_seconds=0.0, min_iters=2,
                       repeats=1, matmul_size=128)
    assert [r.size for r in result.rows] == [16, 24]
    for r in result.rows:
        assert r.iterations_timed == 2
        assert r.projected == {2: False, 5: True}
        assert r.optimization[5] == pytest.approx(r.optimization_setup
                                                  + 5 * r.seconds_per_iteration)
        assert r.optimization[5] > r.optimization[2] > 0
        assert r.speedup[5] == pytest.approx(r.optimization[5] / r.feedforward)
        assert r.images_per_second == pytest.approx(1 / r.feedforward)
        assert 0 < r.feedforward_min <= r.feedforward
        assert r.fraction_of_matmul > 0
    assert any(n.startswith("projected") for n in result.notes)
    assert result.precision == "fp32"


def test_bench_command_json(capsys):
    try:
        main(["bench", "--sizes", "16", "--iters", "1,2", "--max-seconds", "0", "--repeats", "1",
              "--transform", "johnson_style_fast", "--matmul-size", "128", "--json"])
    except SystemExit as e:
        assert not e.code
    data = json.loads(capsys.readouterr().out)
    row = data["rows"][0]
    assert row["size"] == 16 and set(row["optimization"]) == {"1", "2"}
    assert data["paper_titan_x"]["1024"]["speedup"]["500"] == PAPER_TITAN_X[1024]["speedup"][500]


def test_bench_command_table_and_bad_options(capsys):
    try:
        main(["bench", "--sizes", "16", "--iters", "1,3", "--max-seconds", "0", "--repeats", "1",
              "--transform", "johnson_style_fast", "--matmul-size", "128"])
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "feed-fwd" in out and "*" in out and "of matmul" in out
    with pytest.raises(SystemExit) as e:
        main(["bench", "--sizes", "big"])
    assert e.value.code == 2
    assert "--sizes" in capsys.readouterr().err


def test_timing_reports_best_median_and_spread():
    from percepkit.bench.speed_table import Timing

    t = Timing([0.2, 0.1, 0.4, 0.1, 0.15])
    assert t.min == 0.1 and t.median == 0.15
    assert t.spread == pytest.approx(0.5)


def test_matmul_probe_far_below_the_recorded_best_warns(tmp_path, monkeypatch):
    from percepkit.bench.speed_table import matmul_notes

    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path))
    assert matmul_notes("cpu X", "fp32", 100e9) == []  # first run: recorded, nothing to compare
    assert json.loads((tmp_path / "bench_peaks.json").read_text()) == {"cpu X fp32": 100e9}
    assert matmul_notes("cpu X", "fp32", 80e9) == []  # within the usual variation
    notes = matmul_notes("cpu X", "fp32", 40e9)
    assert len(notes) == 1 and notes[0].startswith("busy") and "40%" in notes[0]
    assert matmul_notes("cpu Y", "fp32", 10e9) == []  # another device has its own record
    matmul_notes("cpu X", "fp32", 120e9)  # a new best replaces the record
    assert json.loads((tmp_path / "bench_peaks.json").read_text())["cpu X fp32"] == 120e9
    (tmp_path / "bench_peaks.json").write_text("not json")
    assert matmul_notes("cpu X", "fp32", 1e9) == []  # a damaged record is replaced, not fatal


def test_a_loaded_machine_is_reported(monkeypatch):
    import os

    from percepkit.bench import speed_table as bench

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    notes = bench.busy_notes(torch.device("cpu"))
    assert len(notes) == 1 and "load average is 3.0 on 2 cores" in notes[0]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.2, 0.1))
    assert bench.busy_notes(torch.device("cpu")) == []


def test_bench_command_prints_busy_warnings(capsys, monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 2.0, 1.0))
    try:
        main(["bench", "--sizes", "16", "--iters", "1", "--max-seconds", "0", "--repeats", "2",
              "--transform", "johnson_style_fast", "--matmul-size", "64"])
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "warning" in out and "load average is 64.0" in out and "best" in out


def test_bench_train_reports_steps_and_images_per_second_random_init(capsys):
    """bench --train on the tiny recipe (random-weight loss network: plumbing, not speed)."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml"
    try:
        main(["bench", "--train", str(recipe), "--steps", "3", "--warmup", "1", "--json"])
    except SystemExit as e:
        assert not e.code
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == "tiny_sr" and data["batch_size"] == 4
    assert len(data["step_seconds"]) == 3 and all(t > 0 for t in data["step_seconds"])
    assert data["images_per_second"] == pytest.approx(4 * data["steps_per_second"])
    assert data["seconds_per_step_min"] <= data["seconds_per_step_median"]
    try:
        main(["bench", "--train", str(recipe), "--steps", "2", "--warmup", "1",
              "--set", "train.batch_size=2"])
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "Training speed: tiny_sr" in out and "images/s" in out


def test_peak_memory_sees_a_block_that_allocates_and_frees():
    """The resident size reached while a 200 MB tensor lived inside the block is the block's
    peak, although the tensor is freed before the block ends."""
    import time

    import torch

    from percepkit.bench.speed_table import PeakMemory

    if PeakMemory.current() is None:
        pytest.skip("no /proc/self/statm on this system: PeakMemory reports ru_maxrss")
    with PeakMemory(every=0.001) as mem:
        x = torch.ones(50 * 2**20)  # 200 MB, every page touched
        inside = PeakMemory.current()
        seen = mem.samples
        while mem.samples < seen + 2:  # a whole sample taken while x lives, however slow
            time.sleep(0.001)
        del x
    assert mem.bytes >= inside - 2**20
