"""``percepkit eval`` end to end: tables, JSON/CSV with the convention, LPIPS n/a, plugins, grids,
checkpoints, odd folders and user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from percepkit.cli import cli, main
from percepkit.metrics import Metric
from percepkit.registry import METRICS


def _run(*args: str):
    result = CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)
    return result


def test_set5_bicubic_json_csv_and_per_image(tmp_path, isolated_weights):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    r = _run("--set5", "--metrics", "psnr,ssim", "--per-image", "--json", str(out_json),
             "--csv", str(out_csv))
    assert r.exit_code == 0, r.output
    assert "28.43" in r.output and "baby" in r.output and "BT.601" in r.output
    data = json.loads(out_json.read_text())
    (s,) = data["sets"]
    assert s["name"] == "set5" and s["images"] == 5 and s["mod_crop"] == 4
    assert 28.42 <= s["mean"]["psnr"] <= 28.435 and s["mean"]["ssim"] == pytest.approx(0.811,
                                                                                     abs=0.0015)
    assert [row["name"] for row in s["per_image"]] == ["baby", "bird", "butterfly", "head",
                                                       "woman"]
    assert "65.481" in data["convention"]["metrics"]["psnr"]
    assert "imresize" in data["convention"]["data"]
    rows = list(csv.reader(out_csv.read_text().splitlines()))  # a plain table, header first
    assert rows[0] == ["set", "image", "psnr", "ssim"] and rows[-1][1] == "MEAN"
    assert float(rows[-1][2]) == pytest.approx(s["mean"]["psnr"])
    side = json.loads((tmp_path / "r.conventions.json").read_text())
    assert side["csv"] == "r.csv" and "10 log10" in side["convention"]["metrics"]["psnr"]


def test_lpips_without_weights_is_na_with_reason(tmp_path, isolated_weights):
    r = _run("--set5", "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    assert "n/a" in r.output and "LPIPS n/a" in r.output and "PERCEPKIT_WEIGHTS" in r.output
    data = json.loads((tmp_path / "r.json").read_text())
    lp = next(m for m in data["metrics"] if m["name"] == "lpips")
    assert lp["available"] is False and "PERCEPKIT_WEIGHTS" in lp["unavailable"]
    assert data["sets"][0]["mean"]["lpips"] is None
    assert data["sets"][0]["mean"]["psnr"] > 28


@pytest.mark.realweights
def test_lpips_with_real_weights_is_plausible(real_weights_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    r = _run("--set5", "--metrics", "lpips", "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    mean = json.loads((tmp_path / "r.json").read_text())["sets"][0]["mean"]["lpips"]
    assert round(mean, 4) == 0.3407  # bicubic x4 Set5, whole image: as printed in SPSR (2020)
    r = _run("--set5", "--metrics", "lpips", "--crop-lpips", "--json", str(tmp_path / "c.json"))
    data = json.loads((tmp_path / "c.json").read_text())
    assert round(data["sets"][0]["mean"]["lpips"], 4) == 0.3443  # 4 px border removed first
    assert "4 px border cropped" in data["convention"]["metrics"]["lpips"]


def test_plugin_metric_shows_up(tmp_path, isolated_weights):
    class MeanAbs(Metric):
        """Mean absolute error in 8-bit levels (a test plugin)."""

        name = "mae8"
        higher_is_better = False

        def __init__(self, crop_border: int = 0) -> None:
            super().__init__()
            self.crop_border = crop_border

        @property
        def convention(self) -> str:
            return f"mae8: mean |a-b| * 255 on RGB, {self.crop_border} px cropped"

        def forward(self, output, target):
            c = self.crop_border
            return ((output - target)[..., c:-c, c:-c].abs().flatten(1).mean(1) * 255).double()

    METRICS.add(MeanAbs, "mae8")
    try:
        r = _run("--set5", "--metrics", "psnr,mae8", "--json", str(tmp_path / "r.json"))
    finally:
        METRICS.remove("mae8")
    assert r.exit_code == 0, r.output
    assert "MAE8 ↓" in r.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert 0 < data["sets"][0]["mean"]["mae8"] < 20
    assert data["convention"]["metrics"]["mae8"].endswith("4 px cropped")


def _folder(path: Path, sizes=((40, 36), (28, 44))) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"im{i}.png")
    return path


def test_hr_dir_with_odd_files_and_grids(tmp_path, isolated_weights):
    hr = _folder(tmp_path / "hr")
    Image.fromarray(np.full((30, 30), 128, np.uint8), "L").save(hr / "gray.png")
    Image.new("RGB", (2, 50)).save(hr / "tiny.png")
    (hr / "junk.png").write_bytes(b"nope")
    grids = tmp_path / "grids"
    r = _run("--hr-dir", str(hr), "--scale", "2", "--metrics", "psnr,ssim", "--per-image",
             "--save-images", str(grids), "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "tiny.png" in r.output and "too small" in r.output
    assert "junk.png" in r.output and "Traceback" not in r.output
    data = json.loads((tmp_path / "r.json").read_text())
    (s,) = data["sets"]
    assert {row["name"] for row in s["per_image"]} == {"im0", "im1", "gray"}
    assert {sk["file"] for sk in s["skipped"]} == {"tiny.png", "junk.png"}
    written = sorted(p.name for p in (grids / "hr").glob("*.png"))
    assert written == ["gray.png", "im0.png", "im1.png"]
    grid = Image.open(grids / "hr" / "im0.png")
    assert grid.width > 2 * 36 and grid.height > 2 * 40  # two tiles side by side, zoom row below


def test_checkpoint_rebuilds_transform_and_checks_scale(tmp_path, isolated_weights):
    from percepkit.models.checkpoint import save_model
    from percepkit.registry import TRANSFORMS

    spec = {"name": "srcnn", "scale": 2, "channels": [8, 4]}
    torch.manual_seed(0)
    model = TRANSFORMS.build(spec)
    ckpt = save_model(tmp_path / "m.safetensors", model.state_dict(),
                      {"transform": spec})
    hr = _folder(tmp_path / "hr")
    r = _run("--checkpoint", str(ckpt), "--hr-dir", str(hr), "--metrics", "psnr",
             "--save-images", str(tmp_path / "g"), "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["scale"] == 2 and data["model"] == "m" and data["sets"][0]["images"] == 2
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(ckpt), "--scale", "4", "--hr-dir", str(hr)])
    assert e.value.code == 2


def test_model_by_name_warns_when_untrained(tmp_path, isolated_weights):
    hr = _folder(tmp_path / "hr")
    r = _run("--model", "srcnn", "--scale", "2", "--hr-dir", str(hr), "--metrics", "psnr")
    assert r.exit_code == 0, r.output
    assert "built from scratch" in r.output and "--checkpoint" in r.output


def test_json_to_stdout_is_clean(isolated_weights):
    r = _run("--set5", "--metrics", "psnr", "--json", "-")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["sets"][0]["name"] == "set5"


@pytest.mark.parametrize(("args", "message"), [
    (["--set14", "--no-download"], "put a folder named Set14/"),
    (["--lr-dir", "."], "--lr-dir needs --hr-dir"),
    (["--model", "bicubik"], "Did you mean 'bicubic'"),
    (["--model", "johnson_style"], "eval scores super-resolution models"),
    (["--metrics", "psnr,ssmi"], "Did you mean 'ssim'"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--metrics", ""], ""),
])
def test_user_errors_are_one_paragraph(args, message, capsys, monkeypatch, tmp_path,
                                       isolated_weights):
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        main(["eval", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and message in err


def test_json_output_is_checked_before_the_evaluation_runs(tmp_path, isolated_weights, capsys):
    from cli_runner import run_cli

    existing = tmp_path / "r.json"
    existing.write_text("{}")
    assert run_cli(["eval", "--set5", "--json", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "{}"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli(["eval", "--set5", "--csv", str(blocker / "r.csv")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert run_cli(["eval", "--set5", "--metrics", "psnr", "--json", str(existing),
                    "--overwrite"]) == 0
    assert json.loads(existing.read_text())["sets"][0]["mean"]["psnr"] > 28


# -- bad input: one paragraph, exit 2 --------------------------------------------------------------
def test_eval_with_given_lr_files_states_them_not_matlab_bicubic(tmp_path):
    """--lr-dir: the LR inputs are the given files, so the convention must not claim that
    they were made with MATLAB imresize (as it does for --hr-dir alone)."""
    from cli_runner import run_cli

    from percepkit.evaluation.evaluate import LR_GIVEN, LR_MADE

    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(
            tmp_path / "hr" / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(
            tmp_path / "lr" / f"{name}.png")
    for extra, want, not_want in ((["--lr-dir", str(tmp_path / "lr")], LR_GIVEN, LR_MADE),
                                  ([], LR_MADE, LR_GIVEN)):
        out = tmp_path / f"r{len(extra)}.json"
        assert run_cli(["eval", "--hr-dir", str(tmp_path / "hr"), *extra, "--scale", "2",
                        "--metrics", "psnr", "--json", str(out)]) == 0
        data = json.loads(out.read_text())["convention"]["data"]
        assert want in data and not_want not in data


def test_eval_bad_scale_for_a_model_and_save_images_under_a_file_are_one_paragraph(
        tmp_path, capsys):
    from cli_runner import run_cli

    assert run_cli(["eval", "--set5", "--model", "johnson_sr", "--scale", "5"]) == 2
    err = capsys.readouterr().err
    assert "power-of-two" in err and "scale 5" in err and "Traceback" not in err
    (tmp_path / "a_file").write_text("x")
    for target in (tmp_path / "a_file" / "grids", tmp_path / "a_file"):
        assert run_cli(["eval", "--set5", "--metrics", "psnr", "--save-images",
                        str(target)]) == 2
        err = capsys.readouterr().err
        assert "a_file" in err and "Traceback" not in err
    assert (tmp_path / "a_file").read_text() == "x"


def test_a_full_disk_while_saving_grids_or_results_is_one_paragraph(tmp_path, full_disk,
                                                                    capsys):
    from cli_runner import run_cli

    for match, args in (("grids", ["--save-images", str(tmp_path / "grids")]),
                        ("r.json", ["--json", str(tmp_path / "r.json")])):
        full_disk(match)
        assert run_cli(["eval", "--set5", "--metrics", "psnr", *args]) == 2
        err = capsys.readouterr().err.replace("\n", " ")
        assert match in err and "disk is full" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
