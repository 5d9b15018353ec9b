"""Evaluation datasets: Set5, Set14, BSD100 (SR), CBSD68 and Set12 (denoising), any HR folder,
paired LR/HR folders.

Every dataset yields :class:`Sample` objects with the HR image mod-cropped to a multiple of the
scale and the LR input made from it by MATLAB-compatible bicubic downsampling
(``imresize(hr, 1/scale)``, antialiased) rounded to 8 bits, as a ``uint8`` LR PNG would be: the
convention of SRCNN/BasicSR tables. Single-channel files stay single-channel (their scores are
computed on raw gray values, as MATLAB scripts do).

Where the data comes from:

* ``set5`` ships inside the package (``percepkit/assets/Set5``, checksums verified at load);
* ``set14`` / ``bsd100`` / ``cbsd68`` / ``set12``: ``root=`` (``--data-dir``), else
  ``$PERCEPKIT_DATA/<Set14|BSD100|CBSD68|Set12>``,
  else the cache ``$PERCEPKIT_CACHE/datasets`` (default ``~/.cache/percepkit/datasets``),
  where they are downloaded file by file from pinned GitHub commits and checked against
  SHA-256 sums;
* ``hr_folder`` / ``paired_folder``: your own images.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import ImageError, PercepkitError
from ..models import hub
from ..registry import DATASETS
from ..runtime.files import asset_path, env_folders, sha256_file
from .images import list_images, quantize, read_image
from .imresize import imresize, mod_crop

__all__ = [
    "SRBenchmark", "Sample", "cache_dir", "download_benchmark", "hr_folder", "locate_benchmark",
    "make_lr", "paired_folder", "quantize", "set5", "set14", "bsd100", "cbsd68", "set12",
]


@dataclass
class Sample:
    """One evaluation image: HR ground truth and its LR input, CxHxW float32 in [0, 1]."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor
    path: Path
    notes: list[str] = field(default_factory=list)


def make_lr(hr: torch.Tensor, scale: int, quantize_lr: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(hr, 1/scale)`` bicubic (antialiased) in float64, then 8-bit rounding."""
    lr = imresize(hr.to(torch.float64), scale=1.0 / scale)
    return (quantize(lr) if quantize_lr else lr).to(hr.dtype)


def _describe_mode(path: Path) -> tuple[str, list[str]]:
    try:
        with Image.open(path) as img:
            mode = img.mode
    except Exception:  # read_image reports unreadable files with the reason
        return "", []
    notes = []
    if "A" in mode or (mode == "P" and "transparency" in getattr(img, "info", {})):
        notes.append("alpha channel ignored")
    if mode.startswith("I;16") or mode == "I":
        notes.append("16-bit image rounded to 8 bits")
    return mode, notes


def load_hr(path: Path, scale: int, mod: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Read an HR image (1 or 3 channels), round to 8 bits and crop to a multiple of ``mod``
    (default ``scale``); unreadable or too-small files raise ImageError naming the file."""
    _, notes = _describe_mode(path)
    hr = read_image(path, mode="keep")
    hr8 = quantize(hr)
    if not notes and (hr8 - hr).abs().max() > 1e-6:
        notes.append("more than 8 bits per channel: rounded to 8 bits")
    h, w = hr8.shape[-2:]
    mod = mod or scale
    if h < mod or w < mod:
        what = f"the scale factor {scale}" if mod == scale else f"the mod-crop multiple {mod}"
        raise ImageError(f"{path}: {w}x{h} image is smaller than {what}")
    return mod_crop(hr8, mod).contiguous(), notes


class SRBenchmark(torch.utils.data.Dataset):
    """A list of HR images (optionally with their own LR files) evaluated at one ``scale``.

    ``sample(i)`` returns a :class:`Sample` or raises :class:`ImageError` naming the file.
    ``checksum_note`` says whether the files match the reference copy published tables use.
    ``mod`` crops HR to a multiple of it instead of the scale (12 gives BasicSR's ``GTmod12``).
    """

    def __init__(self, name: str, hr_paths: Sequence[Path], scale: int = 4,
                 lr_paths: Sequence[Path] | None = None, quantize_lr: bool = True,
                 source: str = "", checksum_note: str = "", mod: int | None = None) -> None:
        if int(scale) != scale or scale < 1:
            raise PercepkitError(f"{name}: scale must be a positive integer, got {scale}")
        if mod is not None and (mod < 1 or mod % scale):
            raise PercepkitError(f"{name}: the mod-crop multiple must be a multiple of the "
                                 f"scale {scale}, got {mod}")
        self.mod = mod
        if not hr_paths:
            raise PercepkitError(f"{name}: no images found in {source or 'the given folder'}")
        self.name = name
        self.scale = int(scale)
        self.hr_paths = list(hr_paths)
        self.lr_paths = list(lr_paths) if lr_paths is not None else None
        self.quantize_lr = quantize_lr
        self.source = source
        self.checksum_note = checksum_note

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, x{self.scale})"

    def sample(self, index: int) -> Sample:
        """The ``index``-th image: HR (8-bit, mod-cropped) and its LR input."""
        path = self.hr_paths[index]
        hr, notes = load_hr(path, self.scale, self.mod)
        if self.lr_paths is None:
            lr = make_lr(hr, self.scale, self.quantize_lr)
        else:
            lr, hr = self._paired_lr(self.lr_paths[index], hr, path)
        return Sample(name=path.stem, hr=hr, lr=lr, path=path, notes=notes)

    def _paired_lr(self, lr_path: Path, hr: torch.Tensor,
                   hr_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        lr = quantize(read_image(lr_path, mode="keep"))
        s = self.scale
        want_h, want_w = lr.shape[-2] * s, lr.shape[-1] * s
        if hr.shape[-2] < want_h or hr.shape[-1] < want_w:
            raise ImageError(
                f"{lr_path}: LR is {lr.shape[-1]}x{lr.shape[-2]}, so x{s} needs an HR of at least "
                f"{want_w}x{want_h}, but {hr_path.name} is {hr.shape[-1]}x{hr.shape[-2]} "
                f"after mod-crop")
        if hr.shape[-2] > want_h or hr.shape[-1] > want_w:
            raise ImageError(
                f"{lr_path}: LR {lr.shape[-1]}x{lr.shape[-2]} times {s} is smaller than the "
                f"mod-cropped HR {hr_path.name} ({hr.shape[-1]}x{hr.shape[-2]}); wrong scale?")
        if lr.shape[0] != hr.shape[0]:  # e.g. gray LR for an RGB HR: score both in RGB
            lr, hr = lr.expand(3, -1, -1).contiguous(), hr.expand(3, -1, -1).contiguous()
        return lr, hr

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)


