"""Degradations: each step deterministic per sample key, checked arguments, real JPEG, the
Real-ESRGAN pipeline, sr_patches/synthetic with a list, recipe checks, ``percepkit degrade``
and an exact resume of a run killed with SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

from percepkit.data.datasets import degrade, sample_seed, sr_patches, synthetic
from percepkit.data.degradations import (
    Bicubic,
    GaussianBlur,
    GaussianNoise,
    Jpeg,
    PoissonNoise,
    RealESRGAN,
    Resize,
    blur_kernel,
    build_pipeline,
    jpeg_roundtrip,
)
from percepkit.data.imresize import imresize
from percepkit.errors import PercepkitError, RecipeError
from percepkit.recipes.recipe import load_recipe
from percepkit.registry import DEGRADATIONS

STEPS = {
    "bicubic": {"scale": 4},
    "gaussian_blur": {"sigma": [0.5, 3], "anisotropic_prob": 0.5, "kernel_size": [7, 15]},
    "gaussian_noise": {"sigma": [5, 30], "gray_prob": 0.5},
    "poisson_noise": {"scale": [0.5, 3], "gray_prob": 0.5},
    "jpeg": {"quality": [20, 60]},
    "resize": {"scale": [0.5, 1.5]},
    "sinc": {},
    "realesrgan": {"scale": 4},
}


def image(seed: int = 0, size: int = 64) -> torch.Tensor:
    """A smooth image with edges (so blur and JPEG have something to change)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size),
                                           mode="bilinear", align_corners=False)[0]
    base[:, size // 4: size // 2, size // 4: 3 * size // 4] = 0.9
    return base.clamp(0, 1)


def key_gen(key: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(0, 0, key))  # as the datasets seed it


def test_every_builtin_step_is_registered():
    assert set(STEPS) <= set(DEGRADATIONS.list())
    assert DEGRADATIONS.get("blur") is GaussianBlur


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_step_is_deterministic_per_key_and_varies_between_keys(name):
    step = DEGRADATIONS.build({"name": name, **STEPS[name]})
    x = image()
    a, b = step(x, key_gen(1)), step(x, key_gen(1))
    assert torch.equal(a, b)
    assert a.dtype == x.dtype and a.shape[0] == 3
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    if name != "bicubic":  # bicubic has no random choice
        outs = [step(x, key_gen(k)) for k in range(2, 6)]
        assert any(o.shape != a.shape or not torch.equal(o, a) for o in outs)
    assert torch.equal(x, image())  # the input is never changed in place


def test_steps_never_touch_the_global_rng():
    torch.manual_seed(3)
    before = torch.rand(3)
    torch.manual_seed(3)
    for name, args in STEPS.items():
        DEGRADATIONS.build({"name": name, **args})(image(), key_gen(0))
    assert torch.equal(torch.rand(3), before)


def test_shapes():
    x = image(size=64)
    g = key_gen(0)
    assert Bicubic(4)(x, g).shape == (3, 16, 16)
    assert Bicubic(3)(x, g).shape == (3, 22, 22)  # MATLAB: ceil(64/3)
    assert torch.equal(Bicubic(4)(x, g), imresize(x, scale=0.25).clamp(0, 1))
    assert Resize(0.25)(x, g).shape == (3, 16, 16)
    assert Resize(0.25).output_size((64, 64)) == (16, 16)
    assert Resize([0.5, 1.5]).output_size((64, 64)) is None  # random
    assert RealESRGAN(scale=4)(x, g).shape == (3, 16, 16)
    assert RealESRGAN(scale=2)(image(size=30), g).shape == (3, 15, 15)
    fixed = RealESRGAN(kernel_size=21, noise_range=10, jpeg_range=50, resize_range=1.0)
    assert fixed(x, g).shape == (3, 16, 16)  # fixed values where Real-ESRGAN has ranges
    for step in (GaussianBlur(), GaussianNoise(), PoissonNoise(), Jpeg()):
        assert step(x, g).shape == x.shape
        assert step(x[:1], g).shape == (1, 64, 64)  # grey images stay grey


def test_jpeg_is_a_real_encode_and_decode():
    x = image(1)
    out = Jpeg(quality=10)(x, key_gen(0))
    assert float((out - x).abs().mean()) > 0.005  # it really changed the image
    assert torch.equal(out * 255, (out * 255).round())  # decoded 8-bit values
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # the same as Pillow's own encode/decode at that quality
    arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=10)
    ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255)
    assert torch.equal(out, ref.permute(2, 0, 1))
    better = jpeg_roundtrip(x, 95)
    assert (better - x).abs().mean() < (out - x).abs().mean()


