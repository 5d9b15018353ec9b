"""Inference: the fast path, tiling, any-size inputs, batches of files and their errors.

Networks here are randomly initialised (with perturbed norm statistics so that folding and
normalisation are exercised): these are plumbing and equivalence tests, not quality tests.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

from percepkit.errors import PercepkitError
from percepkit.inference import (
    FastPathWarning,
    FastTransform,
    Predictor,
    fast_model,
    frozen_norm_stats,
    parse_memory,
    plan_axis,
    record_norm_stats,
    tile_side,
)
from percepkit.inference.fused import moments
from percepkit.inference.normstats import StopForward, probing
from percepkit.models.checkpoint import save_model
from percepkit.nets.transforms import (
    JohnsonSR,
    JohnsonStyle,
    johnson_style_fast,
    johnson_style_lite,
)
from percepkit.runtime.devices import resolve_device


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial affine and running statistics, so folding and scaling are really tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) and m.affine:
            m.weight.data = 1 + 0.3 * torch.randn(m.weight.shape, generator=g)
            m.bias.data = 0.3 * torch.randn(m.bias.shape, generator=g)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = 0.2 * torch.randn(m.running_mean.shape, generator=g)
            m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)
    return model.eval()


NETS = {  # the paper's layouts; some narrower than the paper's to keep the tests quick
    "style": lambda: JohnsonStyle(),
    "style_resize_conv": lambda: JohnsonStyle(upsample="resize_conv", channels=(8, 16, 32)),
    "style_batch_norm": lambda: JohnsonStyle(norm="batch", channels=(8, 16, 32)),
    "style_fast": lambda: johnson_style_fast(),
    "style_fast_no_norm": lambda: johnson_style_fast(norm="none"),  # the zoo's style nets
    "style_lite": lambda: johnson_style_lite(),  # a decoder narrower than the encoder
    "style_linear": lambda: johnson_style_lite(output="linear"),
    "style_clamp": lambda: johnson_style_lite(output="clamp"),  # ~15 % of outputs clamped
    "style_tanh_wide": lambda: johnson_style_lite(output="tanh_wide"),
    "sr_x4": lambda: JohnsonSR(scale=4, channels=16),
    "sr_x2_instance_resize": lambda: JohnsonSR(scale=2, norm="instance", upsample="resize_conv",
                                               channels=16),
    "sr_x4_skip": lambda: JohnsonSR(scale=4, norm="none", skip=True, channels=16),
}


@pytest.mark.parametrize("name", list(NETS))
def test_fast_path_matches_plain_network(name):
    torch.manual_seed(0)
    model = _randomise_norms(NETS[name]())
    if name == "sr_x4_skip":  # the zero-initialised last conv would hide the whole net
        torch.nn.init.normal_(model.net[-1].weight, std=0.01)
    fast = fast_model(model)
    assert isinstance(fast, FastTransform)
    x = torch.rand(2, 3, 36, 44)
    with torch.inference_mode():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5


def test_fast_path_leaves_unknown_and_training_models_alone():
    model = JohnsonStyle()  # training mode: batch statistics, nothing to fold
    assert fast_model(model) is model
    other = torch.nn.Conv2d(3, 3, 3, padding=1)
    assert fast_model(other) is other


def test_fast_path_says_once_why_a_paper_net_is_not_fused_random_init():
    model = JohnsonStyle(channels=(8, 16, 32), residual_blocks=1).eval()
    model.net[1][1] = torch.nn.Conv2d(8, 16, 3, stride=2, dilation=2, bias=False)
    with pytest.warns(FastPathWarning) as caught:
        assert fast_model(model) is model
    assert len(caught) == 1
    assert "JohnsonStyle" in str(caught[0].message) and "net[1]" in str(caught[0].message)
    assert "dilated" in str(caught[0].message)

    sr = JohnsonSR(scale=2, norm="instance", channels=8, residual_blocks=1).eval()
    sr.net[1].body[0][2] = torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
    with pytest.warns(FastPathWarning, match=r"net\[1\] is an instance norm with running"):
        assert fast_model(sr) is sr


def test_fast_path_is_silent_for_other_networks():
    class Plugin(JohnsonStyle):  # a subclass may change forward: not the paper's layout
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (torch.nn.Conv2d(3, 3, 3, padding=1), Plugin().eval(), JohnsonStyle()):
            assert fast_model(model) is model


def test_tile_side_is_the_largest_aligned_core_within_the_budget():
    assert tile_side(100 * 100 * 8, 8) == 100
    assert tile_side(100 * 100 * 8, 8, margin=10, align=4) == 80  # (100 - 2 * 10) // 4 * 4
    assert tile_side(99 * 99 * 8, 8, margin=10, align=4) == 76
    assert tile_side(100 * 100 * 8 * 16, 8 * 16) == 100  # at 1/4 resolution
    assert tile_side(30 * 30 * 8, 8, margin=16) <= 0  # not even the margins fit


def test_plain_instance_norm_statistics_protocol_random_init():
    """Record, freeze and probe on nn.InstanceNorm2d (through the adapter), and afterwards the
    layers are plain again."""
    torch.manual_seed(0)
    model = _randomise_norms(JohnsonStyle(channels=(8, 16, 32), residual_blocks=1))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    x, other = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        with record_norm_stats(model) as stats:
            assert (model(x) - ref).abs().max() == 0  # recording changes nothing
        assert list(stats) == norms  # in the order a pass reaches them
        with frozen_norm_stats(model, stats):
            assert (model(x) - ref).abs().max() < 1e-5
            frozen_other = model(other)
        assert (model(other) - frozen_other).abs().max() > 1e-3
        seen = []
        with probing(norms[2], lambda parts, *_: seen.append(parts[0][0].shape)), \
                pytest.raises(StopForward):
            model(x)
        assert seen == [(1, 32, 8, 8)]
    assert all("forward" not in vars(m) for m in norms)
    assert (model(x) - ref).abs().max() == 0


def test_moments_match_var_mean_and_survive_cancellation():
    x = (torch.randn(2, 8, 30, 20) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x[:, 3] = 1000 + 1e-3 * torch.randn(2, 30, 20)  # tiny variance under a huge mean
    mean, var = moments(x)
    v64, m64 = torch.var_mean(x.double(), dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), m64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), v64, rtol=1e-3, atol=1e-9)


def test_moments_of_bf16_are_float32_sums_of_its_values():
    """bf16 autocast feeds bf16 activations: their moments are those of the same values in
    float32 (var_mean of a float32 copy, not a bf16 reduction)."""
    x = (torch.randn(2, 8, 30, 20) * 3 + 1).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    mean, var = moments(x)
    assert mean.dtype == var.dtype == torch.float32
    v64, m64 = torch.var_mean(x.double(), dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), m64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), v64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("length", "core", "overlap", "align"),
                         [(300, 128, 16, 4), (152, 48, 16, 4), (100, 128, 16, 4), (97, 20, 8, 1),
                          (1024, 256, 32, 4), (260, 256, 32, 4)])
def test_tile_plan_covers_with_overlap_and_alignment(length, core, overlap, align):
    spans = plan_axis(length, core, overlap, align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 % align == 0
        assert e0 - s1 >= min(overlap, core // 2)  # neighbours overlap
        assert s1 > s0 and e1 > e0
    assert all(e - s <= core for s, e in spans)


@pytest.mark.parametrize("name", ["style_fast", "style_lite", "sr_x4", "sr_x2_instance_resize"])
def test_tiled_output_equals_untiled(name):
    """With statistics of the whole image, tiles reproduce the untiled output exactly."""
    torch.manual_seed(0)
    model = _randomise_norms(NETS[name]())
    whole = Predictor(model, "cpu", tile=0)
    tiled = Predictor(model, "cpu", tile=24 if model.scale > 1 else 40, overlap=8)
    x = torch.rand(3, 70, 93) if model.scale == 1 else torch.rand(3, 45, 38)
    ref = whole(x)
    seen = []
    out = tiled(x, progress=lambda done, total: seen.append((done, total)))
    assert out.shape == ref.shape
    assert len(seen) > 4 and seen[-1][0] == seen[-1][1]
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("fast", [True, False])
def test_image_too_big_for_the_budget_gets_exact_statistics(fast):
    """Tiles of an instance-normalised net whose image does not fit: one statistics pass per
    norm layer over the tiles, and the output is the untiled output."""
    torch.manual_seed(0)
    model = _randomise_norms(JohnsonSR(scale=2, norm="instance", upsample="resize_conv",
                                       channels=8, residual_blocks=1))
    x = torch.rand(3, 96, 120)
    ref = Predictor(model, "cpu", tile=0, fast=fast)(x)
    small = Predictor(model, "cpu", fast=fast)
    assert small.tile_size(96, 120) == 0  # fits the default budget
    small.memory_budget = int(80**2 * small.info.bytes_per_pixel)  # 56% of the image
    core = small.tile_size(96, 120)
    assert 32 <= core < 96
    assert not small.fits(96, 120)
    steps = []
    out = small(x, progress=lambda done, total: steps.append((done, total)))
    assert steps[-1][0] == steps[-1][1] and len(steps) > 4
    if not fast:  # plain nets: one pass over the tiles per norm layer, then the output pass
        tiles = len(plan_axis(96, core, small.overlap)) * len(plan_axis(120, core, small.overlap))
        assert steps[-1] == (tiles * 5, tiles * 5)  # 4 norm layers + the output pass
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("bottleneck_fits", [True, False])
def test_staged_exact_tiling_of_the_style_net(bottleneck_fits):
    """Fast nets tile in stages: down to the bottleneck, the residual blocks on the whole
    1/4-resolution tensor (or tile by tile when even that does not fit), back up."""
    torch.manual_seed(0)
    model = _randomise_norms(JohnsonStyle(channels=(8, 16, 32), residual_blocks=2))
    x = torch.rand(3, 264, 280)
    ref = Predictor(model, "cpu", tile=0)(x)
    small = Predictor(model, "cpu")
    # bottleneck: 32 channels at 1/4 resolution, 8 bytes per input pixel, held if 5x that fits
    small.memory_budget = (50 if bottleneck_fits else 30) * 264 * 280
    assert not small.fits(264, 280)
    plans = small.stage_plans(264, 280)
    assert [plan is None for plan in plans] == [False, bottleneck_fits, False]
    assert all(len(plan.tiles) > 1 for plan in plans if plan is not None)
    steps = []
    out = small(x, progress=lambda done, total: steps.append(total))
    # the progress total counts each tiled stage's statistics passes and its output pass
    assert steps[-1] == sum(len(p.tiles) * (len(p.norms) + 1) for p in plans if p is not None)
    assert (out - ref).abs().max() < 1e-5


def test_approximate_statistics_are_shared_by_all_tiles_so_there_are_no_seams():
    """``approx``: statistics come from a reduced copy, shared by all tiles, so the tiles agree
    exactly with one untiled pass under those same statistics."""
    torch.manual_seed(0)
    model = _randomise_norms(NETS["sr_x2_instance_resize"]())
    x = torch.rand(3, 96, 120)
    small = Predictor(model, "cpu", norm_stats="approx")
    small.memory_budget = int(80**2 * small.info.bytes_per_pixel)
    out = small(x)
    stats = small.approximate_norm_stats(x[None])
    assert len(stats) == 10  # 1 + 2 x 4 residual + 1 up
    with frozen_norm_stats(small.model, stats):
        consistent = small.forward(x[None])[0]
    assert (out - consistent).abs().max() < 1e-5
    with pytest.raises(PercepkitError, match="norm_stats"):
        Predictor(model, "cpu", norm_stats="guess")


def test_record_and_frozen_stats_round_trip():
    torch.manual_seed(0)
    fast = fast_model(_randomise_norms(JohnsonStyle()))
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        with record_norm_stats(fast) as stats:
            ref = fast(x)
        assert len(stats) == 15  # 3 down, 2 x 5 residual, 2 up
        other = torch.rand(1, 3, 32, 32)
        with frozen_norm_stats(fast, stats):
            frozen_other = fast(other)
        assert (fast(other) - frozen_other).abs().max() > 1e-3  # the statistics did matter
        with frozen_norm_stats(fast, stats):
            assert (fast(x) - ref).abs().max() < 1e-5


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 3), (17, 250), (63, 64)])
def test_any_size_and_aspect(h, w):
    torch.manual_seed(0)
    style = Predictor(johnson_style_fast().eval(), "cpu")
    assert style(torch.rand(3, h, w)).shape == (3, h, w)
    sr = Predictor(JohnsonSR(scale=2).eval(), "cpu")
    assert sr(torch.rand(3, h, w)).shape == (3, 2 * h, 2 * w)


def test_x4_upscale_of_1024_image_is_planned_within_a_few_gigabytes():
    predictor = Predictor(JohnsonSR(scale=4).eval(), "cpu", memory_budget=2 * 1024**3)
    core = predictor.tile_size(1024, 1024)
    assert 0 < core < 1024
    side = core + 2 * predictor.info.margin
    assert side * side * predictor.info.bytes_per_pixel <= 2 * 1024**3


def test_half_precision_and_devices_are_checked():
    with pytest.raises(PercepkitError, match="fp16 autocast is CUDA-only"):
        Predictor(JohnsonSR(scale=2).eval(), "cpu", half=True)
    with pytest.raises(PercepkitError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(PercepkitError, match="CUDA is not available"):
            resolve_device("cuda")
    assert parse_memory("1.5G") == int(1.5 * 1024**3)
    assert parse_memory("512MiB") == 512 * 1024**2
    with pytest.raises(PercepkitError):
        parse_memory("lots")


def test_batch_output_names_and_conflicts_through_upscale(tmp_path, capsys):
    """How a batch command pairs inputs with outputs: folders keep their sub-folders, the
    extension becomes --ext, missing/empty/clashing inputs fail alone (exit 1, the rest is
    written), one input may name its output file, several may not, nothing replaces an input."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for p in ("in/a.jpg", "in/sub/b.png", "c.png", "other/a.png"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / p)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code = run_cli(["upscale", "bicubic", "--scale", "2", str(tmp_path / "in"),
                    str(tmp_path / "c.png"), str(tmp_path / "missing.png"), str(tmp_path / "empty"),
                    str(tmp_path / "other" / "a.png"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "3 failed" in captured.out + captured.err
    err = " ".join(captured.err.split())
    assert "missing.png: no such file or folder" in err
    assert "no image files" in err and "same output file" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png", "c.png", "sub/b.png"]
    assert Image.open(out / "sub" / "b.png").size == (8, 8)
    assert run_cli(["upscale", "bicubic", str(tmp_path / "c.png"), "-o",
                    str(tmp_path / "result.jpg"), "-q"]) == 0
    assert (tmp_path / "result.jpg").is_file()
    assert run_cli(["upscale", "bicubic", str(tmp_path / "in"), "-o",
                    str(tmp_path / "result.jpg")]) == 2
    assert "several images" in capsys.readouterr().err
    assert run_cli(["upscale", "bicubic", str(tmp_path / "c.png"), "-o", str(tmp_path)]) == 1
    assert "replace the input" in " ".join(capsys.readouterr().err.split())


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    """A folder of good and bad inputs: RGB, gray, RGBA, 16-bit, truncated, not an image."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(d / "gray.png")
    Image.fromarray(rng.integers(0, 255, (21, 19, 4), dtype=np.uint8)).save(d / "sub/rgba.png")
    Image.fromarray(rng.integers(0, 65535, (16, 24), dtype=np.uint16)).save(d / "sub/g16.png")
    (d / "notimage.jpg").write_text("hello")
    data = (d / "rgb.png").read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    return d


@pytest.fixture
def style_checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "style.safetensors",
                      johnson_style_fast().state_dict(),
                      {"transform": {"name": "johnson_style_fast"}, "task": "style",
                       "step": 0})


def test_stylize_batch_reports_bad_files_and_goes_on(images, style_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(["stylize", str(style_checkpoint), str(images), str(tmp_path / "nope.png"),
                 "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "notimage.jpg: not an image file" in err
    assert "trunc.png: unreadable image" in err
    assert "nope.png: no such file or folder" in err
    assert "Traceback" not in err
    assert Image.open(out / "rgb.png").size == (53, 37)
    assert Image.open(out / "gray.png").mode == "L"
    assert Image.open(out / "sub" / "rgba.png").size == (19, 21)
    assert Image.open(out / "sub" / "g16.png").size == (24, 16)
    before = (out / "rgb.png").read_bytes()
    (out / "rgb.png").write_bytes(b"keep me")
    code = run_cli(["stylize", str(style_checkpoint), str(images / "rgb.png"), "-o", str(out),
                    "-q"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "rgb.png").read_bytes() == b"keep me"
    assert run_cli(["stylize", str(style_checkpoint), str(images / "rgb.png"), "-o", str(out),
                 "-q", "--skip-existing"]) == 0
    assert run_cli(["stylize", str(style_checkpoint), str(images / "rgb.png"), "-o", str(out),
                 "-q", "--overwrite"]) == 0
    assert (out / "rgb.png").read_bytes() == before


def test_stylize_size_and_unwritable_output(images, style_checkpoint, tmp_path, capsys):
    out = tmp_path / "sized.png"
    assert run_cli(["stylize", str(style_checkpoint), str(images / "rgb.png"), "-o", str(out),
                 "--size", "32", "-q"]) == 0
    assert Image.open(out).size == (32, 22)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = run_cli(["stylize", str(style_checkpoint), str(images / "rgb.png"), str(images /
                 "gray.png"), "-o", str(blocker / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("cannot write") == 2


def test_upscale_by_name_and_checkpoint(images, tmp_path, capsys):
    out = tmp_path / "up"
    assert run_cli(["upscale", "bicubic", str(images / "rgb.png"), "--scale", "3", "-o", str(out),
                 "-q"]) == 0
    assert Image.open(out / "rgb.png").size == (159, 111)
    ckpt = save_model(tmp_path / "sr.safetensors", JohnsonSR(scale=2).state_dict(),
                      {"transform": {"name": "johnson_sr", "scale": 2}, "task": "sr"})
    assert run_cli(["upscale", str(ckpt), str(images / "sub"), "-o", str(out), "-q",
                 "--tile", "8"]) == 0
    assert Image.open(out / "g16.png").size == (48, 32)
    assert Image.open(out / "g16.png").mode == "L"
    capsys.readouterr()
    assert run_cli(["upscale", "bicubc", str(images / "rgb.png"), "-o", str(out)]) == 2
    assert "Did you mean 'bicubic'" in capsys.readouterr().err
    assert run_cli(["upscale", str(ckpt), str(images / "rgb.png"), "-o", str(out),
                 "--scale", "4"]) == 2
    assert "upscales x2" in capsys.readouterr().err


def test_checkpoint_of_the_wrong_task_is_refused(images, style_checkpoint, tmp_path, capsys):
    assert run_cli(["upscale", str(style_checkpoint), str(images / "rgb.png"), "-o",
                 str(tmp_path / "o")]) == 2
    assert "stylize" in capsys.readouterr().err
    assert run_cli(["stylize", str(tmp_path / "missing.safetensors"), str(images / "rgb.png"),
                 "-o", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_decompression_bomb_is_one_line_and_the_batch_goes_on(tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)  # claims 10^10 pixels
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b""))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "ok.png")
    code = run_cli(["upscale", "bicubic", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                    "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "too many pixels" in err and "Traceback" not in err
    assert (tmp_path / "out" / "ok.png").is_file()


# -- bad input and full disks: one paragraph, exit 2 ----------------------------------------------
def _png(path, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_upscale_with_a_scale_the_net_refuses_or_that_cannot_fit_is_one_paragraph(tmp_path,
                                                                                  capsys):
    src = _png(tmp_path / "a.png")
    assert run_cli(["upscale", "johnson_sr", str(src), "-o", str(tmp_path / "o"),
                    "--scale", "5"]) == 2
    err = capsys.readouterr().err
    assert "power-of-two" in err and "Traceback" not in err
    # x100000 of a 20x24 image would be 2e6 x 2.4e6 pixels: estimated, not allocated
    assert run_cli(["upscale", "bicubic", str(src), "-o", str(tmp_path / "o"),
                    "--scale", "100000"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "needs about" in err and "available" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_the_output_of_an_image_is_estimated_before_it_is_made(monkeypatch):
    from percepkit.inference import memory
    from percepkit.registry import TRANSFORMS

    predictor = Predictor(TRANSFORMS.build({"name": "bicubic", "scale": 2}), device="cpu")
    monkeypatch.setattr(memory, "available_memory", lambda device: 10_000)
    with pytest.raises(PercepkitError, match=r"the 400x400 output of this 200x200 image"):
        predictor(torch.rand(3, 200, 200))


def test_a_full_disk_stops_the_batch_with_exit_2_and_keeps_the_written_images(tmp_path,
                                                                             full_disk, capsys):
    srcs = [_png(tmp_path / f"{n}.png", seed=i) for i, n in enumerate("abc")]
    full_disk("out/.b.png")
    assert run_cli(["upscale", "bicubic", *map(str, srcs), "-o", str(tmp_path / "out"),
                    "--scale", "2"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "b.png" in err and "disk is full" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # c: not tried


def test_a_tile_or_budget_beyond_the_memory_is_refused_with_the_estimate_random_init(
        monkeypatch):
    from percepkit.inference import memory

    torch.manual_seed(0)
    predictor = Predictor(JohnsonSR(scale=4, channels=16).eval(), device="cpu", tile=0)
    x = torch.rand(3, 64, 64)
    need = 64 * 64 * predictor.info.bytes_per_pixel
    monkeypatch.setattr(memory, "available_memory", lambda device: int(need / 2))
    with pytest.raises(PercepkitError, match=r"one untiled pass over 64x64 input pixels"):
        predictor(x)
    monkeypatch.setattr(memory, "available_memory", lambda device: int(need * 2))
    assert predictor(x).shape == (3, 256, 256)
