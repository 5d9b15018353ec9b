"""The speed-table benchmark: plumbing at tiny sizes (speed itself is measured in benchmarks/)."""

from __future__ import annotations

import json

import pytest
import torch

from percepkit.bench import PAPER_TITAN_X, conv_flops, matmul_throughput, run_bench
from percepkit.cli import main
from percepkit.transforms import JohnsonStyle


def test_conv_flops_of_the_papers_style_net_by_hand():
    # per output pixel of each layer: c9s1-32, d64, d128, 10 x R128 convs, u64, u32, c9s1-3
    s = 64
    macs = (3 * 32 * 81 * s * s + 32 * 64 * 9 * (s // 2) ** 2 + 64 * 128 * 9 * (s // 4) ** 2
            + 10 * 128 * 128 * 9 * (s // 4) ** 2
            + 128 * 64 * 9 * (s // 4) ** 2 + 64 * 32 * 9 * (s // 2) ** 2  # transposed: per input
            + 32 * 3 * 81 * s * s)
    assert conv_flops(JohnsonStyle().eval(), s, s) == pytest.approx(2 * macs)


def test_matmul_throughput_is_positive():
    assert matmul_throughput(torch.device("cpu"), n=64, max_seconds=0.1) > 0


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
        assert r.fraction_of_matmul > 0
    assert result.notes and "projected" in result.notes[0]
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
