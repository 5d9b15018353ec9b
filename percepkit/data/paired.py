"""Paired data: input and target folders matched by file name (``paired_folder``).

The pairs are found once, before training or evaluation starts, and every problem is reported
together in one paragraph: target files with no input, input files with no target, two inputs
claiming one target, unreadable files, and size mismatches. The target must be ``scale`` times
the input, up to the target's crop to a multiple of ``scale`` (as BasicSR's ``mod_crop`` and the
SR benchmarks do; e.g. BSD100's 481x321 HR goes with a 120x80 x4 LR).

An input matches a target when their stems are equal after dropping the usual suffixes
(``baby_x4.png``, ``babyx4.png``, ``baby_LR.png``, ``baby_LRBICx4.png`` all go with ``baby.png``).
An optional ``meta_info`` list file names the pairs to use, one per line: a target file name
(relative to ``hr_root``), optionally followed by its input file name (relative to ``lr_root``);
anything after that, such as BasicSR's ``(480,480,3)`` shape, blank lines and ``#`` comments are
ignored.

:class:`PairedFolder` yields ``{"lr", "hr"}`` items: aligned random crops (``patch_size`` on the
target, ``patch_size/scale`` on the input) with flips and 90° rotations drawn from the sample's
key, for training; whole images (``patch_size`` unset) for validation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import PercepkitError
from ..registry import DATASETS

__all__ = ["PairedFolder", "match_pairs", "paired_folder"]

Pair = tuple[Path, Path]  # (input, target)


def _listing(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _read_meta_info(path: Path) -> list[tuple[str, str | None]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PercepkitError(f"meta_info {path}: cannot read the list file ({e})") from None
    out = []
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        lr = parts[1] if len(parts) > 1 and not parts[1].startswith("(") else None
        out.append((parts[0], lr))
    if not out:
        raise PercepkitError(f"meta_info {path}: names no pairs (one target file name per "
                             f"line, optionally followed by its input file name)")
    return out


def _folder(root: str, what: str, key: str) -> Path:
    from ..recipes.recipe import expand_path

    folder = expand_path(root)
    if folder.is_file():
        raise PercepkitError(f"{key} {folder}: is a file; expected a folder of {what}")
    if not folder.is_dir():
        raise PercepkitError(f"{key} {folder}: no such folder (expected a folder of {what}; "
                             f"recipe paths are relative to the current directory, {Path.cwd()})")
    return folder


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header; None when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None


def match_pairs(lr_root: str, hr_root: str, scale: int, meta_info: str | None = None,
                lr_key: str = "lr_root", hr_key: str = "hr_root") -> list[Pair]:
    """``(input, target)`` paths matched by stem, sizes checked, sorted by target path.

    Raises one :class:`PercepkitError` listing every unmatched file and every mismatch.
    ``lr_key``/``hr_key`` name the folders in messages (``--lr-dir`` for the eval command).
    """
    from ..recipes.recipe import expand_path
    from .benchmark_sets import _pair_key
    from .images import list_images

    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise PercepkitError(f"paired_folder: scale must be a positive integer, got {scale!r}")
    lr_dir = _folder(lr_root, "input (LR) images", lr_key)
    hr_dir = _folder(hr_root, "target (HR) images", hr_key)
    lr_files = list_images(lr_dir)
    problems: list[str] = []
    by_key: dict[str, list[Path]] = {}
    for p in lr_files:
        by_key.setdefault(_pair_key(p.stem, scale), []).append(p)
    if meta_info is not None:
        meta = expand_path(meta_info)
        if not meta.is_file():
            raise PercepkitError(f"meta_info {meta}: no such file (relative to {Path.cwd()})")
        wanted = [(hr_dir / hr, None if lr is None else lr_dir / lr)
                  for hr, lr in _read_meta_info(meta)]
        missing = [str(hr) for hr, _ in wanted if not hr.is_file()]
        missing += [str(lr) for _, lr in wanted if lr is not None and not lr.is_file()]
        if missing:
            problems.append(f"{len(missing)} file(s) named in meta_info {meta} do not exist "
                            f"({_listing(missing)})")
        wanted = [(hr, lr) for hr, lr in wanted
                  if hr.is_file() and (lr is None or lr.is_file())]
    else:
        wanted = [(hr, None) for hr in list_images(hr_dir)]
    pairs: list[Pair] = []
    no_input, ambiguous = [], []
    used: set[Path] = set()
    for hr, lr in wanted:
        if lr is None:
            found = by_key.get(_pair_key(hr.stem, scale), [])
            if len(found) > 1:
                ambiguous.append(f"{hr.name} ({', '.join(p.name for p in found)})")
                continue
            if not found:
                no_input.append(hr.name)
                continue
            lr = found[0]
        used.add(lr)
        pairs.append((lr, hr))
    if no_input:
        problems.append(f"{len(no_input)} target(s) in {hr_dir} have no input in {lr_dir} "
                        f"({_listing(no_input)})")
    if ambiguous:
        problems.append(f"{len(ambiguous)} target(s) match several inputs "
                        f"({_listing(ambiguous)})")
    if meta_info is None:
        extra = [p.name for p in lr_files if p not in used]
        if extra:
            problems.append(f"{len(extra)} input(s) in {lr_dir} have no target in {hr_dir} "
                            f"({_listing(extra)})")
    mismatched, unreadable = [], []
    for lr, hr in pairs:
        ls, hs = _header_size(lr), _header_size(hr)
        if ls is None or hs is None:
            unreadable.append((lr if ls is None else hr).name)
            continue
        if not all(scale * a <= b < scale * (a + 1) for a, b in zip(ls, hs)):
            mismatched.append(f"{lr.name} {ls[0]}x{ls[1]} vs {hr.name} {hs[0]}x{hs[1]}")
    if unreadable:
        problems.append(f"{len(unreadable)} file(s) cannot be read as images "
                        f"({_listing(unreadable)})")
    if mismatched:
        problems.append(f"{len(mismatched)} pair(s) where the target is not {scale} x the input "
                        f"(up to a crop to a multiple of {scale}): {_listing(mismatched)}")
    if problems:
        raise PercepkitError(
            f"paired folders {lr_key} {lr_dir} and {hr_key} {hr_dir} (x{scale}): "
            + "; ".join(problems) + f". Inputs match targets by file name; suffixes like "
            f"_x{scale}, x{scale} or _LR are ignored (baby_x4.png goes with baby.png).")
    if not pairs:
        raise PercepkitError(f"paired folders {lr_dir} and {hr_dir}: no images found")
    return sorted(pairs, key=lambda p: str(p[1]))


class PairedFolder(Dataset):
    """Input/target pairs from two folders: aligned random crops for training, or whole images.

    ``dataset[(index, seed)]`` draws the crop, flip and rotation from ``seed`` (the sample's key,
    as every training dataset does); ``dataset[index]`` uses the index as the seed.
    """

    def __init__(self, pairs: Sequence[Pair], scale: int = 4, patch_size: int | None = None,
                 flip: bool = True, rot90: bool = False) -> None:
        if patch_size is not None and (patch_size < scale or patch_size % scale):
            raise PercepkitError(f"paired_folder: patch_size ({patch_size}) must be a positive "
                                 f"multiple of scale ({scale})")
        self.pairs = list(pairs)
        self.scale, self.patch_size = int(scale), patch_size
        self.flip, self.rot90 = flip, rot90
        if patch_size is not None:
            self._drop_small()

    def _drop_small(self) -> None:
        p = self.patch_size
        small = [hr for _, hr in self.pairs if min(_header_size(hr) or (p, p)) < p]
        if not small:
            return
        if len(small) == len(self.pairs):
            raise PercepkitError(f"paired_folder: all {len(small)} targets are smaller than "
                                 f"patch_size {p} (e.g. {small[0]}); lower patch_size")
        warnings.warn(f"paired_folder: skipping {len(small)} of {len(self.pairs)} pairs whose "
                      f"target has a side shorter than patch_size {p}: "
                      f"{_listing([s.name for s in small])}", stacklevel=3)
        dropped = set(small)
        self.pairs = [pair for pair in self.pairs if pair[1] not in dropped]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        from .datasets import _generator, _split_key
        from .images import read_image

        index, seed = _split_key(key)
        lr_path, hr_path = self.pairs[index]
        lr, hr = read_image(lr_path), read_image(hr_path)
        s = self.scale
        h, w = lr.shape[-2:]
        hr = hr[..., :h * s, :w * s]  # the crop to a multiple of the scale
        gen = _generator(seed)
        if self.patch_size is not None:
            lp = self.patch_size // s
            top = int(torch.randint(0, h - lp + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - lp + 1, (1,), generator=gen))
            lr = lr[..., top:top + lp, left:left + lp]
            hr = hr[..., top * s:(top + lp) * s, left * s:(left + lp) * s]
        else:  # a whole image (validation): as it is
            return {"lr": lr.contiguous(), "hr": hr.contiguous(), "name": hr_path.stem}
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            lr, hr = lr.flip(-1), hr.flip(-1)
        if self.rot90:
            k = int(torch.randint(0, 4, (1,), generator=gen))
            lr, hr = torch.rot90(lr, k, (-2, -1)), torch.rot90(hr, k, (-2, -1))
        return {"lr": lr.contiguous(), "hr": hr.contiguous()}


@DATASETS.register("paired_folder")
def paired_folder(lr_root: str, hr_root: str, scale: int = 4, patch_size: int | None = None,
                  flip: bool = True, rot90: bool = False,
                  meta_info: str | None = None) -> PairedFolder:
    """Input (LR) and target (HR) folders matched by file name; for training and validation.

    ``baby_x4.png`` / ``babyx4.png`` / ``baby_LR.png`` go with ``baby.png``; the target must be
    ``scale`` x the input (up to a crop to a multiple of ``scale``); every unmatched file and
    size mismatch is listed at once. With ``patch_size`` (on the target): aligned random crops,
    with random horizontal ``flip`` and ``rot90`` rotations, seeded per sample; without it:
    whole images as they are (``data.val``). ``meta_info``: a list file naming the pairs.
    """
    pairs = match_pairs(lr_root, hr_root, scale, meta_info)
    return PairedFolder(pairs, scale=scale, patch_size=patch_size, flip=flip, rot90=rot90)
