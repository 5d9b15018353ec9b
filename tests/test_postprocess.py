"""Post-processing: colour preservation, strength, histogram matching (against scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runner import run_cli

from percepkit.data.images import read_image, write_image
from percepkit.inference.postprocess import blend, match_histogram, preserve_color
from percepkit.models.checkpoint import save_model
from percepkit.registry import TRANSFORMS


def test_match_histogram_equals_scikit_image():
    from skimage.exposure import match_histograms

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 37, 41, generator=gen)
    reference = torch.rand(3, 9, 11, generator=gen) ** 3
    ours = match_histogram(image, reference).permute(1, 2, 0).numpy()
    theirs = match_histograms(image.permute(1, 2, 0).double().numpy(),
                              reference.permute(1, 2, 0).double().numpy(), channel_axis=-1)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_match_histogram_gives_the_reference_distribution_and_batches():
    ref = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8).expand(2, 3, 8, 8)
    image = torch.rand(2, 3, 16, 16) * 0.1 + 0.5
    out = match_histogram(image, ref)
    assert out.shape == image.shape
    assert float(out.min()) == pytest.approx(0.0, abs=0.02)
    assert float(out.max()) == pytest.approx(1.0)


def test_preserve_color_keeps_content_chroma_and_stylized_luma():
    content = 0.3 + 0.4 * torch.rand(3, 8, 8)  # chroma small enough that nothing is clamped
    gray = torch.full((3, 8, 8), 0.5)
    out = preserve_color(gray, content)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    torch.testing.assert_close((out * luma).sum(0), torch.full((8, 8), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(preserve_color(content, content), content, atol=1e-6, rtol=0)


def test_blend_ends_and_range():
    a, b = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    assert torch.equal(blend(a, b, 1.0), a) and torch.equal(blend(a, b, 0.0), b)
    with pytest.raises(ValueError):
        blend(a, b, 1.5)


def test_stylize_strength_zero_returns_the_content_random_init_net(tmp_path):
    spec = {"name": "johnson_style", "channels": [8, 8, 8], "residual_blocks": 1}
    ckpt = save_model(tmp_path / "s.safetensors",
                      TRANSFORMS.build(spec).state_dict(),
                      {"task": "style", "transform": spec})
    image = torch.rand(3, 20, 24)
    write_image(tmp_path / "in.png", image)
    assert run_cli(["stylize", str(ckpt), str(tmp_path / "in.png"), "-o",
                    str(tmp_path / "out.png"), "--strength", "0", "-q"]) == 0
    torch.testing.assert_close(read_image(tmp_path / "out.png"), read_image(tmp_path / "in.png"))
    assert run_cli(["stylize", str(ckpt), str(tmp_path / "in.png"), "-o",
                    str(tmp_path / "pc.png"), "--preserve-color", "--strength", "0.5", "-q"]) == 0
    assert run_cli(["stylize", str(ckpt), str(tmp_path / "in.png"), "-o",
                    str(tmp_path / "x.png"), "--strength", "2"]) == 2


def test_upscale_match_histogram_random_init_skip_net(tmp_path):
    spec = {"name": "johnson_sr", "scale": 2, "norm": "none", "skip": True}
    ckpt = save_model(tmp_path / "sr.safetensors",
                      TRANSFORMS.build(spec).state_dict(),
                      {"task": "sr", "transform": spec})
    write_image(tmp_path / "in.png", torch.rand(3, 10, 12))
    assert run_cli(["upscale", str(ckpt), str(tmp_path / "in.png"), "-o",
                    str(tmp_path / "out.png"), "--match-histogram", "-q"]) == 0
    assert read_image(tmp_path / "out.png").shape == (3, 20, 24)