# -- checksums ------------------------------------------------------------------------------------
def _read_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def reference_sums(set_name: str) -> dict[str, str]:
    """SHA-256 of each file of the reference copy (``Set5``, ``Set14`` or ``BSD100``)."""
    path = asset_path("Set5", "SHA256SUMS") if set_name == "Set5" else \
        asset_path("checksums", f"{set_name}.sha256")
    return _read_sums(path.read_text())


def _compare_sums(paths: Sequence[Path], sums: dict[str, str]) -> list[str]:
    """Names of files that are missing from, or differ from, the reference copy."""
    by_name = {p.name: p for p in paths}
    return [name for name, digest in sums.items()
            if name not in by_name or sha256_file(by_name[name]) != digest]


# -- locating and downloading ---------------------------------------------------------------------
BENCHMARKS = {
    "set5": "Set5",
    "set14": "Set14",
    "bsd100": "BSD100",
    "cbsd68": "CBSD68",
    "set12": "Set12",
}
_FOLDER_NAMES = {
    "Set5": ("Set5", "set5"),
    "Set14": ("Set14", "set14"),
    "BSD100": ("BSD100", "bsd100", "B100", "b100"),
    "CBSD68": ("CBSD68", "cbsd68"),
    "Set12": ("Set12", "set12"),
}

# Exact byte copies of the reference files, pinned to commits (see each set's PROVENANCE.md).
_SET14_URL = ("https://raw.githubusercontent.com/majedelhelou/denoising_datasets/"
              "58234876fef6f1b56306705c78dfd40cdb837b86/CSet14/{name}")
_BSD100_URL = ("https://raw.githubusercontent.com/jiny2001/dcscn-super-resolution/"
               "d382bc30d41c94ac72f8cb148d61cc4864b3b380/data/bsd100/img_{index:03d}.png")
