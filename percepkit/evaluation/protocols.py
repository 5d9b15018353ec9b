"""Benchmark protocols of the restoration tasks: denoise, deblur and jpeg.

A protocol says exactly how the degraded input of an evaluation image is made from the clean
image (DEGRADATIONS steps, see :mod:`percepkit.data.degradations`) and how the restored output
is scored. Every random draw comes from a :class:`torch.Generator` seeded from the task and the
image's name (:func:`image_seed`), so every run, on every machine, degrades an image the same
way, whatever the order or the subset of images.

* ``denoise``: additive white Gaussian noise of ``sigma`` (15, 25, 50 on the 0-255 scale),
  independent per channel, added in float and neither clipped nor rounded (the DnCNN/FFDNet
  test protocol); PSNR/SSIM on RGB (raw grey for 1-channel images), no border crop.
* ``deblur``: an isotropic Gaussian kernel (sigma 1.6 px, 25x25, reflect padding), then
  Gaussian noise of sigma 2.55 (1% of 255), float, neither clipped nor rounded; PSNR/SSIM on
  RGB, no border crop.
* ``jpeg``: a real JPEG encode/decode with Pillow (libjpeg's standard tables; colour images
  with 4:2:0 chroma, grey images as 1-channel JPEGs) at ``quality`` (10, 20, 30, 40); PSNR/SSIM
  on Y (BT.601, as the SR tables and ARCNN/DnCNN), no border crop.

Outputs are clamped to [0, 1] and rounded to 8 bits before scoring (as a saved PNG), as for SR.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.benchmark_sets import Sample, SRBenchmark
from ..errors import PercepkitError

__all__ = [
    "LEVELS", "PROTOCOLS", "Protocol", "ProtocolSet", "deblur_protocol", "denoise_protocol",
    "image_seed", "jpeg_protocol", "make_protocol",
]

#: the levels of the published tables: sigma for denoise, quality for jpeg
LEVELS: dict[str, tuple[int, ...]] = {"denoise": (15, 25, 50), "jpeg": (10, 20, 30, 40)}

_SCORED = {
    "rgb": "PSNR/SSIM on RGB (1-channel images: their grey values), no border crop",
    "y": "PSNR/SSIM on Y (BT.601 studio range, MATLAB rgb2ycbcr; 1-channel images: their grey "
         "values), no border crop",
}


def image_seed(task: str, name: str) -> int:
    """The seed of an image's degradation: the first 63 bits of SHA-256("percepkit:TASK:NAME"),
    ``NAME`` the file stem. Independent of the run, the machine, the set and the image order."""
    digest = hashlib.sha256(f"percepkit:{task}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Protocol:
    """How a task's benchmark input is made (``steps``, DEGRADATIONS specs) and scored."""

    task: str
    #: e.g. ``{"sigma": 25}`` or ``{"quality": 20}``
    level: Mapping[str, float]
    steps: tuple[Mapping[str, Any], ...]
    #: the planes PSNR/SSIM compare: ``rgb`` or ``y``
    channel: str
    #: whether the degraded input is rounded to 8 bits (else it stays float, unclipped)
    rounded: bool
    #: the exact statement written into results files
    statement: str
    _pipeline: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        from ..data.degradations import build_pipeline

        object.__setattr__(self, "_pipeline",
                           build_pipeline(list(self.steps), f"{self.task} protocol"))

    @property
    def label(self) -> str:
        """A short name: ``denoise sigma 25``, ``jpeg quality 20``."""
        return " ".join([self.task] + [f"{k} {v:g}" if isinstance(v, (int, float)) else
                                       f"{k} {v}" for k, v in self.level.items()])

    def generator(self, name: str) -> torch.Generator:
        """The generator of image ``name`` (:func:`image_seed`)."""
        return torch.Generator().manual_seed(image_seed(self.task, name))

    def degrade(self, target: torch.Tensor, name: str) -> torch.Tensor:
        """The degraded input of the CxHxW ``target`` (float32 in [0, 1]) named ``name``."""
        out = self._pipeline(target.to(torch.float32), self.generator(name))
        if self.rounded:
            out = out.clamp(0, 1).mul(255).round().div(255)
        return out.contiguous()

    def metric_specs(self, names: Sequence[str] = ("psnr", "ssim")) -> dict[str, dict[str, Any]]:
        """Constructor arguments of the fidelity metrics under this protocol (``channel``,
        no border crop); other metrics (LPIPS: whole image) take none."""
        return {n: ({"channel": self.channel, "crop_border": 0}
                    if n in ("psnr", "ssim", "ms_ssim") else {}) for n in names}

    def to_dict(self) -> dict[str, Any]:
        """What results files record: task, level, steps, seeding, scoring."""
        return {"task": self.task, **dict(self.level), "degradations": [dict(s) for s in
                                                                         self.steps],
                "seed": 'first 63 bits of sha256("percepkit:<task>:<image file stem>"), '
                        "little-endian, into a torch.Generator",
                "input": "rounded to 8 bits" if self.rounded else
                         "float, not clipped, not rounded",
                "scored": _SCORED[self.channel], "statement": self.statement}


