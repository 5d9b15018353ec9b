"""Scoring images you already have: SR outputs against their ground truth, as ``eval`` scores.

``percepkit score SR HR`` is the everyday use of pyiqa or BasicSR's metric scripts, with
``percepkit eval``'s metric code and conventions (:mod:`percepkit.evaluation.evaluate`, the
registered
metrics): what it measures on the images ``eval --save-images`` writes is what ``eval`` printed.

* **Pairs.** Two files are one pair. Two folders (not searched recursively) are matched by file
  stem: an SR file goes with the HR file of the same stem, else with the HR file whose stem is
  the longest prefix of it followed by ``_``, ``-`` or ``.`` (BasicSR and KAIR save
  ``baby_x4_SR.png`` or ``baby_ESRGAN.png`` for ``baby.png``). Every file left without a
  partner is one line of the report; no pair at all is an error.
* **Reading** as eval reads HR images: 8-bit (16-bit files rounded), alpha dropped, 1-channel
  files kept 1-channel; a 3-channel SR of a 1-channel HR is reduced to luma
  0.299/0.587/0.114 (as eval reduces model outputs), a 1-channel SR of a 3-channel HR repeated.
* **Sizes** must be equal, as BasicSR requires; ``mod_crop`` first crops the HR top-left to a
  multiple of N (eval's convention, with N the scale). A pair whose sizes still differ is
  skipped with one line naming both sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.benchmark_sets import load_hr
from ..data.images import IMAGE_EXTENSIONS, list_images, quantize
from ..errors import PercepkitError
from ..metrics import Metric
from ..runtime.devices import threads
from .evaluate import (
    ImageRow,
    MetricInfo,
    SetResult,
    csv_number,
    json_number,
    metric_entries,
    score_pair,
    to_luma,
    write_conventions,
    write_text,
)

__all__ = ["DATA_CONVENTION", "Pair", "ScoreResult", "match_pairs", "read_pair", "score_pairs"]

DATA_CONVENTION = (
    "SR and HR files read as 8-bit images (16-bit rounded to 8 bits, alpha dropped, 1-channel "
    "images kept 1-channel); a 3-channel SR scored against a 1-channel HR reduced to luma "
    "0.299/0.587/0.114 and rounded to 8 bits, a 1-channel SR against a 3-channel HR repeated to "
    "3 channels; SR and HR must have the same size (after the HR mod-crop, if any); per-image "
    "values averaged over the pairs"
)
SEPARATORS = "_-."


@dataclass
class Pair:
    """An SR image and its ground truth; ``name`` is the HR file's stem (eval's row name)."""

    name: str
    sr: Path
    hr: Path


def _images(path: Path, role: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PercepkitError(f"{role} {path}: no such file or folder")
    files = list_images(path, recursive=False)
    if not files:
        raise PercepkitError(f"{role} {path}: no images in it (looked for "
                             f"{', '.join(IMAGE_EXTENSIONS)} files, not in subfolders)")
    return files


def _hr_for(stem: str, hr_by_stem: dict[str, Path]) -> tuple[Path | None, bool]:
    """The HR file for an SR stem, and whether the stems are equal (else a prefix match)."""
    if stem in hr_by_stem:
        return hr_by_stem[stem], True
    prefixes = [h for h in hr_by_stem if len(stem) > len(h) and stem.startswith(h)
                and stem[len(h)] in SEPARATORS]
    return (hr_by_stem[max(prefixes, key=len)], False) if prefixes else (None, False)


def match_pairs(sr: str | Path, hr: str | Path) -> tuple[list[Pair], list[str]]:
    """Pair SR and HR images (see the module docstring); returns the pairs, sorted by name,
    and one line per file left unmatched. No pair at all raises PercepkitError."""
    sr, hr = Path(sr), Path(hr)
    if sr.is_file() and hr.is_file():
        return [Pair(hr.stem, sr, hr)], []
    if sr.is_dir() and hr.is_file():
        raise PercepkitError(f"SR {sr} is a folder but HR {hr} is one file; give two folders, "
                             f"two files, or one SR file and the HR folder")
    sr_files, hr_files = _images(sr, "SR"), _images(hr, "HR")
    unmatched: list[str] = []
    hr_by_stem: dict[str, Path] = {}
    for path in hr_files:
        if path.stem in hr_by_stem:
            unmatched.append(f"HR {path.name}: another HR file has the stem {path.stem!r} "
                             f"({hr_by_stem[path.stem].name}); left out")
        else:
            hr_by_stem[path.stem] = path
    claims: dict[Path, list[tuple[Path, bool]]] = {}
    for path in sr_files:
        partner, exact = _hr_for(path.stem, hr_by_stem)
        if partner is None:
            unmatched.append(f"SR {path.name}: no HR image named {path.stem}.* or a prefix of "
                             f"it followed by _, - or . in {hr}")
        else:
            claims.setdefault(partner, []).append((path, exact))
    pairs = []
    for partner, found in claims.items():
        exact = [p for p, is_exact in found if is_exact]
        chosen = exact if exact else [p for p, _ in found]
        if len(chosen) == 1:
            pairs.append(Pair(partner.stem, chosen[0], partner))
        for path, _ in found:
            if len(chosen) > 1:
                unmatched.append(f"SR {path.name}: {len(chosen)} SR files match HR "
                                 f"{partner.name} ({', '.join(p.name for p in chosen)}); "
                                 f"none scored")
            elif path != chosen[0]:
                unmatched.append(f"SR {path.name}: HR {partner.name} already goes with "
                                 f"{chosen[0].name}")
    if sr.is_dir():
        paired = {p.hr for p in pairs}
        unmatched += [f"HR {path.name}: no SR image for it in {sr}"
                      for path in hr_by_stem.values() if path not in paired]
    if not pairs:
        raise PercepkitError(
            f"no SR image in {sr} matches an HR image in {hr} by file name (same stem, or the "
            f"HR stem followed by _, - or . as in baby_x4_SR.png for baby.png); e.g. "
            f"{sr_files[0].name} vs {hr_files[0].name}")
    return sorted(pairs, key=lambda p: p.name), unmatched


def read_pair(pair: Pair, mod_crop: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The SR and HR images of a pair as eval reads images, and notes on what was changed.

    Raises ImageError for an unreadable file, PercepkitError when the sizes differ.
    """
    hr, hr_notes = load_hr(pair.hr, 1, mod_crop)
    sr, sr_notes = load_hr(pair.sr, 1)
    notes = [f"HR: {n}" for n in hr_notes] + [f"SR: {n}" for n in sr_notes]
    if sr.shape[0] == 3 and hr.shape[0] == 1:
        sr = quantize(to_luma(sr))
        notes.append("3-channel SR reduced to luma for the 1-channel HR")
    elif sr.shape[0] == 1 and hr.shape[0] == 3:
        sr = sr.expand(3, -1, -1).contiguous()
        notes.append("1-channel SR repeated to 3 channels for the RGB HR")
    if sr.shape[-2:] != hr.shape[-2:]:
        cropped = f" after the mod-crop to a multiple of {mod_crop}" if mod_crop else ""
        hint = "" if mod_crop else "; if the HR was not cropped to a multiple of the scale, " \
            "pass --mod-crop SCALE"
        raise PercepkitError(
            f"{pair.sr}: SR is {sr.shape[-1]}x{sr.shape[-2]} but HR {pair.hr.name} is "
            f"{hr.shape[-1]}x{hr.shape[-2]}{cropped}; sizes must be equal{hint}")
    return sr, hr, notes