# the denoising sets of DnCNN/FFDNet/DRUNet tables, as cszn/IRCNN's testsets/ holds them
_IRCNN_URL = ("https://raw.githubusercontent.com/cszn/IRCNN/"
              "d9dcd537bdac3ae5b753296cd675db8a303c8f72/testsets/{set_name}/{name}")


def cache_dir() -> Path:
    """Where downloaded datasets live: ``$PERCEPKIT_CACHE/datasets``."""
    return hub.cache_dir("datasets")


def _set_folder(parent: Path, set_name: str) -> Path | None:
    """``parent`` itself if it is the set, else ``parent/<Set14|...>`` (or its ``HR`` subfolder)."""
    candidates = [parent / n for n in _FOLDER_NAMES[set_name]]
    if parent.name in _FOLDER_NAMES[set_name]:
        candidates.insert(0, parent)
    for folder in candidates:
        for inner in (folder, folder / "HR"):
            if inner.is_dir() and list_images(inner, recursive=False):
                return inner
    return None


def download_benchmark(set_name: str, dest: Path) -> Path:
    """Download Set14, BSD100, CBSD68 or Set12 file by file into ``dest``
    (:func:`percepkit.models.hub.fetch`: files already there and intact are kept), verifying each
    SHA-256; returns dest."""
    if hub.offline():
        raise hub.DownloadError(set_name, hub.OFFLINE_REASON)
    sums = reference_sums(set_name)
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(sums)  # BSD100 source files are img_NNN in lexicographic order of the ids
    print(f"downloading {set_name} ({len(names)} files) to {dest}", file=sys.stderr)
    for index, name in enumerate(names, start=1):
        if set_name == "Set14":
            url = _SET14_URL.format(name=name)
        elif set_name == "BSD100":
            url = _BSD100_URL.format(index=index)
        else:
            url = _IRCNN_URL.format(set_name=set_name, name=name)
        hub.fetch(url, dest / name, sha256=sums[name], announce=False)
    return dest


def locate_benchmark(set_name: str, root: str | Path | None = None,
                     download: bool = True) -> tuple[Path, str]:
    """Find (or download) ``Set14``/``BSD100``; returns (folder, where it was found).

    Order: ``root`` (the set folder or a folder containing it), ``$PERCEPKIT_DATA``, the cache
    (``$PERCEPKIT_CACHE/datasets``), then a checked download into the cache unless offline.
    """
    tried: list[str] = []
    places: list[tuple[Path, str]] = []
    if root is not None:
        places.append((Path(root).expanduser(), "--data-dir"))
    places += [(p, "PERCEPKIT_DATA") for p in env_folders("PERCEPKIT_DATA")]
    places.append((cache_dir(), "cache"))
    for place, label in places:
        found = _set_folder(place, set_name)
        if found is not None:
            return found, label
        tried.append(f"{place} ({label})")
    try:
        if not download:
            raise hub.DownloadError(set_name, "downloading was turned off (download=False, "
                                              "--no-download)")
        return download_benchmark(set_name, cache_dir() / set_name), "downloaded"
    except hub.DownloadError as e:
        reason = e.reason
    raise PercepkitError(hub.missing(
        set_name, tried, reason,
        f"put a folder named {set_name}/ holding its HR images (PNG) in a directory and pass "
        f"--data-dir DIR or set PERCEPKIT_DATA=DIR"))


def _checked_note(set_name: str, paths: Sequence[Path]) -> str:
    bad = _compare_sums(paths, reference_sums(set_name))
    if not bad:
        return f"files match the reference {set_name} copy (SHA-256)"
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    return (f"{len(bad)} of {len(reference_sums(set_name))} files missing or different from the "
            f"reference {set_name} copy ({shown}): numbers may not be comparable with published "
            f"tables")


