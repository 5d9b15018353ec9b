"""Training datasets (registered in :data:`percepkit.registry.DATASETS`) and the training sampler.

* ``image_folder``: photos resized (shorter side) and cropped to ``size`` -> ``{"image"}``
  (style transfer content images).
* ``sr_patches``: random HR patches and their LR inputs made on the fly by Gaussian blur and
  MATLAB-bicubic downsampling, or by a ``degradations`` list (:mod:`percepkit.data.degradations`)
  -> ``{"lr", "hr"}`` (super-resolution).
* ``synthetic``: procedurally generated images (gradients, shapes, stripes, checks, noise) for
  tests and tiny recipes that need no files.

``root`` is a folder (searched recursively), one image, or a *list file*: a text file with one
image path per line (blank lines and ``#`` comments ignored; relative paths are relative to the
list file). Recipe paths are relative to the current directory (``~`` and ``$VARS`` expand).

Randomness never comes from global or worker RNG state: every item is fetched with an explicit
*sample seed* (``dataset[(index, seed)]``) chosen by :class:`TrainSampler` from the run seed, the
epoch and the index. Crops, flips and LR inputs are therefore identical whatever the number of
DataLoader workers, and a resumed run sees exactly the samples an uninterrupted run would have.
``dataset[index]`` (a plain int) uses the index as the seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..errors import ImageError, PercepkitError
from ..registry import DATASETS
from .images import IMAGE_EXTENSIONS, list_images, read_image, resize_shorter_side
from .images import quantize as quantize_8bit

__all__ = [
    "ImageFolder", "SRPatches", "Synthetic", "TrainSampler", "collect_images", "degrade",
    "gaussian_blur", "image_folder", "sample_seed", "sr_patches", "synthetic",
]

Key = int | tuple[int, int]
LIST_SUFFIXES = (".txt", ".lst", ".list")
_MAX_BAD_TRIES = 10


# -- helpers --------------------------------------------------------------------------------------
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch of a run seeded with ``seed``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _split_key(key: Key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        index, seed = key
        return int(index), int(seed)
    return int(key), int(key)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _read_list_file(path: Path, base: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PercepkitError(f"{path}: cannot read the list file ({e})") from None
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise PercepkitError(f"{path}: {len(missing)} listed image(s) do not exist ({shown}); "
                             f"relative paths in a list file are relative to {base}")
    return paths


def collect_images(root: str | Path, list_file: str | None = None) -> list[Path]:
    """Image paths from a folder (recursive), one image, or a list file of paths.

    With ``list_file``, the paths it lists are relative to ``root`` when ``root`` is a folder.
    """
    from ..recipes.recipe import expand_path

    root_path = expand_path(str(root))
    if list_file is not None:
        lst = expand_path(list_file)
        if not lst.is_file():
            raise PercepkitError(f"list_file {lst}: no such file (relative to {Path.cwd()})")
        paths = _read_list_file(lst, root_path if root_path.is_dir() else lst.parent)
    elif root_path.is_file() and (root_path.suffix.lower() in LIST_SUFFIXES
                                  or root_path.suffix.lower() not in IMAGE_EXTENSIONS):
        paths = _read_list_file(root_path, root_path.parent)
    elif root_path.exists():
        paths = list_images(root_path)
    else:
        raise PercepkitError(f"root {root_path}: no such folder, image or list file (recipe paths "
                             f"are relative to the current directory, {Path.cwd()})")
    if not paths:
        raise PercepkitError(f"root {root_path}: no images found (looked for "
                             f"{', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    return paths


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (..., H, W) as MATLAB ``imgaussfilt``: 2*ceil(2σ)+1 taps, replicate pad."""
    if sigma <= 0:
        return x
    radius = int(math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    shape = x.shape
    y = x.reshape(-1, 1, shape[-2], shape[-1])
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, g.view(1, 1, 1, -1))
    y = F.conv2d(y, g.view(1, 1, -1, 1))
    return y.reshape(shape)


def degrade(hr: torch.Tensor, scale: int, blur_sigma: float = 1.0,
            quantize: bool = True) -> torch.Tensor:
    """The LR input for an HR image: Gaussian blur σ, MATLAB bicubic ``1/scale``, 8-bit rounding."""
    from .imresize import imresize

    lr = imresize(gaussian_blur(hr, blur_sigma), scale=1.0 / scale)
    return quantize_8bit(lr) if quantize else lr.clamp(0, 1)