def test_blur_kernels():
    k = blur_kernel(21, 2.0, 2.0, 0.0)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    t = torch.arange(-10, 11, dtype=torch.float64)
    g = torch.exp(-t**2 / 8)
    assert torch.allclose(k, torch.outer(g, g) / torch.outer(g, g).sum())  # isotropic: separable
    aniso = blur_kernel(21, 4.0, 1.0, 0.0)  # wide along x
    assert float(aniso[10].sum()) > float(aniso[:, 10].sum())
    turned = blur_kernel(21, 4.0, 1.0, math.pi / 2)
    assert torch.allclose(turned, aniso.T, atol=1e-12)
    plateau = blur_kernel(21, 2.0, 2.0, 0.0, "plateau", 2.0)
    assert math.isclose(float(plateau.sum()), 1.0, rel_tol=1e-12)
    # a blurred step edge is smoother; with sigma drawn per sample
    x = torch.zeros(3, 32, 32)
    x[:, :, 16:] = 1
    y = GaussianBlur(sigma=2.0, kernel_size=11)(x, key_gen(0))
    assert 0.1 < float(y[0, 5, 15]) < 0.9


def test_noise_levels():
    x = torch.full((3, 64, 64), 0.5)
    noisy = GaussianNoise(sigma=25)(x, key_gen(0))
    assert abs(float((noisy - x).std()) * 255 - 25) < 2
    gray = GaussianNoise(sigma=25, gray_prob=1.0)(x, key_gen(0))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    colour = GaussianNoise(sigma=25, gray_prob=0.0)(x, key_gen(0))
    assert not torch.equal(colour[0], colour[1])
    assert torch.equal(GaussianNoise(sigma=25, prob=0.0)(x, key_gen(0)), x)
    p = PoissonNoise(scale=1.0, gray_prob=1.0)(image(), key_gen(0))
    d = p - image()
    inside = ((p > 0) & (p < 1)).all(0)  # not clipped in any channel
    assert torch.allclose(d[0][inside], d[1][inside], atol=1e-6) and float(d.abs().mean()) > 0.001
    c = PoissonNoise(scale=1.0, gray_prob=0.0)(image(), key_gen(0)) - image()
    assert not torch.allclose(c[0], c[1])


@pytest.mark.parametrize("spec, pattern", [
    ({"name": "gaussian_blur", "sigma": 0}, r"gaussian_blur: sigma must be between 0 and 50 "
                                            r"\(exclusive"),
    ({"name": "gaussian_blur", "kernel_size": 8}, r"no odd size"),
    ({"name": "gaussian_blur", "beta": 2}, r"beta applies to shape generalized or plateau"),
    ({"name": "gaussian_noise", "sigma": [30, 5]}, r"low end above its high end"),
    ({"name": "gaussian_noise", "sigma": 300}, r"sigma must be between 0 and 255, got 300"),
    ({"name": "poisson_noise", "gray_prob": 1.5}, r"gray_prob must be between 0 and 1"),
    ({"name": "jpeg", "quality": [0, 50]}, r"jpeg: quality must be between 1 and 100"),
    ({"name": "resize", "modes": ["nearest"]}, r"key 'modes': expected a list "),
    ({"name": "resize", "modes": []}, r"modes must be a non-empty list of area"),
    ({"name": "resize", "scale": [1.2, 2], "updown_prob": [1, 1, 1]}, r"resize: with updown"),
    ({"name": "bicubic", "scale": 0.5}, r"bicubic: scale must be between 1 and 16"),
    ({"name": "realesrgan", "noise_range": [1, 300]}, r"realesrgan: noise_range must be"),
    ({"name": "realesrgan", "resize_range2": [0.5, 0.9]}, r"realesrgan: resize_range2 must hold 1"),
    ({"name": "realesrgan", "kernel_size": [4, 4]}, r"realesrgan: kernel_size .* no odd size"),
    ({"name": "realesrgan", "kernel_prob": [1, 0, 0]}, r"'kernel_prob': expected a list of 6"),
])
def test_out_of_range_arguments_are_one_clear_error(spec, pattern):
    with pytest.raises(RecipeError, match=pattern):
        build_pipeline([spec], "degradations")