def _number(task: str, key: str, value: Any, low: float, high: float,
            integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise PercepkitError(f"{task}: {key} must be {kind} between {low:g} and {high:g}, got "
                             f"{value!r} (the published tables use "
                             f"{', '.join(str(v) for v in LEVELS.get(task, ())) or 'the default'})")
    return int(value) if integer else float(value)


def denoise_protocol(sigma: float = 25) -> Protocol:
    """Additive Gaussian noise of ``sigma`` (0-255 scale), float, unclipped; RGB PSNR/SSIM."""
    sigma = _number("denoise", "sigma", sigma, 0.0, 255.0)
    return Protocol(
        "denoise", {"sigma": sigma},
        ({"name": "gaussian_noise", "sigma": sigma, "clip": False},),
        channel="rgb", rounded=False,
        statement=(f"input = target + N(0, ({sigma:g}/255)^2) per pixel and channel, in float32, "
                   f"neither clipped nor rounded (the DnCNN/FFDNet test protocol), noise drawn "
                   f"from a generator seeded by the image's name; {_SCORED['rgb']}"))


def deblur_protocol(sigma: float | None = None, kernel_size: int | None = None,
                    noise: float = 2.55, kernel: str | None = None) -> Protocol:
    """A blur, then Gaussian noise of ``noise`` (0-255 scale), float, unclipped; RGB PSNR/SSIM.

    The blur is an isotropic Gaussian of ``sigma`` px (default 1.6) with ``kernel_size`` taps
    (default 25), or ``kernel: levin09:N``, the N-th (1-8) motion kernel of Levin et al. 2009;
    reflect padding either way."""
    noise = _number("deblur", "noise", noise, 0.0, 255.0)
    noise_text = (f"+ N(0, ({noise:g}/255)^2) per pixel and channel in float32, neither clipped "
                  f"nor rounded, noise drawn from a generator seeded by the image's name; "
                  f"{_SCORED['rgb']}")
    if kernel is not None:
        if sigma is not None or kernel_size is not None:
            raise PercepkitError("deblur: give either a Gaussian blur (sigma, kernel_size) or "
                                 "kernel: levin09:N, not both")
        name, _, index = str(kernel).partition(":")
        if name != "levin09" or not index.isdigit() or not 1 <= int(index) <= 8:
            raise PercepkitError(f"deblur: kernel must be levin09:N with N from 1 to 8 (the "
                                 f"motion kernels of Levin et al. 2009), got {kernel!r}")
        return Protocol(
            "deblur", {"kernel": f"levin09:{int(index)}", "noise": noise},
            ({"name": "kernel_blur", "kernels": "levin09", "index": int(index)},
             {"name": "gaussian_noise", "sigma": noise, "clip": False}),
            channel="rgb", rounded=False,
            statement=(f"input = target convolved with motion kernel k{int(index)} of Levin et "
                       f"al. 2009 (normalised, reflect padding), clipped to [0, 1], "
                       + noise_text))
    sigma = _number("deblur", "sigma", 1.6 if sigma is None else sigma, 0.1, 50.0)
    kernel_size = int(_number("deblur", "kernel_size", 25 if kernel_size is None else kernel_size,
                              3, 101, integer=True))
    if kernel_size % 2 == 0:
        raise PercepkitError(f"deblur: kernel_size must be odd, got {kernel_size}")
    return Protocol(
        "deblur", {"sigma": sigma, "kernel_size": kernel_size, "noise": noise},
        ({"name": "gaussian_blur", "sigma": sigma, "kernel_size": kernel_size},
         {"name": "gaussian_noise", "sigma": noise, "clip": False}),
        channel="rgb", rounded=False,
        statement=(f"input = target convolved with an isotropic Gaussian kernel (sigma {sigma:g} "
                   f"px, {kernel_size}x{kernel_size} taps, normalised, reflect padding), clipped "
                   f"to [0, 1], " + noise_text))


def jpeg_protocol(quality: int = 20) -> Protocol:
    """A real JPEG encode/decode with Pillow at ``quality``; PSNR/SSIM on Y."""
    quality = int(_number("jpeg", "quality", quality, 1, 100, integer=True))
    return Protocol(
        "jpeg", {"quality": quality}, ({"name": "jpeg", "quality": quality},),
        channel="y", rounded=True,
        statement=(f"input = the target saved as a JPEG of quality {quality} by Pillow (libjpeg, "
                   f"its standard quantisation tables; colour images in YCbCr 4:2:0, 1-channel "
                   f"images as grey JPEGs) and decoded, 8-bit; {_SCORED['y']}. ARCNN and DnCNN "
                   f"compress the grey (Y) image itself (MATLAB imwrite) on LIVE1/Classic5; here "
                   f"colour images are compressed in colour and scored on Y"))


#: the protocol of each restoration task, by task name
PROTOCOLS = {"denoise": denoise_protocol, "deblur": deblur_protocol, "jpeg": jpeg_protocol}


def make_protocol(task: str, **level: Any) -> Protocol:
    """The protocol of ``task`` at ``level`` (``sigma=``, ``quality=``...; defaults otherwise)."""
    if task not in PROTOCOLS:
        raise PercepkitError(f"no restoration protocol for task {task!r}; known: "
                             f"{', '.join(PROTOCOLS)}")
    return PROTOCOLS[task](**{k: v for k, v in level.items() if v is not None})


class ProtocolSet(SRBenchmark):
    """An evaluation set under a protocol: the clean image is the target (``hr``), its
    degraded version the input (``lr``); scale 1, no mod-crop."""

    def __init__(self, base: SRBenchmark, protocol: Protocol) -> None:
        if base.lr_paths is not None:
            raise PercepkitError(f"{base.name}: a set with given input files cannot also be "
                                 f"degraded by the {protocol.task} protocol")
        super().__init__(base.name, base.hr_paths, 1, source=base.source,
                         checksum_note=base.checksum_note)
        self.protocol = protocol

    def sample(self, index: int) -> Sample:
        """The ``index``-th image: target (8-bit) and its degraded input."""
        from ..data.benchmark_sets import load_hr

        path = self.hr_paths[index]
        target, notes = load_hr(path, 1)
        degraded = self.protocol.degrade(target, path.stem)
        return Sample(name=path.stem, hr=target, lr=degraded, path=path, notes=notes)