DegradationList = list[dict[str, Any] | str]


def _pipeline(dataset: str, specs: DegradationList | None, patch_size: int, scale: int,
              blur_sigma: float) -> Any:
    """The degradation pipeline of ``specs`` (None: the built-in blur + bicubic), checked to
    turn ``patch_size`` targets into ``patch_size/scale`` inputs."""
    if specs is None:
        return None
    from .degradations import build_pipeline, size_problem

    where = f"{dataset}.degradations"
    if blur_sigma != 1.0:
        raise PercepkitError(f"{dataset}: blur_sigma sets the built-in blur, which a "
                             f"degradations list replaces; add a {{name: gaussian_blur, sigma: "
                             f"{blur_sigma}}} step instead")
    pipeline = build_pipeline(specs, where)
    problem = size_problem(pipeline, patch_size, scale, where)
    if problem:
        raise PercepkitError(problem)
    return pipeline


def _make_lr(hr: torch.Tensor, pipeline: Any, gen: torch.Generator, scale: int,
             blur_sigma: float, quantize: bool) -> torch.Tensor:
    """The LR input of ``hr``: ``pipeline(hr, gen)`` (rounded to 8 bits if ``quantize``, else
    as the steps leave it), or the built-in blur + bicubic when there is no pipeline."""
    if pipeline is None:
        return degrade(hr, scale, blur_sigma, quantize)
    lr = pipeline(hr, gen)
    want = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    if tuple(lr.shape[-2:]) != want:
        raise PercepkitError(f"degradations: made a {lr.shape[-1]}x{lr.shape[-2]} input for a "
                             f"{hr.shape[-1]}x{hr.shape[-2]} target; scale {scale} needs "
                             f"{want[1]}x{want[0]}")
    # without rounding, the steps' own range is kept: each clips to [0, 1] unless told not to
    # (gaussian_noise clip: false, the denoise protocol's unclipped noise)
    return quantize_8bit(lr) if quantize else lr


def _crop(img: torch.Tensor, size: int, random: bool, gen: torch.Generator | None
          ) -> torch.Tensor:
    h, w = img.shape[-2:]
    if random:
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return img[..., top:top + size, left:left + size]