# -- registered datasets --------------------------------------------------------------------------
@DATASETS.register("set5")
def set5(scale: int = 4, quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """Set5 (Bevilacqua et al. 2012), shipped in the package; checksums verified at load."""
    folder = asset_path("Set5")
    sums = reference_sums("Set5")
    paths = [folder / name for name in sorted(sums)]
    bad = [p.name for p in paths if not p.is_file() or sha256_file(p) != sums[p.name]]
    if bad:
        raise PercepkitError(f"the Set5 images shipped in {folder} are damaged ({', '.join(bad)} "
                             f"fail the SHA-256 check); reinstall percepkit")
    return SRBenchmark("set5", paths, scale, quantize_lr=quantize_lr, source=str(folder),
                       checksum_note="files match the reference Set5 copy (SHA-256)", mod=mod)


def _named_benchmark(key: str, scale: int, root: str | None, download: bool,
                     quantize_lr: bool, mod: int | None) -> SRBenchmark:
    set_name = BENCHMARKS[key]
    folder, found = locate_benchmark(set_name, root, download)
    paths = list_images(folder, recursive=False)
    return SRBenchmark(key, paths, scale, quantize_lr=quantize_lr, source=f"{folder} ({found})",
                       checksum_note=_checked_note(set_name, paths), mod=mod)


@DATASETS.register("set14")
def set14(scale: int = 4, root: str | None = None, download: bool = True,
          quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """Set14 (Zeyde et al. 2010) from --data-dir, PERCEPKIT_DATA, or a checked download."""
    return _named_benchmark("set14", scale, root, download, quantize_lr, mod)


@DATASETS.register("bsd100", aliases=("b100",))
def bsd100(scale: int = 4, root: str | None = None, download: bool = True,
           quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """BSD100 (BSDS300 test set) from --data-dir, PERCEPKIT_DATA, or a checked download."""
    return _named_benchmark("bsd100", scale, root, download, quantize_lr, mod)


@DATASETS.register("cbsd68")
def cbsd68(scale: int = 1, root: str | None = None, download: bool = True,
           quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """CBSD68 (the 68 BSD68 test images in colour, full size), the colour-denoising benchmark
    of CBM3D/CDnCNN/FFDNet tables; --data-dir, PERCEPKIT_DATA, or a checked download."""
    return _named_benchmark("cbsd68", scale, root, download, quantize_lr, mod)


@DATASETS.register("set12")
def set12(scale: int = 1, root: str | None = None, download: bool = True,
          quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """Set12 (12 grey images), the grey-denoising benchmark of DnCNN/FFDNet tables;
    --data-dir, PERCEPKIT_DATA, or a checked download."""
    return _named_benchmark("set12", scale, root, download, quantize_lr, mod)


def _require_folder(folder: Path, what: str) -> None:
    """A clear error for a folder of images that is missing or is a file."""
    if folder.is_file():
        raise PercepkitError(f"{folder}: is a file; expected a folder of {what}")
    if not folder.is_dir():
        raise PercepkitError(f"{folder}: no such folder (expected a folder of {what})")


@DATASETS.register("hr_folder")
def hr_folder(root: str, scale: int = 4, name: str | None = None,
              quantize_lr: bool = True, mod: int | None = None) -> SRBenchmark:
    """Any folder of HR images; LR inputs are made by MATLAB bicubic downsampling."""
    folder = Path(root).expanduser()
    _require_folder(folder, "HR images")
    paths = list_images(folder)
    return SRBenchmark(name or folder.name or "hr_folder", paths, scale, quantize_lr=quantize_lr,
                       source=str(folder), mod=mod)


def _pair_key(stem: str, scale: int) -> str:
    """File stem without the usual LR suffixes (``baby_x4``, ``babyx4``, ``baby_LR``...)."""
    key, previous = stem.lower(), None
    while key != previous:  # suffixes may combine in either order: _LR_x4, _LRBICx4
        previous = key
        for pattern in (rf"[_\-.]?x{scale}$", r"[_\-.]?(lr|lq|hr|gt)(bic(x\d+)?)?$",
                        rf"[_\-.]?{scale}x$"):
            key = re.sub(pattern, "", key) or key
    return key


def paired_folder(lr_root: str, hr_root: str, scale: int = 4,
                  name: str | None = None) -> SRBenchmark:
    """Paired LR/HR folders as an evaluation set (``percepkit eval --lr-dir --hr-dir``): matched
    by file name and size-checked by :func:`percepkit.data.paired.match_pairs`
    (``_x4``/``_LR``-style
    suffixes ignored); for training and ``data.val``, the registered ``paired_folder``."""
    from .paired import match_pairs

    pairs = match_pairs(lr_root, hr_root, scale, lr_key="--lr-dir", hr_key="--hr-dir")
    lr_dir, hr_dir = Path(lr_root).expanduser(), Path(hr_root).expanduser()
    return SRBenchmark(name or hr_dir.name or "paired", [hr for _, hr in pairs], scale,
                       lr_paths=[lr for lr, _ in pairs], source=f"{lr_dir} + {hr_dir}")
