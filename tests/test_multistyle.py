"""Several styles in one network (conditional instance norm / per-style affine): blends fold
into a plain net, a multi-style run trains every style and resumes exactly, stylize --style."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from rich.console import Console

import percepkit
from percepkit.data.images import quantize, read_image, write_image
from percepkit.errors import PercepkitError, RecipeError
from percepkit.inference.fastpath import FastPathWarning
from percepkit.models.checkpoint import load_checkpoint, load_transform
from percepkit.nets.conditional import StyleAffine, style_weights
from percepkit.nets.transforms import JohnsonStyle
from percepkit.recipes.recipe import load_recipe
from percepkit.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY_STYLE = REPO / "recipes" / "tiny_style.yaml"
TWO_STYLES = ["transform.styles=[dots, waves]", "data.style_image=[synthetic:3, synthetic:5]",
              "transform.norm=none"]
QUIET = ["train.log_every=1", "train.sample_every=1000", "train.val_every=1000"]


def _random_affines(net: torch.nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, StyleAffine):
            m.scale.data.uniform_(0.5, 1.5)
            m.shift.data.normal_(0, 0.1)


@pytest.mark.parametrize("norm", ["none", "instance"])
@pytest.mark.parametrize("upsample", ["deconv", "resize_conv"])
def test_a_blend_folds_into_a_plain_net_with_the_same_output_random_init(norm, upsample):
    torch.manual_seed(0)
    config = dict(norm=norm, upsample=upsample, channels=(8, 16, 16), residual_blocks=2)
    net = JohnsonStyle(**config, styles=["a", "b", "c"]).eval()
    _random_affines(net)
    x = torch.rand(2, 3, 24, 40)
    net.select_style(torch.tensor([0.2, 0.5, 0.3]))
    folded = net.blend("a:2,b:5,c:3")  # normalised to 0.2 / 0.5 / 0.3
    plain = JohnsonStyle(**config).eval()
    plain.load_state_dict(folded.state_dict())  # strict: the structure of a one-style net
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)
        one = net.blend("b")(x)
        assert not torch.allclose(one, net(x), atol=1e-3)  # the blend matters
    assert folded.style_names == [] and net.style_names == ["a", "b", "c"]


def test_style_weights_parse_and_refuse_with_one_line():
    names = ["candy", "mosaic"]
    assert style_weights(names, "candy:1,mosaic:3").tolist() == [0.25, 0.75]
    assert style_weights(names, "mosaic").tolist() == [0.0, 1.0]
    assert style_weights(names, {"candy": 2.0}).tolist() == [1.0, 0.0]
    with pytest.raises(PercepkitError, match="did you mean 'mosaic'"):
        style_weights(names, "mosiac:1")
    with pytest.raises(PercepkitError, match="not a number"):
        style_weights(names, "candy:half")
    with pytest.raises(PercepkitError, match="0 or more"):
        style_weights(names, "candy:-1,mosaic:2")
    with pytest.raises(PercepkitError, match="finite"):
        style_weights(names, "candy:inf")
    with pytest.raises(PercepkitError, match="candy:0.0: the weights sum to 0"):
        style_weights(names, {"candy": 0.0})
    with pytest.raises(ValueError, match="two or more different"):
        JohnsonStyle(styles=["candy", "candy"])


def _trainer(out: Path | None, *overrides: str, resume: Path | None = None,
             styles: list[str] = TWO_STYLES) -> Trainer:
    rec = load_recipe(TINY_STYLE, [*QUIET, *styles, *overrides])
    return Trainer(rec, out=out, console=Console(file=io.StringIO()), progress=False,
                   resume=resume)


def _run(out: Path | None, *overrides: str, resume: Path | None = None):
    return _trainer(out, *overrides, resume=resume).run()


def test_a_multi_style_run_trains_every_style_and_resumes_exactly_random_init(tmp_path):
    steps = ["train.iterations=6", "checkpoint.every=3", "checkpoint.keep_last=0"]
    full = _run(tmp_path / "full", *steps)
    _run(tmp_path / "split", "train.iterations=3", "checkpoint.every=3")
    second = _run(None, *steps, resume=tmp_path / "split")
    assert second.losses == full.losses[3:]
    a = load_checkpoint(full.last_checkpoint)[0]["model"]
    b = load_checkpoint(second.last_checkpoint)[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    scales = [v for k, v in a.items() if k.endswith(".scale")]
    assert scales and all(v.shape[0] == 2 for v in scales)
    # each style's own parameters moved: both were trained (alternating steps)
    for style in (0, 1):
        assert any(not torch.equal(v[style], torch.ones_like(v[style])) for v in scales)
    net = load_transform(full.last_checkpoint)
    assert net.style_names == ["dots", "waves"]


def test_style_images_must_match_the_nets_styles(tmp_path):
    with pytest.raises(RecipeError, match=r"3 image\(s\).*2 styles \(dots, waves\)"):
        _run(tmp_path / "a", "data.style_image=[synthetic:3, synthetic:4, synthetic:5]",
             "train.iterations=1")
    with pytest.raises(RecipeError, match="styles: \\[name"):
        _trainer(tmp_path / "b", "data.style_image=[synthetic:3, synthetic:5]",
                 "train.iterations=1", styles=[]).run()


def test_stylize_blends_a_multi_style_checkpoint_and_explains_a_missing_style(tmp_path, capsys):
    ckpt = _run(tmp_path / "run", "train.iterations=2").last_checkpoint
    photo = tmp_path / "photo.png"
    write_image(photo, torch.rand(3, 40, 46))  # not a multiple of the stride
    def cli(*args: str) -> tuple[int, str]:
        code = run_cli(["stylize", str(args[0]), str(photo), "-o", *args[1:]])
        captured = capsys.readouterr()
        return code, " ".join((captured.out + captured.err).split())

    code, out = cli(ckpt, str(tmp_path / "out"), "--style", "dots:0.5,waves:0.5")
    assert code == 0, out
    written = read_image(tmp_path / "out" / "photo.png")
    blended = percepkit.load(ckpt).blend("dots:0.5,waves:0.5")  # any size, as stylize
    with torch.inference_mode():
        expected = quantize(blended(read_image(photo)[None]))[0]
    assert written.shape == (3, 40, 46)
    assert (written - expected).abs().max() <= 1 / 255 + 1e-6
    code, out = cli(ckpt, str(tmp_path / "o2"))
    assert code != 0 and "multi-style model (dots, waves)" in out and "--style dots" in out
    code, out = cli(ckpt, str(tmp_path / "o3"), "--style", "wave")
    assert code != 0 and "did you mean 'waves'" in out
    code, out = cli(_single_style_checkpoint(tmp_path), str(tmp_path / "o4"), "--style", "dots")
    assert code != 0 and "has one style" in out


def test_export_of_a_multi_style_checkpoint_is_one_style_and_matches_stylize(tmp_path, capsys):
    ckpt = _run(tmp_path / "run", "train.iterations=2").last_checkpoint
    out = tmp_path / "net.pt"
    assert run_cli(["export", str(ckpt), "--format", "torchscript", "-o", str(out),
                    "--style", "dots:0.25,waves:0.75"]) == 0, capsys.readouterr()
    x = torch.rand(1, 3, 32, 32)
    expected = load_transform(ckpt).blend("dots:0.25,waves:0.75")(x)
    torch.testing.assert_close(torch.jit.load(str(out))(x), expected, rtol=1e-4, atol=1e-4)
    assert run_cli(["export", str(ckpt), "--format", "torchscript", "-o",
                    str(tmp_path / "n2.pt")]) != 0
    assert "multi-style model (dots, waves)" in " ".join(capsys.readouterr().err.split())


def _single_style_checkpoint(tmp_path: Path) -> Path:
    return _trainer(tmp_path / "single", "train.iterations=1", styles=[]).run().last_checkpoint


def test_bench_times_a_multi_style_checkpoint_on_the_fast_path(tmp_path, capsys, recwarn):
    """bench folds one style in (as stylize runs it), so the fused fast path applies."""
    ckpt = _run(tmp_path / "run", "train.iterations=1").last_checkpoint
    code = run_cli(["bench", "--checkpoint", str(ckpt), "--sizes", "32", "--iters", "1",
                    "--max-seconds", "0", "--repeats", "1", "--matmul-size", "64", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert not [w for w in recwarn if issubclass(w.category, FastPathWarning)]
    assert json.loads(captured.out)["rows"][0]["size"] == 32
