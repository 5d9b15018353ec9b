"""The denoise, deblur and jpeg tasks: recipes check and train, eval --task scores the protocol.

Networks here are trained for two steps from random initialisation: plumbing only, not quality.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console

from percepkit.data.images import write_image
from percepkit.errors import PercepkitError
from percepkit.evaluation.protocols import make_protocol
from percepkit.recipes.recipe import load_recipe, recipe_from_mapping
from percepkit.registry import DATASETS, TASKS, TRANSFORMS
from percepkit.train import Trainer

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["denoise_sigma25", "deblur_gauss", "jpeg_q20"]
TINY = ["train.iterations=2", "train.batch_size=2", "train.workers=0", "train.log_every=1",
        "train.val_every=2", "train.sample_every=2", "train.val_images=1",
        "train.sample_images=1", "checkpoint.every=2", "data.train.patch_size=32",
        "transform.depth=3", "transform.channels=8"]


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory) -> Path:
    """Four 40x40 crops of the shipped Set5 (8-bit PNG): a tiny training set."""
    folder = tmp_path_factory.mktemp("clean")
    ds = DATASETS.build({"name": "set5", "scale": 1})
    for i in range(4):
        write_image(folder / f"img{i}.png", ds.sample(i).hr[:, :40, :40])
    return folder


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _train(recipe: str, out: Path, *overrides: str) -> tuple[Trainer, object]:
    rec = load_recipe(REPO / "recipes" / f"{recipe}.yaml", [*TINY, *overrides])
    trainer = Trainer(rec, out=out, console=quiet(), progress=False)
    return trainer, trainer.run()


def test_tasks_are_registered_with_their_protocols():
    assert {"sr", "style", "denoise", "deblur", "jpeg"} <= set(TASKS.names())
    assert TASKS.get("denoise").eval_channel == "rgb"
    assert TASKS.get("deblur").eval_channel == "rgb"
    assert TASKS.get("jpeg").eval_channel == "y"
    for name in ("denoise", "deblur", "jpeg"):
        task = TASKS.get(name)
        assert task.eval_baseline == "identity" and task.eval_crop_border(4) == 0
    assert TASKS.get("denoise").with_level(sigma=50).eval_protocol().level == {"sigma": 50.0}
    levin = TASKS.get("deblur").with_level(kernel="levin09:2")
    assert levin.eval_protocol().level == {"kernel": "levin09:2", "noise": 2.55}
    assert levin.protocol == "deblur kernel levin09:2 noise 2.55"
    with pytest.raises(PercepkitError, match="--quality does not apply to the denoise task"):
        TASKS.get("denoise").with_level(quality=20)
    with pytest.raises(PercepkitError, match="--sigma does not apply to the sr task"):
        TASKS.get("sr").with_level(sigma=25)


@pytest.mark.parametrize("recipe", RECIPES + [f"{r}_feat" for r in RECIPES])
def test_recipes_pass_recipe_check(recipe, clean_folder):
    assert run_cli(["recipe", "check", str(REPO / "recipes" / f"{recipe}.yaml"),
                    "--set", f"data.train.root={clean_folder}"]) == 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_random_init_recipes_train_two_steps_on_tiny_data(recipe, clean_folder, tmp_path):
    trainer, result = _train(recipe, tmp_path / "run", f"data.train.root={clean_folder}")
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    val = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert val[0].split(",")[1:3] == ["psnr", "ssim"]
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    assert trainer.task.protocol.task == recipe.split("_")[0]


@pytest.mark.parametrize("recipe", [f"{r}_feat" for r in RECIPES])
def test_random_init_feat_recipes_train_and_select_by_lpips(recipe, clean_folder, tmp_path,
                                                             real_weights_dir, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(real_weights_dir))
    trainer, _ = _train(recipe, tmp_path / "run", f"data.train.root={clean_folder}")
    assert trainer.task.metric == "lpips" and not trainer.task.higher_is_better
    assert "lpips" in (tmp_path / "run" / "val.csv").read_text().splitlines()[0]


def test_random_init_denoiser_trains_on_a_paired_folder(clean_folder, tmp_path):
    noisy = tmp_path / "noisy"
    protocol = make_protocol("denoise", sigma=25)
    for path in sorted(clean_folder.glob("*.png")):
        from percepkit.data.images import read_image

        clean = read_image(path)
        write_image(noisy / path.name, protocol.degrade(clean, path.stem)
                    .clamp(0, 1))
    pair = (f"data.train={{name: paired_folder, lr_root: {noisy}, hr_root: {clean_folder}, "
            f"scale: 1, patch_size: 32}}")
    _, result = _train("denoise_sigma25", tmp_path / "run", pair)
    assert len(result.losses) == 2


def _raw(**changes) -> dict:
    raw = {"task": "denoise", "transform": {"name": "dncnn", "depth": 3, "channels": 8},
           "losses": [{"name": "pixel"}],
           "data": {"train": {"name": "synthetic", "count": 4, "size": 32, "scale": 1,
                              "degradations": [{"name": "gaussian_noise", "sigma": 25}]},
                    "val": {"name": "set5", "scale": 1}},
           "train": {"iterations": 1, "device": "cpu"}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, needle", [
    ({"val": {"protocol": {"quality": 20}}}, "val.protocol: unknown key 'quality'"),
    ({"val": {"protocol": {"sigma": 400}}}, "sigma must be a number between 0 and 255"),
    ({"data": {"train": {"name": "synthetic", "count": 4, "size": 32, "scale": 1}}},
     "data.train.degradations: a denoise recipe"),
    ({"transform": {"name": "johnson_sr", "scale": 4}}, "x4 super-resolution network"),
])
def test_bad_restoration_recipes_are_refused(changes, needle):
    with pytest.raises(PercepkitError, match=needle):
        recipe_from_mapping(_raw(**changes), check_files=True)


def test_an_sr_net_at_scale_one_is_accepted():
    recipe_from_mapping(_raw(transform={"name": "johnson_sr", "scale": 1, "skip": True}),
                        check_files=True)


def _eval(args: list[str]) -> int:
    return run_cli(["eval", *args])


def test_eval_task_on_a_tiny_folder_writes_the_protocol(clean_folder, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert _eval(["--task", "denoise", "--sigma", "15", "--hr-dir", str(clean_folder),
                  "--metrics", "psnr,ssim", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["task"] == "denoise" and d["protocol"] == "denoise sigma 15"
    assert "N(0, (15/255)^2)" in d["convention"]["data"]
    assert "neither clipped nor rounded" in d["convention"]["data"]
    assert set(d["sets"][0]["mean"]) == {"psnr_rgb", "ssim_rgb"}
    assert "0 px border cropped" in d["convention"]["metrics"]["psnr_rgb"]
    # scored as an 8-bit output of the identity: noisy input clipped and rounded
    assert 24 < d["sets"][0]["mean"]["psnr_rgb"] < 27.5
    out_j = tmp_path / "j.json"
    assert _eval(["--task", "jpeg", "--quality", "10", "--hr-dir", str(clean_folder),
                  "--metrics", "psnr", "--json", str(out_j)]) == 0
    j = json.loads(out_j.read_text())
    assert j["protocol"] == "jpeg quality 10" and set(j["sets"][0]["mean"]) == {"psnr"}
    assert "on Y (BT.601" in j["convention"]["data"]
    assert "MATLAB rgb2ycbcr" in j["convention"]["metrics"]["psnr"]
    assert "0 px border cropped" in j["convention"]["metrics"]["psnr"]


def test_eval_scores_the_same_inputs_twice(clean_folder, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        assert _eval(["--task", "deblur", "--hr-dir", str(clean_folder), "--metrics", "psnr",
                      "--json", str(path)]) == 0
    ra, rb = (json.loads(p.read_text())["sets"][0]["per_image"] for p in (a, b))
    assert ra == rb and len({r["psnr_rgb"] for r in ra}) == len(ra)


def test_eval_checkpoint_of_the_task_scores_and_another_task_is_refused(clean_folder, tmp_path,
                                                                         capsys):
    _train("denoise_sigma25", tmp_path / "run", f"data.train.root={clean_folder}")
    ckpt = tmp_path / "run" / "checkpoints" / "best.safetensors"
    out = tmp_path / "m.json"
    assert _eval(["--task", "denoise", "--hr-dir", str(clean_folder), "--metrics", "psnr",
                  "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == "best"
    capsys.readouterr()
    refused = tmp_path / "r.json"
    assert _eval(["--task", "jpeg", "--hr-dir", str(clean_folder), "--checkpoint", str(ckpt),
                  "--json", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "trained for the 'denoise' task" in err and "Traceback" not in err
    assert not refused.exists()
    assert _eval(["--task", "sr", "--hr-dir", str(clean_folder), "--checkpoint",
                  str(ckpt)]) == 2


def test_eval_refuses_levels_and_scales_that_do_not_apply(clean_folder, capsys):
    assert _eval(["--task", "denoise", "--quality", "20", "--hr-dir", str(clean_folder)]) == 2
    assert "--quality does not apply" in capsys.readouterr().err
    assert _eval(["--task", "jpeg", "--scale", "4", "--hr-dir", str(clean_folder)]) == 2
    assert "scale 1" in capsys.readouterr().err
    assert _eval(["--task", "denoise", "--model", "johnson_style", "--hr-dir",
                  str(clean_folder)]) == 2
    assert "'style' network" in capsys.readouterr().err


def test_restoration_transforms_build_for_eval():
    assert TRANSFORMS.build({"name": "identity", "scale": 1}).scale == 1
    with pytest.raises(ValueError, match="scale must be 1"):
        TRANSFORMS.build({"name": "dncnn", "scale": 2})


def test_eval_task_with_given_input_files_scores_those_files(clean_folder, tmp_path):
    """--lr-dir inputs are scored as given, not degraded again by the protocol."""
    from percepkit.data.degradations import jpeg_roundtrip
    from percepkit.data.images import read_image
    from percepkit.metrics import psnr

    given = tmp_path / "given"
    expected = []
    for path in sorted(clean_folder.glob("*.png")):
        clean = read_image(path)
        degraded = jpeg_roundtrip(clean, 10)
        write_image(given / path.name, degraded)
        expected.append(float(psnr(channel="rgb")(read_image(given / path.name)[None],
                                                  clean[None])))
    out = tmp_path / "g.json"
    assert _eval(["--task", "denoise", "--hr-dir", str(clean_folder), "--lr-dir", str(given),
                  "--scale", "1", "--metrics", "psnr", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    got = [r["psnr_rgb"] for r in d["sets"][0]["per_image"]]
    assert got == pytest.approx(expected, abs=1e-9)
    assert "inputs = the given files (--lr-dir" in d["convention"]["data"]