def test_pipeline_names_each_bad_step_by_its_path():
    with pytest.raises(RecipeError) as info:
        build_pipeline([{"name": "gausian_blur"}, {"name": "jpeg", "qualty": 50}], "x")
    text = str(info.value)
    assert "x[0].name: unknown degradation 'gausian_blur'. Did you mean 'gaussian_blur'" in text
    assert "x[1]: unknown key 'qualty' (did you mean 'quality'?)" in text
    with pytest.raises(RecipeError, match="non-empty list"):
        build_pipeline([], "x")


def test_sr_patches_with_a_list_is_seeded_by_the_key_and_the_default_is_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (120, 130, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    plain = sr_patches(str(tmp_path), scale=4, patch_size=64)
    item = plain[(1, 77)]
    assert torch.equal(item["lr"], degrade(item["hr"], 4, 1.0))  # today's degradation
    steps = [{"name": "gaussian_blur", "sigma": [0.5, 2]}, {"name": "bicubic", "scale": 4},
             {"name": "gaussian_noise", "sigma": [1, 10]}, {"name": "jpeg", "quality": [40, 90]}]
    ds = sr_patches(str(tmp_path), scale=4, patch_size=64, degradations=steps)
    a, b = ds[(1, 77)], ds[(1, 77)]
    assert torch.equal(a["hr"], item["hr"])  # the same crop and flip as without the list
    assert torch.equal(a["lr"], b["lr"]) and a["lr"].shape == (3, 16, 16)
    assert not torch.equal(a["lr"], ds[(1, 78)]["lr"])
    assert torch.equal(a["lr"] * 255, (a["lr"] * 255).round())  # quantized
    real = sr_patches(str(tmp_path), scale=4, patch_size=64,
                      degradations=[{"name": "realesrgan", "scale": 4}])
    assert real[(0, 5)]["lr"].shape == (3, 16, 16)
    with pytest.raises(PercepkitError, match=r"64x64 target into a 32x32 input, but scale 4"):
        sr_patches(str(tmp_path), scale=4, patch_size=64,
                   degradations=[{"name": "bicubic", "scale": 2}])
    with pytest.raises(PercepkitError, match="changes the size at random"):
        sr_patches(str(tmp_path), scale=4, patch_size=64,
                   degradations=[{"name": "resize", "scale": [0.2, 0.3]}])
    with pytest.raises(PercepkitError, match="blur_sigma sets the built-in blur"):
        sr_patches(str(tmp_path), scale=4, patch_size=64, blur_sigma=2.0, degradations=steps)


def test_synthetic_with_realesrgan_is_seeded_by_the_sample_key():
    ds = synthetic(count=2, size=48, scale=4, degradations=[{"name": "realesrgan"}])
    a = ds[(0, 11)]
    assert a["lr"].shape == (3, 12, 12)
    assert torch.equal(a["lr"], ds[(0, 11)]["lr"])
    assert not torch.equal(a["lr"], ds[(0, 12)]["lr"])
    assert torch.equal(a["hr"], ds[(0, 12)]["hr"])  # the images themselves are fixed


TINY_SR = os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny_sr.yaml")


def test_recipe_check_validates_the_list(capsys):
    ok = load_recipe(TINY_SR, ["data.train.degradations=[{name: realesrgan, scale: 4}]"])
    assert ok.data.train["degradations"] == [{"name": "realesrgan", "scale": 4}]
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY_SR, ["data.train.degradations=[{name: jpg}, {name: bicubic, scale: 2}, "
                              "{name: gaussian_noise, sigma: -1}]"])
    text = str(info.value)
    assert "data.train.degradations[0].name: unknown degradation 'jpg'. Did you mean 'jpeg'" \
        in text
    assert "data.train.degradations[2]: gaussian_noise: sigma must be between 0 and 255" in text
    with pytest.raises(RecipeError, match=r"48x48 target into a 24x24 input, but scale 4"):
        load_recipe(TINY_SR, ["data.train.degradations=[{name: bicubic, scale: 2}]"])
    with pytest.raises(RecipeError, match=r"data.train.blur_sigma: sets the built-in blur"):
        load_recipe(TINY_SR, ["data.train.blur_sigma=2.0",
                              "data.train.degradations=[{name: bicubic, scale: 4}]"])
    assert run_cli(["recipe", "check", TINY_SR, "--set",
                    "data.train.degradations=[{name: realesrgn}]"]) == 2
    assert "did you mean 'realesrgan'" in capsys.readouterr().err.lower()


