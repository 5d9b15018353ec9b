"""Tasks: the TASKS registry, a plugin task end to end, validation metrics and best-checkpoint
selection (val.metrics, train.best), checkpoints of another task, eval --task."""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console

import percepkit.registry as reg
from percepkit.cli import main
from percepkit.errors import PercepkitError, RecipeError
from percepkit.models.checkpoint import load_checkpoint
from percepkit.recipes.recipe import load_recipe
from percepkit.recipes.schema import recipe_schema
from percepkit.registry import TASKS
from percepkit.train import Trainer
from percepkit.train.tasks import (
    SRTask,
    StyleTask,
    check_checkpoint_task,
    make_task,
    metric_direction,
)

REPO = Path(__file__).resolve().parents[1]
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"
QUIET = ["train.log_every=1", "train.sample_every=1000", "checkpoint.keep_last=0"]


def run(out: Path | None, *overrides: str, recipe: Path = TINY_SR, console: Console | None = None,
        **kwargs):
    rec = load_recipe(recipe, [*QUIET, *overrides])
    return Trainer(rec, out=out, console=console or Console(file=io.StringIO(), width=200),
                   progress=False, **kwargs).run()


def val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "val.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sr_and_style_are_the_registered_tasks():
    assert {"sr", "style"} <= set(TASKS.list())
    assert TASKS.get("sr") is SRTask and TASKS.get("style") is StyleTask
    assert SRTask.protocol == "sr_bicubic" and StyleTask.protocol is None
    assert recipe_schema()["properties"]["task"]["enum"] == TASKS.names()


def test_the_schema_knows_val_metrics_and_train_best():
    import jsonschema

    validator = jsonschema.Draft7Validator(recipe_schema())
    base = {"transform": "bicubic", "losses": ["pixel"]}

    def errors(**extra):
        return [e.message for e in validator.iter_errors({**base, **extra})]

    assert errors(val={"metrics": ["psnr", "lpips"]}, train={"best": {"metric": "lpips"}}) == []
    assert errors(train={"best": "ssim"}) == [] and errors(train={"best": None}) == []
    assert errors(train={"best": {"metric": "ssim", "mode": "up"}})
    assert errors(val={"metric": ["psnr"]}) and errors(task="sr4")
    assert errors(task="style")  # the style task needs data.style_image


def test_list_tasks_shows_the_protocol_and_validation_defaults(capsys):
    main(["list", "tasks"])
    out = capsys.readouterr().out
    assert "sr" in out and "style" in out
    main(["list", "tasks", "sr"])
    out = capsys.readouterr().out
    assert "eval protocol: sr_bicubic" in out and "train.best default: psnr (higher" in out
    main(["list", "tasks", "style"])
    out = capsys.readouterr().out
    assert "train.best default: loss (lower" in out and "data.style_image" in out


@pytest.mark.parametrize(("recipe", "metric", "higher"), [
    *[(n, "lpips", False) for n in ("sr_x4_feat", "sr_x8_feat", "zoo/sr_x4_feat")],
    *[pytest.param(n, "lpips", False, marks=pytest.mark.extra("models"))  # spandrel transforms
      for n in ("compact_x4_feat", "esrgan_x4", "realesrgan_x4")],
    *[(n, "psnr", True) for n in ("sr_x4_pixel", "sr_x8_pixel", "zoo/sr_x4_pixel")],
    ("style_johnson2016", "loss", False),
])
def test_shipped_recipes_pick_their_best_checkpoint_by_the_right_metric(recipe, metric, higher):
    task = make_task(load_recipe(REPO / "recipes" / f"{recipe}.yaml"), torch.device("cpu"))
    assert (task.metric, task.higher_is_better) == (metric, higher)
    assert metric in [*task.own_values, *task.val_metrics]


def test_metric_directions_come_from_the_metrics():
    assert metric_direction("psnr") is True and metric_direction("ssim") is True
    assert metric_direction("lpips") is False and metric_direction("dists") is False
    assert metric_direction("loss", StyleTask.own_values) is False
    assert metric_direction("no_such_metric") is None