def score_pairs(pairs: Sequence[Pair], metrics: dict[str, Metric], infos: Sequence[MetricInfo],
                *, name: str = "images", mod_crop: int | None = None,
                on_image: Callable[[str], None] | None = None) -> SetResult:
    """Score every pair; unreadable pairs and pairs of different sizes are skipped with a reason.

    Rows are named by the HR stem and keyed ``<name>`` as eval's are, so tables compare row by
    row. ``on_image(name)`` is called after each pair (for progress bars).
    """
    result = SetResult(name, 0, mod_crop=mod_crop or 0)
    start = time.perf_counter()
    with torch.inference_mode():
        for pair in pairs:
            try:
                with threads(1):  # small tensor ops, as eval reads its images
                    sr, hr, notes = read_pair(pair, mod_crop)
                values = score_pair(metrics, infos, sr, hr)
            except PercepkitError as e:
                msg = str(e)
                for prefix in (str(pair.sr), str(pair.hr)):
                    if msg.startswith(prefix + ": "):
                        msg = msg[len(prefix) + 2:]
                result.skipped.append((pair.sr.name, msg))
            else:
                result.rows.append(ImageRow(pair.name, values, notes))
            if on_image is not None:
                on_image(pair.name)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class ScoreResult:
    """Everything ``percepkit score`` reports."""

    sr: str
    hr: str
    crop_border: int
    mod_crop: int | None
    device: str
    metrics: list[MetricInfo]
    images: SetResult
    pairs: list[Pair] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def convention(self) -> dict[str, Any]:
        """The exact data and metric conventions, as written into results files."""
        crop = (f"; HR cropped top-left to a multiple of {self.mod_crop} first"
                if self.mod_crop else "")
        return {"data": DATA_CONVENTION + crop,
                "metrics": {m.name: m.convention or f"n/a: {m.unavailable}"
                            for m in self.metrics}}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: conventions, means, per-image values, skipped and unmatched files."""
        from .. import __version__
        files = {p.name: p for p in self.pairs}
        s = self.images
        return {
            "percepkit": __version__, "command": "score", "sr": self.sr, "hr": self.hr,
            "crop_border": self.crop_border, "mod_crop": self.mod_crop, "device": self.device,
            "convention": self.convention,
            "metrics": metric_entries(self.metrics),
            "images": len(s.rows),
            "mean": {m.name: json_number(s.mean(m.name)) for m in self.metrics},
            "per_image": [{"name": r.name, "sr": str(files[r.name].sr),
                           "hr": str(files[r.name].hr),
                           **{k: json_number(v) for k, v in r.values.items()},
                           **({"notes": r.notes} if r.notes else {})} for r in s.rows],
            "skipped": [{"file": f, "reason": why} for f, why in s.skipped],
            "unmatched": self.unmatched,
            "seconds": round(s.seconds, 4),
        }

    def write_json(self, path: str | Path) -> None:
        """Write the results as JSON, atomically (``-``: stdout)."""
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> Path | None:
        """Write a plain CSV table (header first, a MEAN row last), atomically (``-``: stdout),
        and its conventions sidecar; returns the sidecar's path."""
        import csv
        import io

        names = [m.name for m in self.metrics]
        files = {p.name: p for p in self.pairs}
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image", "sr", "hr", *names])
        for r in self.images.rows:
            writer.writerow([r.name, files[r.name].sr.name, files[r.name].hr.name,
                             *[csv_number(r.values.get(n)) for n in names]])
        writer.writerow(["MEAN", "", "", *[csv_number(self.images.mean(n)) for n in names]])
        write_text(path, out.getvalue())
        if str(path) == "-":
            return None
        info = self.to_dict()
        info.pop("per_image")
        columns = {"image": "HR file stem; MEAN: the mean over the scored pairs",
                   "sr": "SR file", "hr": "HR file",
                   **{n: "per-image value ('n/a': unavailable, 'inf': identical images)"
                      for n in names}}
        return write_conventions(path, {"columns": columns, **info})
