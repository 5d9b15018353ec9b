"""Paired folders: matching by stem, size checks and their one-paragraph errors, aligned seeded
crops, meta_info lists, and training/validation on a tiny generated paired folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image
from rich.console import Console

from percepkit.data.paired import match_pairs, paired_folder
from percepkit.errors import PercepkitError, RecipeError
from percepkit.recipes.recipe import load_recipe

TINY_SR = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sr.yaml"


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_pairs(root: Path, names: dict[str, str], size: tuple[int, int] = (64, 48),
               scale: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """HR images ``name.png`` and their box-downsampled LR files (``names``: HR stem -> LR
    file name), written as 8-bit PNGs."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = root / "hr", root / "lr"
    for stem, lr_name in names.items():
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3)).astype(np.float32)
        hr = np.asarray(Image.fromarray(small.astype(np.uint8)).resize(size, Image.BICUBIC))
        _save(hr_dir / f"{stem}.png", hr)
        t = torch.from_numpy(hr.astype(np.float32)).permute(2, 0, 1)[None]
        lr = torch.nn.functional.avg_pool2d(t, scale)[0].permute(1, 2, 0).round().byte().numpy()
        _save(lr_dir / lr_name, lr)
    return lr_dir, hr_dir


def test_basicsr_names_match(tmp_path):
    lr, hr = make_pairs(tmp_path, {"baby": "baby_x4.png", "bird": "birdx4.png",
                                   "butterfly": "butterfly_LRBICx4.png",
                                   "head": "head_LR.png", "woman": "woman.png"})
    pairs = match_pairs(str(lr), str(hr), 4)
    assert [(a.name, b.name) for a, b in pairs] == [
        ("baby_x4.png", "baby.png"), ("birdx4.png", "bird.png"),
        ("butterfly_LRBICx4.png", "butterfly.png"), ("head_LR.png", "head.png"),
        ("woman.png", "woman.png")]


def test_unmatched_files_and_size_mismatches_are_one_paragraph(tmp_path):
    lr, hr = make_pairs(tmp_path, {"a": "a_x4.png", "b": "b_x4.png", "c": "c_x4.png"})
    (lr / "c_x4.png").rename(lr / "stray_x4.png")  # c has no input; stray has no target
    _save(lr / "b_x4.png", np.zeros((12, 15, 3), np.uint8))  # 60x48 target needs 16x12
    with pytest.raises(PercepkitError) as info:
        match_pairs(str(lr), str(hr), 4)
    text = str(info.value)
    assert "\n" not in text
    assert "1 target(s) in" in text and "have no input" in text and "(c.png)" in text
    assert "1 input(s) in" in text and "(stray_x4.png)" in text
    assert "1 pair(s) where the target is not 4 x the input" in text
    assert "b_x4.png 15x12 vs b.png 64x48" in text
    assert "baby_x4.png goes with baby.png" in text
    with pytest.raises(PercepkitError, match=r"hr_root .*nowhere: no such folder"):
        match_pairs(str(lr), str(tmp_path / "nowhere"), 4)


def test_a_target_is_allowed_its_crop_to_a_multiple_of_the_scale(tmp_path):
    lr, hr = make_pairs(tmp_path, {"a": "a.png"}, size=(64, 48))
    _save(hr / "a.png", np.zeros((51, 67, 3), np.uint8))  # BSD100-like: 67x51 -> 64x48
    ds = paired_folder(str(lr), str(hr), scale=4)
    item = ds[0]
    assert item["hr"].shape == (3, 48, 64) and item["lr"].shape == (3, 12, 16)
    assert item["name"] == "a"


def test_meta_info_names_the_pairs(tmp_path):
    lr, hr = make_pairs(tmp_path, {"a": "a_x4.png", "b": "b_x4.png", "c": "other.png"})
    meta = tmp_path / "meta.txt"
    meta.write_text("# pairs\na.png (48,64,3)\n\nc.png other.png\n")
    pairs = match_pairs(str(lr), str(hr), 4, meta_info=str(meta))
    assert [(a.name, b.name) for a, b in pairs] == [("a_x4.png", "a.png"),
                                                    ("other.png", "c.png")]
    meta.write_text("a.png\nmissing.png\n")
    with pytest.raises(PercepkitError, match=r"1 file\(s\) named in meta_info .*missing\.png\)"):
        match_pairs(str(lr), str(hr), 4, meta_info=str(meta))


def test_crops_are_aligned_and_seeded_by_the_key(tmp_path):
    lr, hr = make_pairs(tmp_path, {"a": "a_x4.png", "b": "b_x4.png"}, size=(96, 80))
    ds = paired_folder(str(lr), str(hr), scale=4, patch_size=32, flip=True, rot90=True)
    seen = set()
    for seed in range(12):
        item = ds[(1, seed)]
        assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
        # the input is the 4x4 box average of the target crop: the crops are aligned
        pooled = torch.nn.functional.avg_pool2d(item["hr"][None], 4)[0]
        assert float((pooled - item["lr"]).abs().max()) <= 1 / 255 + 1e-6
        assert torch.equal(item["hr"], ds[(1, seed)]["hr"])
        seen.add(item["hr"].sum().item())
    assert len(seen) > 6  # crops, flips and rotations differ between keys
    with pytest.raises(PercepkitError, match="multiple of scale"):
        paired_folder(str(lr), str(hr), scale=4, patch_size=30)


def test_recipe_check_accepts_paired_folder_for_training_and_validation(tmp_path, capsys):
    spec = "data.train={name: paired_folder, lr_root: L, hr_root: H, scale: 4}"
    assert run_cli(["recipe", "check", str(TINY_SR), "--skip-data", "--set", spec]) == 0
    assert run_cli(["recipe", "check", str(TINY_SR), "--set", spec]) == 2
    err = capsys.readouterr().err
    assert "data.train.lr_root: L: no such folder" in err and "evaluation set" not in err
    with pytest.raises(RecipeError, match=r"data.train.scale: 2 is not the transform's scale 4"):
        load_recipe(TINY_SR, ["data.train={name: paired_folder, lr_root: L, hr_root: H, "
                              "scale: 2}"])


def test_training_and_validation_on_a_paired_folder(tmp_path):
    """A few steps of tiny_sr (random-init network: plumbing only) on a generated paired folder,
    validated on its whole images."""
    from percepkit.train import Trainer

    lr, hr = make_pairs(tmp_path, {f"im{i}": f"im{i}_x4.png" for i in range(4)}, size=(64, 48))
    overrides = [
        f"data.train={{name: paired_folder, lr_root: '{lr}', hr_root: '{hr}', scale: 4, "
        f"patch_size: 32, rot90: true}}",
        f"data.val={{name: paired_folder, lr_root: '{lr}', hr_root: '{hr}', scale: 4}}",
        "train.iterations=4", "train.val_every=2", "train.sample_every=1000", "train.log_every=1",
        "checkpoint.every=4"]
    recipe = load_recipe(TINY_SR, overrides, check_files=True)
    out = tmp_path / "run"
    result = Trainer(recipe, out=out, console=Console(file=io.StringIO()),
                     progress=False).run()
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    val = (out / "val.csv").read_text().splitlines()
    assert val[0].startswith("step") and "psnr" in val[0] and len(val) == 3