@pytest.mark.parametrize(("sets", "message"), [
    (["task=sr4"], "task: unknown task 'sr4'. Did you mean 'sr'?"),
    (["val.metrics=[psnr, lpisp]"], "val.metrics[1]: unknown metric 'lpisp'. Did you mean"),
    (["train.best=lpips"], "train.best.metric: 'lpips' is not validated; add it to val.metrics"),
    (["task=style"], "is a 'sr' network, not one for the 'style' task"),
])
def test_recipe_check_names_task_and_metric_problems(sets, message, capsys):
    args = ["recipe", "check", str(TINY_SR), "--skip-data"]
    for s in sets:
        args += ["--set", s]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_best_by_ssim_with_mode_min_is_recorded_and_resumes_exactly(tmp_path):
    """val.metrics and train.best with a mode against the metric's direction (min SSIM: the
    first validations win, so a resumed run that forgot its best-tracking state would pick its
    own first validation instead); the split run's best value, step and val.csv equal the
    uninterrupted run's."""
    sel = ["val.metrics=[psnr, ssim]", "train.best={metric: ssim, mode: min}",
           "train.val_every=2", "checkpoint.every=2"]
    full = run(tmp_path / "full", *sel, "train.iterations=6")
    run(tmp_path / "split", *sel, "train.iterations=4")
    second = run(None, *sel, "train.iterations=6", resume=tmp_path / "split")
    rows = val_rows(tmp_path / "full")
    assert list(rows[0]) == ["step", "psnr", "ssim"]
    ssim = {int(r["step"]): float(r["ssim"]) for r in rows}
    best_step = min(ssim, key=lambda s: (ssim[s], s))
    assert best_step < 6  # what makes this a test of the restored state
    for result in (full, second):
        meta = load_checkpoint(result.best_checkpoint, tensors=False)[1]
        assert meta["best"] == {"metric": "ssim", "value": pytest.approx(ssim[best_step], 1e-5),
                                "step": best_step}  # val.csv rounds
        last = load_checkpoint(result.last_checkpoint, tensors=False)[1]
        assert last["best"] == meta["best"]
    assert val_rows(tmp_path / "split") == rows


def test_resuming_with_another_best_metric_starts_the_best_over(tmp_path):
    run(tmp_path / "run", "train.iterations=2", "train.val_every=2")
    text = io.StringIO()
    result = run(None, "train.iterations=4", "train.val_every=2", "train.best=ssim",
                 resume=tmp_path / "run", console=Console(file=text, width=200))
    assert "chosen by psnr; from now on by ssim" in text.getvalue()
    meta = load_checkpoint(result.best_checkpoint, tensors=False)[1]
    assert meta["best"]["metric"] == "ssim" and meta["best"]["step"] == 4


def test_best_by_lpips_uses_the_metric_direction(tmp_path, capsys):
    weights = Path(__import__("os").environ.get("PERCEPKIT_WEIGHTS", "/nonexistent"))
    if not (weights / "alexnet_features_imagenet1k_v1.safetensors").is_file():
        pytest.skip("needs the real AlexNet weights: set PERCEPKIT_WEIGHTS to ../shared/weights")
    args = ["train", str(TINY_SR), "--out", str(tmp_path / "run"), "--no-progress"]
    for s in [*QUIET, "val.metrics=[psnr, lpips]", "train.best=lpips", "train.val_every=2",
              "train.iterations=4"]:
        args += ["--set", s]
    main(args)
    rows = val_rows(tmp_path / "run")
    assert list(rows[0]) == ["step", "psnr", "lpips"]
    lpips = {int(r["step"]): float(r["lpips"]) for r in rows}
    best_step = min(lpips, key=lambda s: (lpips[s], s))  # lower is better, first one kept
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    meta = load_checkpoint(best, tensors=False)[1]
    assert meta["best"] == {"metric": "lpips", "value": pytest.approx(lpips[best_step], 1e-5),
                            "step": best_step}
    assert f"(lpips {lpips[best_step]:.4f} at step {best_step})" in capsys.readouterr().out


def test_an_unavailable_validation_metric_is_one_paragraph_before_training(tmp_path,
                                                                           isolated_weights):
    with pytest.raises(PercepkitError, match="val.metrics: lpips is not available"):
        run(tmp_path / "run", "val.metrics=[psnr, lpips]", "train.iterations=2")