class _FileDataset(Dataset):
    """Common part of the file-backed datasets: paths, and skipping unreadable files."""

    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> tuple[int, torch.Tensor]:
        """Read image ``index``; unreadable files are skipped (with a warning) for the next one."""
        for attempt in range(_MAX_BAD_TRIES):
            i = (index + attempt) % len(self.paths)
            try:
                return i, read_image(self.paths[i])
            except ImageError as e:
                warnings.warn(f"skipping an unreadable training image: {e}", stacklevel=3)
        raise PercepkitError(f"{_MAX_BAD_TRIES} training images in a row could not be read, "
                             f"starting at {self.paths[index]}; check the dataset")

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        index, seed = _split_key(key)
        _, img = self._read(index)
        return self.make(img, _generator(seed))

    def make(self, img: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# -- image_folder ---------------------------------------------------------------------------------
class ImageFolder(_FileDataset):
    """Images resized so the shorter side is ``size``, then cropped to ``size`` x ``size``."""

    def __init__(self, paths: Sequence[Path], size: int = 256,
                 crop: Literal["random", "center"] = "random", flip: bool = False) -> None:
        if size < 1:
            raise PercepkitError(f"image_folder: size must be positive, got {size}")
        self.paths = [str(p) for p in paths]
        self.size, self.crop, self.flip = int(size), crop, flip

    def make(self, img: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        img = _crop(resize_shorter_side(img, self.size), self.size, self.crop == "random", gen)
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            img = img.flip(-1)
        return {"image": img.contiguous()}


@DATASETS.register("image_folder")
def image_folder(root: str, size: int = 256, crop: Literal["random", "center"] = "random",
                 list_file: str | None = None, flip: bool = False) -> ImageFolder:
    """Any folder / list file of images, resized (shorter side) and cropped to size x size."""
    return ImageFolder(collect_images(root, list_file), size=size, crop=crop, flip=flip)


# -- sr_patches -----------------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, or None if Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # reported when the image is actually read
        return None


class SRPatches(_FileDataset):
    """Random ``patch_size`` HR crops and their LR inputs (blur σ, bicubic 1/scale, 8-bit; or a
    degradation pipeline drawn from the sample's generator)."""

    def __init__(self, paths: Sequence[Path], scale: int = 4, patch_size: int = 288,
                 blur_sigma: float = 1.0, flip: bool = True, quantize: bool = True,
                 small: Literal["skip", "upscale"] = "skip",
                 degradations: DegradationList | None = None) -> None:
        if scale < 1 or patch_size % scale:
            raise PercepkitError(f"sr_patches: patch_size ({patch_size}) must be a multiple of "
                                 f"scale ({scale})")
        if blur_sigma < 0:
            raise PercepkitError(f"sr_patches: blur_sigma must be >= 0, got {blur_sigma}")
        self.scale, self.patch_size = int(scale), int(patch_size)
        self.blur_sigma, self.flip, self.quantize, self.small = blur_sigma, flip, quantize, small
        self.pipeline = _pipeline("sr_patches", degradations, self.patch_size, self.scale,
                                  blur_sigma)
        self.paths = [str(p) for p in paths]
        if small == "skip":
            self._drop_small()

    def _drop_small(self) -> None:
        sizes = [_image_size(Path(p)) for p in self.paths]
        p = self.patch_size
        small = [path for path, s in zip(self.paths, sizes) if s is not None and min(s) < p]
        if not small:
            return
        if len(small) == len(self.paths):
            raise PercepkitError(
                f"sr_patches: all {len(small)} images are smaller than patch_size {p} (e.g. "
                f"{small[0]}); lower data.train.patch_size or set data.train.small: upscale")
        names = ", ".join(Path(s).name for s in small[:5]) + \
            (f" and {len(small) - 5} more" if len(small) > 5 else "")
        warnings.warn(f"sr_patches: skipping {len(small)} of {len(self.paths)} images with a side "
                      f"shorter than patch_size {p}: {names}", stacklevel=3)
        dropped = set(small)
        self.paths = [q for q in self.paths if q not in dropped]

    def make(self, img: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if min(img.shape[-2:]) < self.patch_size:  # small == "upscale" (or a header we missed)
            img = resize_shorter_side(img, self.patch_size)
        hr = _crop(img, self.patch_size, True, gen)
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            hr = hr.flip(-1)
        hr = hr.contiguous()
        lr = _make_lr(hr, self.pipeline, gen, self.scale, self.blur_sigma, self.quantize)
        return {"lr": lr, "hr": hr}


@DATASETS.register("sr_patches")
def sr_patches(root: str, scale: int = 4, patch_size: int = 288, blur_sigma: float = 1.0,
               flip: bool = True, list_file: str | None = None, quantize: bool = True,
               small: Literal["skip", "upscale"] = "skip",
               degradations: DegradationList | None = None) -> SRPatches:
    """Random HR patches with LR made on the fly: Gaussian blur σ, then MATLAB bicubic 1/scale.

    Images smaller than the patch are skipped with a warning naming them (``small: skip``), or
    upscaled to fit (``small: upscale``, which blurs their HR targets). LR is rounded to 8 bits
    (``quantize``), as saved LR images and the evaluation benchmarks are. ``degradations``, a
    list of steps (``percepkit list degradations``), replaces the blur and bicubic, e.g.
    ``[{name: realesrgan, scale: 4}]``; its random choices are seeded by the sample's key.
    """
    return SRPatches(collect_images(root, list_file), scale=scale, patch_size=patch_size,
                     blur_sigma=blur_sigma, flip=flip, quantize=quantize, small=small,
                     degradations=degradations)


# -- synthetic ------------------------------------------------------------------------------------
def synthetic_image(size: int, seed: int) -> torch.Tensor:
    """One procedural RGB image (3, size, size) in [0, 1]: gradient, shapes, a texture, noise."""
    g = _generator(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g)

    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    angle = float(rand(1)) * 2 * math.pi
    t = (math.cos(angle) * xx + math.sin(angle) * yy)
    t = (t - t.min()) / (t.max() - t.min() + 1e-8)
    c0, c1 = rand(3, 1, 1), rand(3, 1, 1)
    img = c0 * (1 - t) + c1 * t
    for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
        color = rand(3, 1, 1)
        cx, cy, rx, ry = rand(4).tolist()
        rx, ry = 0.05 + 0.3 * rx, 0.05 + 0.3 * ry
        if float(rand(1)) < 0.5:  # ellipse
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        else:  # rectangle
            mask = ((xx - cx).abs() <= rx) & ((yy - cy).abs() <= ry)
        img = torch.where(mask, color, img)
    kind = int(torch.randint(0, 3, (1,), generator=g))
    freq = 4 + 20 * float(rand(1))
    theta = float(rand(1)) * math.pi
    if kind == 0:  # stripes
        tex = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (math.cos(theta) * xx
                                                          + math.sin(theta) * yy))
    elif kind == 1:  # checks
        tex = ((torch.floor(xx * freq) + torch.floor(yy * freq)) % 2).float()
    else:  # smooth blobs
        tex = F.interpolate(rand(1, 1, 6, 6), size=(size, size), mode="bicubic",
                            align_corners=False)[0, 0]
    mix = 0.15 + 0.35 * float(rand(1))
    img = img * (1 - mix) + mix * tex * rand(3, 1, 1)
    img = img + 0.03 * torch.randn((3, size, size), generator=g)
    return img.clamp(0, 1).contiguous()


class Synthetic(Dataset):
    """``count`` fixed procedural images (no files); with ``scale``, LR/HR pairs."""

    def __init__(self, count: int = 64, size: int = 96, seed: int = 0, scale: int | None = None,
                 blur_sigma: float = 1.0, degradations: DegradationList | None = None) -> None:
        if count < 1 or size < 4:
            raise PercepkitError(f"synthetic: need count >= 1 and size >= 4, got {count}, {size}")
        if scale is not None and (scale < 1 or size % scale):
            raise PercepkitError(f"synthetic: size ({size}) must be a multiple of scale ({scale})")
        if degradations is not None and scale is None:
            raise PercepkitError("synthetic: degradations make LR inputs, so they need scale "
                                 "(the transform's)")
        self.count, self.size, self.seed = int(count), int(size), int(seed)
        self.scale, self.blur_sigma = scale, blur_sigma
        self.pipeline = None if scale is None else \
            _pipeline("synthetic", degradations, self.size, scale, blur_sigma)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        index, seed = _split_key(key)  # the images are fixed: the seed only draws degradations
        if not 0 <= index < self.count:
            raise IndexError(index)
        img = synthetic_image(self.size, sample_seed(self.seed, 0x5EED, index))
        if self.scale is None:
            return {"image": img}
        lr = _make_lr(img, self.pipeline, _generator(seed), self.scale, self.blur_sigma, True)
        return {"lr": lr, "hr": img}


@DATASETS.register("synthetic")
def synthetic(count: int = 64, size: int = 96, seed: int = 0, scale: int | None = None,
              blur_sigma: float = 1.0, degradations: DegradationList | None = None
              ) -> Synthetic:
    """Procedural images (gradients, shapes, textures) for tests; {"lr","hr"} if scale is set.

    The LR is blur + bicubic, or made by ``degradations`` (as ``sr_patches``'), seeded by the
    sample's key."""
    return Synthetic(count=count, size=size, seed=seed, scale=scale, blur_sigma=blur_sigma,
                     degradations=degradations)


# -- sampling -------------------------------------------------------------------------------------
class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class TrainSampler(Sampler):
    """Endless stream of ``(index, sample_seed)`` keys: seeded, shardable and resumable.

    Each epoch is :class:`torch.utils.data.DistributedSampler`'s order (a permutation seeded with
    ``seed + epoch``, padded to a multiple of ``world_size``, rank ``r`` taking every
    ``world_size``-th item from ``r``); a single process is ``world_size=1``. Batches run on across
    epoch boundaries. ``start`` skips that many of this rank's keys without loading anything,
    which is how a resumed run continues exactly where it stopped.
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True) -> None:
        if length < 1:
            raise PercepkitError("the training dataset is empty")
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.start, self.shuffle = int(start), shuffle
        self.per_rank = math.ceil(length / world_size)

    def _epoch(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(_Sized(self.length), num_replicas=self.world_size,
                                     rank=self.rank, shuffle=self.shuffle, seed=self.seed,
                                     drop_last=False)
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = self._epoch(epoch)
            for index in order[offset:]:
                yield index, sample_seed(self.seed, epoch, index)
            epoch, offset = epoch + 1, 0
