"""Training datasets: shapes, determinism, degradation, file handling, the resumable sampler."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from percepkit.data.datasets import (
    TrainSampler,
    degrade,
    gaussian_blur,
    image_folder,
    sr_patches,
    synthetic,
)
from percepkit.data.imresize import imresize
from percepkit.errors import PercepkitError, RecipeError
from percepkit.recipes.recipe import recipe_from_mapping
from percepkit.registry import DATASETS


def _save(path, w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def photo_dir(tmp_path):
    root = tmp_path / "photos"
    _save(root / "a.png", 120, 100, seed=1)
    _save(root / "sub" / "b.jpg", 90, 140, seed=2)
    _save(root / "sub" / "deeper" / "c.png", 100, 100, mode="L", seed=3)
    _save(root / "d.png", 110, 96, mode="RGBA", seed=4)
    (root / "notes.txt").write_text("not an image")
    return root


# -- synthetic ------------------------------------------------------------------------------------
def test_synthetic_images_are_fixed_and_varied():
    ds = synthetic(count=6, size=40, seed=3)
    a = torch.stack([ds[i]["image"] for i in range(6)])
    assert a.shape == (6, 3, 40, 40) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a[2], ds[(2, 999)]["image"])  # the sample seed does not change the image
    assert torch.equal(a, torch.stack([synthetic(count=6, size=40, seed=3)[i]["image"]
                                       for i in range(6)]))
    assert (a[0] - a[1]).abs().mean() > 0.05  # different images, not copies
    other = synthetic(count=6, size=40, seed=4)[0]["image"]
    assert not torch.equal(a[0], other)
    assert a.std() > 0.1  # real structure, not a flat colour


def test_synthetic_sr_pairs_follow_the_degradation():
    ds = synthetic(count=2, size=48, scale=4, blur_sigma=1.0)
    item = ds[0]
    assert item["hr"].shape == (3, 48, 48) and item["lr"].shape == (3, 12, 12)
    expected = imresize(gaussian_blur(item["hr"], 1.0), scale=0.25).clamp(0, 1)
    expected = expected.mul(255).round().div(255)
    assert torch.equal(item["lr"], expected)
    with pytest.raises(PercepkitError, match="multiple of scale"):
        synthetic(size=50, scale=4)


def test_gaussian_blur_matches_a_direct_convolution():
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    y = gaussian_blur(x, 1.0)
    # 2*ceil(2)+1 = 5 taps, replicate padding, separable normalised Gaussian
    t = torch.arange(-2, 3, dtype=torch.float64)
    g = torch.exp(-t**2 / 2)
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, 5, 5)
    ref = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x.reshape(-1, 1, 20, 24), (2, 2, 2, 2), mode="replicate"), k)
    assert torch.allclose(y, ref.reshape(y.shape), atol=1e-12)
    flat = torch.full((3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)


# -- image_folder ---------------------------------------------------------------------------------
def test_image_folder_reads_any_mode_recursively(photo_dir):
    ds = image_folder(str(photo_dir), size=64, crop="center")
    assert len(ds) == 4  # notes.txt ignored, subfolders searched
    for i in range(len(ds)):
        img = ds[i]["image"]
        assert img.shape == (3, 64, 64) and img.dtype == torch.float32
        assert img.min() >= 0 and img.max() <= 1
    assert torch.equal(ds[(1, 5)]["image"], ds[(1, 6)]["image"])  # center crop: no randomness


def test_image_folder_random_crop_depends_only_on_the_sample_seed(photo_dir):
    ds = image_folder(str(photo_dir), size=48, crop="random")
    a, b = ds[(0, 11)]["image"], ds[(0, 11)]["image"]
    assert torch.equal(a, b)
    crops = {ds[(0, s)]["image"].sum().item() for s in range(8)}
    assert len(crops) > 1


def test_list_files(photo_dir, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text(f"# two images\n{photo_dir / 'a.png'}\n\nphotos/sub/b.jpg\n")
    ds = image_folder(str(lst), size=32)
    assert len(ds) == 2
    names = tmp_path / "names.lst"
    names.write_text("a.png\nsub/deeper/c.png\n")
    ds = image_folder(str(photo_dir), size=32, list_file=str(names))
    assert [p.split("/")[-1] for p in ds.paths] == ["a.png", "c.png"]
    names.write_text("a.png\nmissing.png\n")
    with pytest.raises(PercepkitError, match="missing.png"):
        image_folder(str(photo_dir), list_file=str(names))


def test_missing_and_empty_roots_are_clear_errors(tmp_path):
    with pytest.raises(PercepkitError, match="no such folder"):
        image_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PercepkitError, match="no images found"):
        sr_patches(str(tmp_path / "empty"))


def test_unreadable_images_are_skipped_with_a_warning(photo_dir):
    (photo_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    ds = image_folder(str(photo_dir), size=32, crop="center")
    broken = [i for i, p in enumerate(ds.paths) if p.endswith("broken.png")][0]
    with pytest.warns(UserWarning, match="broken.png"):
        img = ds[broken]["image"]
    assert img.shape == (3, 32, 32)


# -- sr_patches -----------------------------------------------------------------------------------
def test_sr_patches_shapes_and_degradation(photo_dir):
    with pytest.warns(UserWarning, match="skipping 1 of 4 .*b.jpg"):
        ds = sr_patches(str(photo_dir), scale=4, patch_size=96, blur_sigma=1.0, flip=False)
    assert len(ds) == 3  # b.jpg is 90 px wide: smaller than the patch
    item = ds[(0, 3)]
    assert item["hr"].shape == (3, 96, 96) and item["lr"].shape == (3, 24, 24)
    assert torch.equal(item["lr"], degrade(item["hr"], 4, 1.0))
    assert torch.equal(ds[(0, 3)]["hr"], item["hr"])
    lr8 = item["lr"] * 255
    assert torch.equal(lr8, lr8.round())  # 8-bit like a saved LR image


def test_sr_patches_flip_and_small_image_policies(photo_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flip = sr_patches(str(photo_dir), patch_size=96, flip=True)
        plain = sr_patches(str(photo_dir), patch_size=96, flip=False)
    flips = [torch.equal(flip[(0, s)]["hr"], plain[(0, s)]["hr"].flip(-1)) for s in range(16)]
    same = [torch.equal(flip[(0, s)]["hr"], plain[(0, s)]["hr"]) for s in range(16)]
    assert any(flips) and any(same) and all(a or b for a, b in zip(flips, same))
    up = sr_patches(str(photo_dir), patch_size=96, small="upscale")
    assert len(up) == 4 and up[(1, 0)]["hr"].shape == (3, 96, 96)
    with pytest.raises(PercepkitError, match="all 4 images are smaller"):
        sr_patches(str(photo_dir), patch_size=400)
    with pytest.raises(PercepkitError, match="multiple of scale"):
        sr_patches(str(photo_dir), patch_size=90, scale=4)


def test_recipes_validate_dataset_keys():
    base = {"transform": {"name": "bicubic"}, "losses": [{"name": "pixel"}]}
    recipe_from_mapping({**base, "data": {"train": {"name": "synthetic", "scale": 4}}})
    with pytest.raises(RecipeError, match="patch_sise"):
        recipe_from_mapping({**base, "data": {"train": {"name": "sr_patches", "root": "x",
                                                        "patch_sise": 96}}})
    assert {"image_folder", "sr_patches", "synthetic"} <= set(DATASETS.names())


# -- sampler and loader ---------------------------------------------------------------------------
def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_resumes_exactly_and_crosses_epochs():
    full = _take(TrainSampler(10, seed=4), 35)
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # each epoch is a permutation
    assert [i for i, _ in full[:10]] != [i for i, _ in full[10:20]]  # reshuffled per epoch
    for start in (0, 3, 10, 17):
        assert _take(TrainSampler(10, seed=4, start=start), 35 - start) == full[start:]
    assert _take(TrainSampler(10, seed=5), 10) != full[:10]
    seeds = [s for _, s in full]
    assert len(set(seeds)) == len(seeds)  # a fresh augmentation for every draw


def test_sampler_shards_like_distributed_sampler():
    single = [i for i, _ in _take(TrainSampler(12, seed=1), 12)]
    r0 = [i for i, _ in _take(TrainSampler(12, seed=1, rank=0, world_size=2), 6)]
    r1 = [i for i, _ in _take(TrainSampler(12, seed=1, rank=1, world_size=2), 6)]
    assert r0 == single[0::2] and r1 == single[1::2]
    assert TrainSampler(13, world_size=2).per_rank == 7


def test_loader_batches_do_not_depend_on_workers(photo_dir):
    from torch.utils.data import DataLoader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = sr_patches(str(photo_dir), patch_size=64, scale=4)

    def batches(workers):
        loader = DataLoader(ds, batch_size=2, sampler=TrainSampler(len(ds), seed=2),
                            num_workers=workers)
        return [b["lr"] for b in itertools.islice(iter(loader), 4)]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


# -- real data (optional) -------------------------------------------------------------------------
def test_real_training_photos(shared_data):
    ds = sr_patches(str(shared_data / "train" / "BSD200"), scale=4, patch_size=96)
    assert len(ds) == 200
    item = ds[(5, 1)]
    assert item["hr"].shape == (3, 96, 96) and item["lr"].shape == (3, 24, 24)
    with pytest.warns(UserWarning, match="t20.bmp"):
        t91 = sr_patches(str(shared_data / "train" / "T91"), patch_size=96)
    assert len(t91) == 90
    style = image_folder(str(shared_data / "content"), size=128, crop="center")
    assert len(style) == 3 and style[0]["image"].shape == (3, 128, 128)


def test_image_folder_arguments_that_are_files_or_missing_say_which(tmp_path):
    from percepkit.registry import DATASETS

    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(PercepkitError, match="is a file; expected a folder of HR images"):
        DATASETS.build({"name": "hr_folder", "root": str(tmp_path / "f.png")})
    with pytest.raises(PercepkitError, match="no such folder"):
        DATASETS.build({"name": "hr_folder", "root": str(tmp_path / "nope")})


@pytest.mark.parametrize("shape", [(3, 3000, 1500), (1, 7, 5)])
def test_to_uint8_in_bands_equals_the_direct_conversion(shape):
    """Bands of rows (here two bands and a short third for the large image) give exactly the
    direct clamp/scale/round conversion, as a contiguous HWC (or HW) array."""
    from percepkit.data.images import to_uint8

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    direct = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = to_uint8(x)
    assert out.flags.c_contiguous
    assert (out == (direct[..., 0] if shape[0] == 1 else direct)).all()