def test_list_degradations(capsys):
    assert run_cli(["list", "degradations"]) == 0
    out = capsys.readouterr().out
    for name in STEPS:
        assert name in out
    assert run_cli(["list", "degradations", "realesrgan"]) == 0
    out = capsys.readouterr().out
    assert "resize_range" in out and "[0.15, 1.5]" in out and "jpeg_range2" in out
    assert run_cli(["list", "degradations", "jpge"]) == 2
    assert "Did you mean 'jpeg'" in capsys.readouterr().err


def test_degrade_command_writes_grids(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    x = (image(2, size=64).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(x).save(src / "a.png")
    out = tmp_path / "out"
    assert run_cli(["degrade", str(src / "a.png"), "-o", str(out), "--degradations",
                    "[{name: gaussian_blur, sigma: 2}, {name: bicubic, scale: 4}]"]) == 0
    grid = np.asarray(Image.open(out / "a.png"))
    assert grid.shape[0] > 64 and grid.shape[1] > 2 * 64  # target and input side by side
    assert run_cli(["degrade", str(src), "-o", str(out), "--recipe", TINY_SR, "--set",
                    "data.train.degradations=[{name: realesrgan}]"]) == 1  # a.png exists
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert run_cli(["degrade", str(src), "-o", str(out), "--recipe", TINY_SR, "--overwrite",
                    "--set", "data.train.degradations=[{name: realesrgan}]"]) == 0
    assert not np.array_equal(np.asarray(Image.open(out / "a.png")), grid)
    # bad input: one paragraph, exit 2, nothing written
    bad = tmp_path / "bad"
    assert run_cli(["degrade", str(src), "-o", str(bad), "--degradations",
                    "[{name: jpeg, quality: 101}]"]) == 2
    assert "quality must be between 1 and 100" in capsys.readouterr().err
    assert run_cli(["degrade", str(src), "-o", str(bad)]) == 2
    assert not bad.exists()


def test_a_realesrgan_run_killed_with_sigkill_resumes_to_identical_weights(tmp_path):
    """tiny_sr with the realesrgan pipeline: a run SIGKILLed after its step-4 checkpoint, resumed,
    ends with the weights of an uninterrupted run (random-init network: plumbing only)."""
    from test_train import QUIET, run

    from percepkit.models.checkpoint import load_checkpoint
    from percepkit.train import find_checkpoints

    out = tmp_path / "killed"
    steps = ["train.iterations=8", "checkpoint.every=4", "checkpoint.keep_last=0",
             "data.train.degradations=[{name: realesrgan, scale: 4}]"]
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        import percepkit.runtime.files as ck  # where checkpoints are renamed into place
        real = os.replace
        def killing_replace(src, dst):
            real(src, dst)
            if str(dst).endswith("step_00000004.safetensors"):
                os.kill(os.getpid(), signal.SIGKILL)
        ck.os.replace = killing_replace
        from percepkit.cli import main
        main(["train", {TINY_SR!r}, "--out", {str(out)!r}, "--no-progress",
              *[a for s in {[*QUIET, *steps]!r} for a in ("--set", s)]])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in find_checkpoints(out)] == [4]
    _, full = run(TINY_SR, tmp_path / "full", *steps)
    # resumed with DataLoader workers: the degraded inputs must not depend on them
    _, resumed = run(TINY_SR, None, *steps, "train.workers=2", resume=out)
    assert resumed.start_step == 4 and resumed.losses == full.losses[4:]
    a = load_checkpoint(full.last_checkpoint)[0]["model"]
    b = load_checkpoint(resumed.last_checkpoint)[0]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_plugin_guide_degradation_works():
    """The degradation in docs/plugins.md registers, builds from a recipe list, is seeded by the
    key, and its argument check is one sentence."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                if "DEGRADATIONS.register" in block)
    exec(compile(code, "docs/plugins.md", "exec"), {})
    try:
        pipe = build_pipeline([{"name": "bicubic", "scale": 2},
                               {"name": "example_salt_pepper", "amount": [0.1, 0.2]}])
        x = image()
        a = pipe(x, key_gen(4))
        assert a.shape == (3, 32, 32) and torch.equal(a, pipe(x, key_gen(4)))
        assert not torch.equal(a, pipe(x, key_gen(5)))
        assert float(((a == 0) | (a == 1)).all(0).float().mean()) > 0.05
        with pytest.raises(RecipeError, match=r"\[1\]: example_salt_pepper: amount must be"):
            build_pipeline([{"name": "bicubic"}, {"name": "example_salt_pepper",
                                                  "amount": [0.5, 0.1]}])
    finally:
        DEGRADATIONS.remove("example_salt_pepper")


def test_the_recipe_schema_knows_degradation_lists():
    import jsonschema

    from percepkit.recipes.recipe import recipe_from_mapping
    from percepkit.recipes.schema import recipe_schema

    schema = recipe_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    base = {"transform": "bicubic", "losses": ["pixel"]}

    def data(steps):
        return {**base, "data": {"train": {"name": "synthetic", "scale": 4, "size": 48,
                                           "degradations": steps}}}

    good = data([{"name": "gaussian_blur", "sigma": [0.5, 2]}, "bicubic", {"name": "jpeg"}])
    assert not list(validator.iter_errors(good))
    recipe_from_mapping(good, "good.yaml")
    for steps in ([{"name": "gausian_blur"}, "bicubic"], [{"name": "jpeg", "qualty": 5}], []):
        assert list(validator.iter_errors(data(steps))), steps
        with pytest.raises(RecipeError):
            recipe_from_mapping(data(steps), "bad.yaml")


def test_sinc_kernel_is_basicsr_circular_lowpass():
    """The sinc kernel against a direct evaluation of BasicSR's formula with scipy's J1."""
    from scipy import special

    from percepkit.data.degradations import Sinc, sinc_kernel

    size, cutoff = 13, 1.3
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    d = np.sqrt((x - c) ** 2 + (y - c) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = cutoff * special.j1(cutoff * d) / (2 * np.pi * d)
    ref[6, 6] = cutoff**2 / (4 * np.pi)
    ref /= ref.sum()
    assert np.allclose(sinc_kernel(size, cutoff).numpy(), ref, atol=1e-12)
    assert float(sinc_kernel(21, math.pi / 4).min()) < 0  # side lobes: ringing
    step = Sinc()
    x = image()
    assert torch.equal(step(x, key_gen(3)), step(x, key_gen(3)))
    with pytest.raises(RecipeError, match=r"sinc: cutoff must be between 0 and 3.14"):
        build_pipeline([{"name": "sinc", "cutoff": 4}])
