"""``percepkit score SR HR``: images you already have, scored with eval's code and conventions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image

from percepkit.errors import PercepkitError
from percepkit.evaluation.score import Pair, match_pairs, read_pair


def _rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    assert not any(line.startswith("#") for line in text.splitlines())
    return list(csv.DictReader(text.splitlines()))


def _noise(path: Path, h: int, w: int, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w, 4) if mode == "RGBA" else (h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture(scope="module")
def set5_eval(tmp_path_factory):
    """``percepkit eval --set5`` (bicubic x4, PSNR/SSIM) with its images and results files."""
    out = tmp_path_factory.mktemp("eval")
    code = run_cli(["eval", "--set5", "--metrics", "psnr,ssim", "--save-images",
                    str(out / "images"), "--csv", str(out / "e.csv"), "--json",
                    str(out / "e.json")])
    assert code == 0
    return out


def _set5_hr() -> str:
    from percepkit.registry import DATASETS

    return DATASETS.build({"name": "set5"}).source


def test_score_reproduces_eval_on_set5_exactly(set5_eval, tmp_path):
    sr = set5_eval / "images" / "set5" / "sr"
    assert sorted(p.stem for p in sr.glob("*.png")) == ["baby", "bird", "butterfly", "head",
                                                        "woman"]
    code = run_cli(["score", str(sr), _set5_hr(), "--mod-crop", "4", "--crop-border", "4",
                    "--metrics", "psnr,ssim", "--csv", str(tmp_path / "s.csv"),
                    "--json", str(tmp_path / "s.json")])
    assert code == 0
    ev, sc = _rows(set5_eval / "e.csv"), _rows(tmp_path / "s.csv")
    assert list(ev[0]) == ["set", "image", "psnr", "ssim"]
    assert list(sc[0]) == ["image", "sr", "hr", "psnr", "ssim"]
    assert [(r["image"], r["psnr"], r["ssim"]) for r in ev] == \
        [(r["image"], r["psnr"], r["ssim"]) for r in sc]  # every digit, the MEAN row included
    assert 28.42 < float(sc[-1]["psnr"]) < 28.44
    mean = json.loads((tmp_path / "s.json").read_text())["mean"]
    assert mean == json.loads((set5_eval / "e.json").read_text())["sets"][0]["mean"]


def test_csv_sidecars_state_the_convention(set5_eval, tmp_path):
    side = json.loads((set5_eval / "e.conventions.json").read_text())
    assert side["csv"] == "e.csv" and side["scale"] == 4
    assert "imresize" in side["convention"]["data"]
    assert "per_image" not in side["sets"][0] and "MEAN" in side["columns"]["image"]
    sr = set5_eval / "images" / "set5" / "sr"
    assert run_cli(["score", str(sr / "baby.png"), str(Path(_set5_hr()) / "baby.png"),
                    "--metrics", "psnr", "--crop-border", "4", "--csv",
                    str(tmp_path / "one.csv")]) == 0
    side = json.loads((tmp_path / "one.conventions.json").read_text())
    assert side["command"] == "score" and side["crop_border"] == 4
    assert "4 px border cropped" in side["convention"]["metrics"]["psnr"]


def test_odd_images_are_read_as_eval_reads_them(tmp_path):
    hr = tmp_path / "hr"
    _noise(hr / "rgb.png", 42, 51, 0)
    _noise(hr / "gray.png", 36, 40, 1, "L")
    _noise(hr / "alpha.png", 30, 38, 2, "RGBA")
    deep = np.random.default_rng(3).integers(0, 65536, (34, 36), dtype=np.uint16)
    Image.fromarray(deep).save(hr / "deep.png")  # 16-bit grayscale
    assert Image.open(hr / "deep.png").mode.startswith("I")
    assert run_cli(["eval", "--hr-dir", str(hr), "--scale", "2", "--metrics", "psnr,ssim",
                    "--save-images", str(tmp_path / "g"), "--csv", str(tmp_path / "e.csv")]) == 0
    assert run_cli(["score", str(tmp_path / "g" / "hr" / "sr"), str(hr), "--mod-crop", "2",
                    "--crop-border", "2", "--metrics", "psnr,ssim", "--csv",
                    str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")]) == 0
    ev, sc = _rows(tmp_path / "e.csv"), _rows(tmp_path / "s.csv")
    assert len(ev) == 5  # four images and the mean
    assert [(r["image"], r["psnr"], r["ssim"]) for r in ev] == \
        [(r["image"], r["psnr"], r["ssim"]) for r in sc]
    notes = {r["name"]: r.get("notes", []) for r in
             json.loads((tmp_path / "s.json").read_text())["per_image"]}
    assert "HR: alpha channel ignored" in notes["alpha"]
    assert "HR: 16-bit image rounded to 8 bits" in notes["deep"]


def test_basicsr_suffixes_pair_with_the_longest_stem(tmp_path):
    hr, sr = tmp_path / "hr", tmp_path / "sr"
    for name in ("baby", "bird", "img_1", "img_10", "woman"):
        _noise(hr / f"{name}.png", 16, 16, 0)
    for name in ("baby_x4_SR", "bird", "img_10_SR", "img_1-x4", "extra", "bird_x4_SR"):
        _noise(sr / f"{name}.png", 16, 16, 0)
    pairs, unmatched = match_pairs(sr, hr)
    assert [(p.name, p.sr.name) for p in pairs] == [
        ("baby", "baby_x4_SR.png"), ("bird", "bird.png"), ("img_1", "img_1-x4.png"),
        ("img_10", "img_10_SR.png")]
    assert sorted(unmatched) == [
        "HR woman.png: no SR image for it in " + str(sr),
        "SR bird_x4_SR.png: HR bird.png already goes with bird.png",
        f"SR extra.png: no HR image named extra.* or a prefix of it followed by _, - or . in "
        f"{hr}"]


def test_several_prefix_matches_score_none_of_them(tmp_path):
    _noise(tmp_path / "hr" / "baby.png", 16, 16, 0)
    _noise(tmp_path / "hr" / "bird.png", 16, 16, 0)
    for name in ("baby_a", "baby_b", "bird_SR"):
        _noise(tmp_path / "sr" / f"{name}.png", 16, 16, 0)
    pairs, unmatched = match_pairs(tmp_path / "sr", tmp_path / "hr")
    assert [p.name for p in pairs] == ["bird"]
    assert len(unmatched) == 3 and all("2 SR files match HR baby.png" in u for u in unmatched[:2])


def test_nothing_matching_is_one_paragraph_exit_2(tmp_path, capsys):
    _noise(tmp_path / "hr" / "a.png", 16, 16, 0)
    _noise(tmp_path / "sr" / "b.png", 16, 16, 0)
    assert run_cli(["score", str(tmp_path / "sr"), str(tmp_path / "hr")]) == 2
    err = capsys.readouterr().err
    assert "no SR image in" in err and "b.png vs a.png" in err and "Traceback" not in err
    assert run_cli(["score", str(tmp_path / "nope"), str(tmp_path / "hr")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_size_mismatch_is_one_line_and_the_other_pairs_are_scored(tmp_path, capsys):
    _noise(tmp_path / "hr" / "a.png", 32, 34, 0)
    _noise(tmp_path / "sr" / "a.png", 32, 32, 0)
    _noise(tmp_path / "hr" / "b.png", 32, 32, 1)
    _noise(tmp_path / "sr" / "b.png", 32, 32, 2)
    assert run_cli(["score", str(tmp_path / "sr"), str(tmp_path / "hr"), "--metrics", "psnr",
                    "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "skipped a.png: SR is 32x32 but HR a.png is 34x32; sizes must be equal" in \
        out.replace("\n", " ")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in data["per_image"]] == ["b"] and data["skipped"][0]["file"] == "a.png"
    # --mod-crop 4 crops the 34-wide HR to 32: now both pairs are scored
    assert run_cli(["score", str(tmp_path / "sr"), str(tmp_path / "hr"), "--metrics", "psnr",
                    "--mod-crop", "4", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 2


def _y(arr: np.ndarray) -> np.ndarray:
    rgb = arr.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def test_two_files_psnr_matches_a_hand_computation(tmp_path):
    sr, hr = _noise(tmp_path / "x.png", 24, 20, 0), _noise(tmp_path / "y.png", 24, 20, 1)
    assert run_cli(["score", str(sr), str(hr), "--metrics", "psnr", "--crop-border", "3",
                    "--json", str(tmp_path / "r.json")]) == 0
    a, b = (_y(np.asarray(Image.open(p)))[3:-3, 3:-3] for p in (sr, hr))
    expected = 10 * math.log10(255.0**2 / np.mean((a - b) ** 2))
    data = json.loads((tmp_path / "r.json").read_text())
    # percepkit reads 8-bit values as float32 k/255 (as eval does): ~1e-7 dB from float64 k/255
    assert data["per_image"][0]["psnr"] == pytest.approx(expected, abs=1e-6)
    assert data["per_image"][0]["name"] == "y"  # rows are named by the HR file
    assert run_cli(["score", str(hr), str(hr), "--metrics", "psnr", "--json",
                    str(tmp_path / "same.json"), "--csv", str(tmp_path / "same.csv")]) == 0
    assert json.loads((tmp_path / "same.json").read_text())["mean"]["psnr"] == "inf"
    assert _rows(tmp_path / "same.csv")[0]["psnr"] == "inf"


def test_channel_counts_are_reconciled_as_eval_does(tmp_path):
    gray = _noise(tmp_path / "gray.png", 16, 16, 0, "L")
    rgb = tmp_path / "rgb.png"
    Image.open(gray).convert("RGB").save(rgb)  # three equal channels
    sr, hr, notes = read_pair(Pair("gray", rgb, gray))
    assert sr.shape == hr.shape == (1, 16, 16) and bool((sr == hr).all())
    assert notes == ["3-channel SR reduced to luma for the 1-channel HR"]
    sr, hr, notes = read_pair(Pair("rgb", gray, rgb))
    assert sr.shape == hr.shape == (3, 16, 16) and bool((sr == hr).all())


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    missing = str(tmp_path / "not-there")
    assert run_cli(["score", missing, missing, "--json", str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_text() == "keep"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli(["score", missing, missing, "--csv", str(blocker / "r.csv")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unreadable_pair_is_skipped_with_its_reason(tmp_path, capsys):
    _noise(tmp_path / "hr" / "a.png", 16, 16, 0)
    _noise(tmp_path / "hr" / "b.png", 16, 16, 0)
    _noise(tmp_path / "sr" / "a.png", 16, 16, 1)
    (tmp_path / "sr" / "b.png").write_bytes(b"not a png")
    assert run_cli(["score", str(tmp_path / "sr"), str(tmp_path / "hr"), "--metrics",
                    "psnr"]) == 0
    out = capsys.readouterr().out
    assert "skipped b.png: not an image file" in out and "Traceback" not in out
    with pytest.raises(PercepkitError):
        match_pairs(tmp_path / "sr", tmp_path / "hr" / "a.png")  # folder vs one file


@pytest.mark.realweights
def test_lpips_is_whole_image_by_default_as_in_eval(real_weights_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    hr = tmp_path / "hr"
    for i in range(2):
        _noise(hr / f"im{i}.png", 48, 40, i)
    assert run_cli(["eval", "--hr-dir", str(hr), "--scale", "2", "--metrics", "psnr,lpips",
                    "--save-images", str(tmp_path / "g"), "--csv", str(tmp_path / "e.csv")]) == 0
    assert run_cli(["score", str(tmp_path / "g" / "hr" / "sr"), str(hr), "--crop-border", "2",
                    "--metrics", "psnr,lpips", "--csv", str(tmp_path / "s.csv")]) == 0
    ev, sc = _rows(tmp_path / "e.csv"), _rows(tmp_path / "s.csv")
    assert [(r["psnr"], r["lpips"]) for r in ev] == [(r["psnr"], r["lpips"]) for r in sc]
    side = json.loads((tmp_path / "s.conventions.json").read_text())
    assert "whole image" in side["convention"]["metrics"]["lpips"]