def test_a_checkpoint_of_another_task_is_refused(tmp_path, capsys):
    style = run(tmp_path / "style", "train.iterations=1", "train.val_every=1000",
                recipe=REPO / "recipes" / "tiny_style.yaml")
    path = style.last_checkpoint
    with pytest.raises(PercepkitError, match="trained for the 'style' task, but --task sr"):
        check_checkpoint_task(path, "sr", "--task sr")
    check_checkpoint_task(path, "style", "the recipe")  # the same task: fine
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "sr", "--checkpoint", str(path), "--metrics", "psnr"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained for the 'style' task" in err and "Traceback" not in err
    with pytest.raises(RecipeError, match="train.init: .*trained for the 'style' task"):
        run(tmp_path / "init", "train.iterations=1", f"train.init={path}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", str(TINY_SR), "--resume", str(tmp_path / "style"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained for the 'style' task, but the recipe is for the 'sr'" \
        in err and "Traceback" not in err


def test_eval_task_writes_the_protocol_and_refuses_tasks_without_one(tmp_path, capsys):
    out = tmp_path / "r.json"
    main(["eval", "--set5", "--metrics", "psnr", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["task"] == "sr" and data["protocol"] == "sr_bicubic"
    assert data["convention"]["protocol"] == "sr_bicubic"
    capsys.readouterr()
    for task, message in (("style", "the style task has no benchmark protocol; eval scores"),
                          ("sr4", "unknown task 'sr4'. Did you mean 'sr'?")):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--task", task])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err


# -- a task from a plugin --------------------------------------------------------------------------
PLUGIN = '''
from percepkit.registry import TASKS
from percepkit.train.tasks import SRTask


@TASKS.register("pk_test_rgb_sr")
class RGBSuperResolution(SRTask):
    """SR validated and scored on RGB (a plugin task for tests)."""

    name = "pk_test_rgb_sr"
    default_val_metrics = ("psnr_rgb",)
    default_best = "psnr_rgb"
    protocol = "pk_test_rgb"
    eval_channel = "rgb"
    eval_metrics = ("psnr",)
    inputs = []

    @classmethod
    def eval_input(cls, sample, set_name):
        cls.inputs.append((set_name, sample.name))
        return sample.lr

    @classmethod
    def eval_data_convention(cls, scale):
        return f"LR = MATLAB bicubic x{scale}, scored on RGB (a test protocol)"
'''


@pytest.fixture
def plugin_task(tmp_path, monkeypatch):
    """The namespace plugin above installed; plugin loading reset around it."""
    folder = tmp_path / "plugins" / "percepkit_plugins"
    folder.mkdir(parents=True)
    (folder / "pk_test_task.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    reg.reset_plugins_for_tests()
    yield "pk_test_rgb_sr"
    for name in [m for m in sys.modules if m.startswith("percepkit_plugins")]:
        del sys.modules[name]
    TASKS.remove("pk_test_rgb_sr")
    reg.reset_plugins_for_tests()


def test_a_plugin_task_trains_is_listed_and_has_its_eval_protocol(plugin_task, tmp_path, capsys):
    assert TASKS.entry(plugin_task).source == "percepkit_plugins.pk_test_task"
    assert plugin_task in recipe_schema()["properties"]["task"]["enum"]
    main(["list", "tasks"])
    assert plugin_task in capsys.readouterr().out
    result = run(tmp_path / "run", f"task={plugin_task}", "train.iterations=2",
                 "train.val_every=2")
    assert list(val_rows(tmp_path / "run")[0]) == ["step", "psnr_rgb"]
    meta = load_checkpoint(result.last_checkpoint, tensors=False)[1]
    assert meta["task"] == plugin_task and meta["best"]["metric"] == "psnr_rgb"
    out = tmp_path / "r.json"
    main(["eval", "--task", plugin_task, "--checkpoint", str(result.last_checkpoint),
          "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["protocol"] == "pk_test_rgb" and [m["name"] for m in data["metrics"]] == \
        ["psnr_rgb"]
    assert data["convention"]["data"] == "LR = MATLAB bicubic x4, scored on RGB (a test protocol)"
    names = [r["name"] for r in data["sets"][0]["per_image"]]
    assert TASKS.get(plugin_task).inputs == [("set5", n) for n in names] and len(names) == 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # its checkpoint is not an sr checkpoint
        main(["eval", "--checkpoint", str(result.last_checkpoint)])
    assert e.value.code == 2 and f"trained for the {plugin_task!r} task" in \
        capsys.readouterr().err


def test_the_plugin_guide_task_works(tmp_path):
    """The task in docs/plugins.md registers, is accepted by recipes, validates by RGB PSNR and
    scores its own protocol with eval."""
    import re

    text = (REPO / "docs" / "plugins.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                if "TASKS.register" in block)
    exec(compile(code, "docs/plugins.md", "exec"), {})
    try:
        recipe = load_recipe(TINY_SR, ["task=example_rgb_sr"])
        task = make_task(recipe, torch.device("cpu"))
        assert (task.val_metrics, task.metric, task.higher_is_better) == (["psnr_rgb"],
                                                                          "psnr_rgb", True)
        out = tmp_path / "r.json"
        main(["eval", "--task", "example_rgb_sr", "--json", str(out)])
        data = json.loads(out.read_text())
        assert data["protocol"] == "example_rgb" and data["model"] == "bicubic"
        assert [m["name"] for m in data["metrics"]] == ["psnr_rgb"]
    finally:
        TASKS.remove("example_rgb_sr")


def test_network_problem_judges_built_networks_and_declared_tasks_of_unbuilt_parts():
    """A registered factory is not a built network: only a ``task`` it declares is judged
    before it is built (its build errors, and its scale, come once it is built)."""
    sr, denoise = TASKS.get("sr"), TASKS.get("denoise")

    def factory() -> torch.nn.Module:
        return torch.nn.Identity()

    assert sr.network_problem(factory) is None
    assert "no scale" in sr.network_problem(torch.nn.Conv2d(3, 3, 1))
    factory.task = "style"  # type: ignore[attr-defined]
    assert "a 'style' network" in sr.network_problem(factory)
    upscaler = torch.nn.Conv2d(3, 3, 1)
    upscaler.task, upscaler.scale = "sr", 4
    assert sr.network_problem(upscaler) is None
    assert "x4 super-resolution network" in denoise.network_problem(upscaler)
