"""Degradations: how a training input is made from its target, one small step at a time.

Each step is a class registered in :data:`percepkit.registry.DEGRADATIONS`; its constructor
arguments are its recipe keys (checked, with one-paragraph errors for out-of-range values) and it
is called as ``step(image, rng)`` on one CxHxW float image in [0, 1] with a
:class:`torch.Generator`. Every random choice is drawn from that generator, which the datasets
seed from the sample's key (:func:`percepkit.data.datasets.sample_seed`), so the input of a sample
is the same whatever the number of workers, and a resumed run sees exactly the inputs an
uninterrupted run would have. Steps never touch the global RNG.

A recipe composes steps as a list (``data.train.degradations: [{name: gaussian_blur, ...},
{name: bicubic, scale: 4}]``); :func:`build_pipeline` builds it. Steps return images in [0, 1];
rounding to 8 bits is the dataset's business (``quantize``).

* ``bicubic``: MATLAB bicubic downscaling by ``scale`` (:func:`percepkit.data.imresize.imresize`).
* ``gaussian_blur``: isotropic or anisotropic Gaussian kernels (also the generalised and plateau
  shapes of Real-ESRGAN), sigma and kernel-size ranges, a random rotation.
* ``kernel_blur``: a kernel from a set (the Levin et al. 2009 motion kernels, or a file).
* ``gaussian_noise`` / ``poisson_noise``: a fixed level or a range, colour or grey.
* ``jpeg``: a real JPEG encode/decode with Pillow at a quality drawn from a range.
* ``resize``: a random scale and a random mode among area, bilinear and bicubic.
* ``sinc``: a 2-D sinc (circular low-pass) filter, for ringing artefacts.
* ``realesrgan``: the second-order pipeline of Wang et al. 2021, built from the steps above.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ..errors import PercepkitError, RecipeError
from ..registry import DEGRADATIONS

__all__ = [
    "Bicubic", "Degradation", "GaussianBlur", "GaussianNoise", "Jpeg", "KernelBlur", "Pipeline",
    "PoissonNoise", "RealESRGAN", "Resize", "Sinc", "build_pipeline", "check_pipeline",
]

#: a fixed value or a ``[low, high]`` range drawn uniformly per sample
Range = float | tuple[float, float]
ResizeMode = Literal["area", "bilinear", "bicubic"]
ALL_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")
Size = tuple[int, int]


# -- checked arguments ----------------------------------------------------------------------------
def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f"at least {low:g}" if low is not None else f"at most {high:g}"


def _check_range(step: str, key: str, value: Any, low: float | None, high: float | None,
                 *, open_low: bool = False) -> tuple[float, float]:
    """``value`` (a number or ``[low, high]``) as a ``(lo, hi)`` pair inside the bounds."""
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and math.isfinite(v) for v in pair):
        raise PercepkitError(f"{step}: {key} must be a number or a [low, high] pair of numbers, "
                             f"got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    too_low = low is not None and (lo <= low if open_low else lo < low)
    if lo > hi:
        raise PercepkitError(f"{step}: {key} [{lo:g}, {hi:g}] has its low end above its high "
                             f"end; write [low, high]")
    if too_low or (high is not None and hi > high):
        where = f"above {low:g}" if open_low and high is None else _bounds(low, high)
        raise PercepkitError(f"{step}: {key} must be {where}"
                             f"{' (exclusive at the low end)' if open_low and high else ''}, "
                             f"got {value!r}")
    return lo, hi


def _check_prob(step: str, key: str, value: Any) -> float:
    return _check_range(step, key, value, 0.0, 1.0)[0]


def _check_probs(step: str, key: str, value: Any, n: int) -> tuple[float, ...]:
    """``n`` non-negative weights that sum to more than 0 (normalised)."""
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value):
        raise PercepkitError(f"{step}: {key} must be a list of {n} non-negative probabilities, "
                             f"got {value!r}")
    total = float(sum(value))
    if total <= 0:
        raise PercepkitError(f"{step}: {key} must not be all zero, got {value!r}")
    return tuple(float(v) / total for v in value)


# -- drawing from the sample's generator ----------------------------------------------------------
def uniform(rng: torch.Generator, lo: float, hi: float) -> float:
    """A float drawn uniformly from ``[lo, hi]`` (one draw even when ``lo == hi``)."""
    u = float(torch.rand((), generator=rng, dtype=torch.float64))
    return lo + (hi - lo) * u


def chance(rng: torch.Generator, p: float) -> bool:
    """True with probability ``p`` (one draw whatever ``p``)."""
    return float(torch.rand((), generator=rng, dtype=torch.float64)) < p


def choose(rng: torch.Generator, probs: Sequence[float]) -> int:
    """An index drawn with the given (normalised) probabilities."""
    u, acc = float(torch.rand((), generator=rng, dtype=torch.float64)), 0.0
    for i, p in enumerate(probs):
        acc += p
        if u < acc:
            return i
    return len(probs) - 1


# -- the steps ------------------------------------------------------------------------------------
class Degradation:
    """One degradation step: ``step(image, rng)`` -> the degraded image (CxHxW, in [0, 1])."""

    name: ClassVar[str] = ""

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def output_size(self, size: Size) -> Size | None:
        """The output (H, W) for an input of ``size``; None when it is drawn at random."""
        return size

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name or type(self).__name__}({args})"


def _check_image(step: str, image: torch.Tensor) -> None:
    if not torch.is_tensor(image) or image.dim() != 3 or not image.is_floating_point():
        raise PercepkitError(f"{step}: expected one CxHxW float image, got "
                             f"{getattr(image, 'shape', type(image))}")


@DEGRADATIONS.register("bicubic")
class Bicubic(Degradation):
    """MATLAB bicubic downscaling by scale (antialiased imresize(x, 1/scale)), as today's SR data.

    Output ``ceil(H/scale) x ceil(W/scale)``; the LR of ``sr_patches`` and of the SR benchmarks.
    """

    name = "bicubic"

    def __init__(self, scale: float = 4) -> None:
        self.scale = _check_range("bicubic", "scale", scale, 1.0, 16.0)[0]

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        from .imresize import imresize

        _check_image(self.name, image)
        if self.scale == 1:
            return image
        return imresize(image, scale=1.0 / self.scale).clamp(0, 1)

    def output_size(self, size: Size) -> Size | None:
        from .imresize import output_size

        return output_size(size[0], 1 / self.scale), output_size(size[1], 1 / self.scale)


KernelShape = Literal["gaussian", "generalized", "plateau"]
_BETA_DEFAULTS = {"generalized": (0.5, 4.0), "plateau": (1.0, 2.0)}


def blur_kernel(size: int, sigma_x: float, sigma_y: float, angle: float,
                shape: KernelShape = "gaussian", beta: float = 1.0) -> torch.Tensor:
    """A normalised ``size x size`` float64 kernel: a Gaussian of covariance
    ``R(angle) diag(sigma_x², sigma_y²) R(angle)ᵀ`` (angle in radians), or its generalised
    (``exp(-½ d^β)``) or plateau (``1 / (1 + d^β)``) form, ``d`` the squared Mahalanobis distance
    (BasicSR's ``bivariate_*`` kernels)."""
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(cov)
    grid = torch.stack([xx, yy], dim=-1)
    d = torch.einsum("...i,ij,...j->...", grid, inv, grid)
    if shape == "gaussian":
        k = torch.exp(-0.5 * d)
    elif shape == "generalized":
        k = torch.exp(-0.5 * d.pow(beta))
    else:
        k = 1.0 / (d.pow(beta) + 1.0)
    return k / k.sum()


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``image`` (CxHxW) convolved with a 2D kernel per channel, reflect padding (replicate when
    the image is smaller than the kernel's radius)."""
    r = kernel.shape[-1] // 2
    h, w = image.shape[-2:]
    mode = "reflect" if r < h and r < w else "replicate"
    x = F.pad(image[:, None], (r, r, r, r), mode=mode)
    k = kernel.to(image.dtype).flip(-1, -2)[None, None]
    return F.conv2d(x, k)[:, 0]


def _odd_sizes(step: str, kernel_size: Any) -> tuple[int, ...]:
    lo, hi = _check_range(step, "kernel_size", kernel_size, 3, 101)
    if lo != int(lo) or hi != int(hi):
        raise PercepkitError(f"{step}: kernel_size must be an odd integer or a [low, high] pair "
                             f"of them, got {kernel_size!r}")
    sizes = tuple(k for k in range(int(lo), int(hi) + 1) if k % 2 == 1)
    if not sizes:
        raise PercepkitError(f"{step}: kernel_size {kernel_size!r} holds no odd size; kernels "
                             f"have an odd size (3, 5, 7, ...)")
    return sizes


@DEGRADATIONS.register("gaussian_blur", aliases=("blur",))
class GaussianBlur(Degradation):
    """Gaussian blur with a random kernel: isotropic, or anisotropic with a random rotation.

    Per sample: the kernel size (an odd size in ``kernel_size``), ``sigma`` (a value or a range
    in pixels); with probability ``anisotropic_prob`` the kernel is anisotropic: ``sigma`` and
    ``sigma_y`` (default: ``sigma``'s range) are drawn independently and the kernel is rotated by
    an angle drawn from ``angle`` (degrees). ``shape`` ``generalized`` / ``plateau`` gives
    Real-ESRGAN's heavier- and flatter-topped kernels, with exponent ``beta`` (default
    [0.5, 4] and [1, 2]). ``prob`` is the chance the step is applied at all. Reflect padding.
    """

    name = "gaussian_blur"

    def __init__(self, sigma: Range = (0.2, 3.0), kernel_size: int | tuple[int, int] = 21,
                 anisotropic_prob: float = 0.0, sigma_y: Range | None = None,
                 angle: Range = (-180.0, 180.0), shape: KernelShape = "gaussian",
                 beta: Range | None = None, prob: float = 1.0) -> None:
        step = self.name
        self.sigma = _check_range(step, "sigma", sigma, 0.0, 50.0, open_low=True)
        self.sigma_y = self.sigma if sigma_y is None else \
            _check_range(step, "sigma_y", sigma_y, 0.0, 50.0, open_low=True)
        self.kernel_sizes = _odd_sizes(step, kernel_size)
        self.anisotropic_prob = _check_prob(step, "anisotropic_prob", anisotropic_prob)
        self.angle = _check_range(step, "angle", angle, -360.0, 360.0)
        if shape not in ("gaussian", "generalized", "plateau"):
            raise PercepkitError(f"{step}: shape must be gaussian, generalized or plateau, got "
                                 f"{shape!r}")
        self.shape = shape
        if beta is not None and shape == "gaussian":
            raise PercepkitError(f"{step}: beta applies to shape generalized or plateau only "
                                 f"(a Gaussian has beta 1); remove beta or set shape")
        self.beta = _BETA_DEFAULTS.get(shape, (1.0, 1.0)) if beta is None else \
            _check_range(step, "beta", beta, 0.0, 10.0, open_low=True)
        self.prob = _check_prob(step, "prob", prob)

    def draw_kernel(self, rng: torch.Generator) -> torch.Tensor:
        """The kernel of one sample (all its random choices drawn from ``rng``)."""
        size = self.kernel_sizes[min(int(uniform(rng, 0, len(self.kernel_sizes))),
                                     len(self.kernel_sizes) - 1)]
        anisotropic = chance(rng, self.anisotropic_prob)
        sx = uniform(rng, *self.sigma)
        if anisotropic:
            sy = uniform(rng, *self.sigma_y)
            angle = math.radians(uniform(rng, *self.angle))
        else:
            sy, angle = sx, 0.0
        lo, hi = self.beta
        # as BasicSR: half the time below 1, half above, when the range straddles 1
        if lo < 1 < hi:
            beta = uniform(rng, lo, 1.0) if chance(rng, 0.5) else uniform(rng, 1.0, hi)
        else:
            beta = uniform(rng, lo, hi)
        return blur_kernel(size, sx, sy, angle, self.shape, beta)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        kernel = self.draw_kernel(rng)
        return filter2d(image, kernel).clamp(0, 1) if apply else image


#: kernel sets shipped with percepkit, by name (``percepkit/assets/kernels``)
KERNEL_SETS = {"levin09": "levin09_kernels.npz"}


def load_kernels(kernels: str) -> list[torch.Tensor]:
    """The float64 kernels of a set: ``levin09`` (the 8 motion-blur kernels of Levin, Weiss,
    Durand & Freeman 2009, shipped, SHA-256 checked) or a ``.npz`` file of 2-D arrays (in the
    order of its keys). Each must be square with an odd side, non-negative, with a positive
    sum; it is normalised to sum 1."""
    import numpy as np

    from ..runtime.files import sha256_file

    if kernels in KERNEL_SETS:
        from importlib import resources

        folder = Path(str(resources.files("percepkit").joinpath("assets", "kernels")))
        path = folder / KERNEL_SETS[kernels]
        want = (folder / "SHA256SUMS").read_text().split()[0]
        if not path.is_file() or sha256_file(path) != want:
            raise PercepkitError(f"kernel_blur: the shipped kernel file {path} is missing or "
                                 f"damaged (SHA-256 check failed); reinstall percepkit")
    else:
        path = Path(kernels).expanduser()
        if path.suffix != ".npz" or not path.is_file():
            raise PercepkitError(f"kernel_blur: kernels must be one of "
                                 f"{', '.join(KERNEL_SETS)} or an existing .npz file of 2-D "
                                 f"arrays, got {kernels!r}")
    try:
        with np.load(path) as data:
            arrays = [(k, np.asarray(data[k], dtype=np.float64)) for k in data.files]
    except Exception as e:  # not a readable npz
        raise PercepkitError(f"kernel_blur: cannot read {path} as .npz ({e})") from None
    out = []
    for key, k in arrays:
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 \
                or not np.isfinite(k).all() or k.min() < 0 or k.sum() <= 0:
            raise PercepkitError(f"kernel_blur: {path.name}[{key}] must be a square 2-D array "
                                 f"with an odd side, non-negative with a positive sum; got shape "
                                 f"{k.shape}")
        out.append(torch.from_numpy(k / k.sum()))
    if not out:
        raise PercepkitError(f"kernel_blur: {path} holds no kernels")
    return out


@DEGRADATIONS.register("kernel_blur")
class KernelBlur(Degradation):
    """Blur with a kernel from a set: ``levin09`` (the 8 motion-blur kernels of Levin et al.
    2009, 13-27 px, the kernels of non-blind deblurring tables) or a ``.npz`` file of kernels.

    ``index`` picks the kernels (1-based, as k1..k8): a number, or ``[low, high]`` drawn
    uniformly per sample (default: all). Reflect padding, clipped to [0, 1]; ``prob`` is the
    chance the step is applied.
    """

    name = "kernel_blur"

    def __init__(self, kernels: str = "levin09", index: int | tuple[int, int] | None = None,
                 prob: float = 1.0) -> None:
        self.kernels = kernels
        self._bank = load_kernels(kernels)
        n = len(self._bank)
        lo, hi = _check_range(self.name, "index", (1, n) if index is None else index, 1, n)
        if lo != int(lo) or hi != int(hi):
            raise PercepkitError(f"{self.name}: index must be an integer or a [low, high] pair "
                                 f"of them (1..{n}), got {index!r}")
        self.index = (int(lo), int(hi))
        self.prob = _check_prob(self.name, "prob", prob)

    def draw_kernel(self, rng: torch.Generator) -> torch.Tensor:
        """The kernel of one sample."""
        lo, hi = self.index
        i = lo + min(int(uniform(rng, 0, hi - lo + 1)), hi - lo)
        return self._bank[i - 1]

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        kernel = self.draw_kernel(rng)
        return filter2d(image, kernel).clamp(0, 1) if apply else image

    def __repr__(self) -> str:
        return f"kernel_blur(kernels={self.kernels!r}, index={self.index})"


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """A normalised ``size x size`` float64 circular low-pass (2-D sinc) kernel of angular
    ``cutoff`` (radians per pixel): ``cutoff·J1(cutoff·r) / (2π r)`` (BasicSR's
    ``circular_lowpass_kernel``); its side lobes make ringing."""
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    d = torch.sqrt(xx**2 + yy**2)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k[r, r] = cutoff**2 / (4 * math.pi)
    return k / k.sum()


@DEGRADATIONS.register("sinc")
class Sinc(Degradation):
    """A 2-D sinc (circular low-pass) filter: ringing and overshoot artefacts.

    Per sample: an odd kernel size in ``kernel_size`` and a cutoff (radians per pixel, up to
    π) in ``cutoff``; by default [π/3, π] for kernels under 13 taps and [π/5, π] for larger
    ones, as Real-ESRGAN draws it. ``prob`` is the chance the step is applied. Reflect padding,
    clipped to [0, 1].
    """

    name = "sinc"

    def __init__(self, cutoff: Range | None = None, kernel_size: int | tuple[int, int] = (7, 21),
                 prob: float = 1.0) -> None:
        self.cutoff = None if cutoff is None else \
            _check_range(self.name, "cutoff", cutoff, 0.0, math.pi, open_low=True)
        self.kernel_sizes = _odd_sizes(self.name, kernel_size)
        self.prob = _check_prob(self.name, "prob", prob)

    def draw_kernel(self, rng: torch.Generator) -> torch.Tensor:
        """The kernel of one sample."""
        size = self.kernel_sizes[min(int(uniform(rng, 0, len(self.kernel_sizes))),
                                     len(self.kernel_sizes) - 1)]
        lo, hi = self.cutoff or ((math.pi / 3 if size < 13 else math.pi / 5), math.pi)
        return sinc_kernel(size, uniform(rng, lo, hi))

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        kernel = self.draw_kernel(rng)
        return filter2d(image, kernel).clamp(0, 1) if apply else image


@DEGRADATIONS.register("gaussian_noise")
class GaussianNoise(Degradation):
    """Additive Gaussian noise, sigma (a value or a range) on the 0-255 scale, colour or grey.

    With probability ``gray_prob`` the noise is grey (one noise plane for all channels), else
    independent per channel ("colour"). ``prob`` is the chance the step is applied. Clipped to
    [0, 1], not rounded (BasicSR's ``random_add_gaussian_noise_pt``); ``clip: false`` keeps the
    values outside [0, 1], as the DnCNN/FFDNet test protocol does (the ``denoise`` task's).
    """

    name = "gaussian_noise"

    def __init__(self, sigma: Range = (1.0, 30.0), gray_prob: float = 0.0,
                 prob: float = 1.0, clip: bool = True) -> None:
        self.sigma = _check_range(self.name, "sigma", sigma, 0.0, 255.0)
        self.gray_prob = _check_prob(self.name, "gray_prob", gray_prob)
        self.prob = _check_prob(self.name, "prob", prob)
        self.clip = bool(clip)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        sigma = uniform(rng, *self.sigma) / 255.0
        gray = chance(rng, self.gray_prob)
        c, h, w = image.shape
        noise = torch.randn((1 if gray else c, h, w), generator=rng, dtype=torch.float32)
        if not apply:
            return image
        out = image + noise.to(image.dtype) * sigma
        return out.clamp(0, 1) if self.clip else out


def _gray(image: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) as 1xHxW; a grey image as it is."""
    if image.shape[0] == 1:
        return image
    w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
    return (image[:3] * w).sum(0, keepdim=True)


@DEGRADATIONS.register("poisson_noise")
class PoissonNoise(Degradation):
    """Poisson (shot) noise, its strength multiplied by scale (a value or a range), colour or grey.

    As BasicSR's ``random_add_poisson_noise_pt``: the image is rounded to 8 bits, the number of
    photon levels is the next power of two of its count of distinct values, and the noise
    ``poisson(x * levels) / levels - x`` is scaled and added. With probability ``gray_prob`` it
    is computed on the luma and shared by all channels. Clipped to [0, 1].
    """

    name = "poisson_noise"

    def __init__(self, scale: Range = (0.05, 3.0), gray_prob: float = 0.0,
                 prob: float = 1.0) -> None:
        self.scale = _check_range(self.name, "scale", scale, 0.0, 20.0)
        self.gray_prob = _check_prob(self.name, "gray_prob", gray_prob)
        self.prob = _check_prob(self.name, "prob", prob)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        scale = uniform(rng, *self.scale)
        gray = chance(rng, self.gray_prob)
        x = (_gray(image) if gray else image).double().clamp(0, 1).mul(255).round().div(255)
        levels = 2.0 ** math.ceil(math.log2(max(2, int(torch.unique(x).numel()))))
        noise = torch.poisson(x * levels, generator=rng) / levels - x
        if not apply:
            return image
        return (image + (noise * scale).to(image.dtype)).clamp(0, 1)


@DEGRADATIONS.register("jpeg")
class Jpeg(Degradation):
    """JPEG compression: a real Pillow encode and decode at a quality drawn from a range.

    ``quality`` is a value or a range in 1..100 (rounded to an integer; Pillow's default 4:2:0
    chroma subsampling). ``prob`` is the chance the step is applied. Output on the 8-bit grid."""

    name = "jpeg"

    def __init__(self, quality: Range = (30.0, 95.0), prob: float = 1.0) -> None:
        self.quality = _check_range(self.name, "quality", quality, 1.0, 100.0)
        self.prob = _check_prob(self.name, "prob", prob)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        quality = int(round(uniform(rng, *self.quality)))
        return jpeg_roundtrip(image, quality) if apply else image


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` (1 or 3 channels) saved as a JPEG of ``quality`` and read back, in [0, 1]."""
    import numpy as np
    from PIL import Image

    from .images import to_uint8

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image[:3] if image.shape[0] >= 3 else image[:1])).save(
        buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        arr = np.asarray(decoded, dtype=np.float32) / 255.0
    out = torch.from_numpy(arr.copy())
    out = out[None] if out.dim() == 2 else out.permute(2, 0, 1)
    return out.to(image.dtype).contiguous()


@DEGRADATIONS.register("resize")
class Resize(Degradation):
    """Resize by a random factor with a random mode among area, bilinear and bicubic.

    The modes are torch's, not antialiased, as in BasicSR's degradations (``modes`` limits them).

    ``scale`` is a value or a range drawn uniformly. With ``updown_prob: [up, down, keep]``
    (Real-ESRGAN's ``resize_prob``) the direction is drawn first: up draws in ``[1, high]``,
    down in ``[low, 1]``, keep is 1. A fixed ``scale`` gives a fixed output size
    (``floor(H*scale)``), so e.g. ``{name: resize, scale: 0.25}`` is a x4 downscale with a random
    kernel; a range gives a random size (use it inside pipelines that restore the size).
    """

    name = "resize"

    def __init__(self, scale: Range = (0.5, 1.5), modes: list[ResizeMode] | None = None,
                 updown_prob: tuple[float, float, float] | None = None,
                 prob: float = 1.0) -> None:
        self.scale = _check_range(self.name, "scale", scale, 0.0, 8.0, open_low=True)
        modes = list(ALL_MODES if modes is None else modes)
        bad = [m for m in modes if m not in ALL_MODES]
        if not modes or bad:
            raise PercepkitError(f"resize: modes must be a non-empty list of "
                                 f"{', '.join(ALL_MODES)}, got {modes!r}")
        self.modes = tuple(modes)
        self.updown_prob = None if updown_prob is None else \
            _check_probs(self.name, "updown_prob", updown_prob, 3)
        if self.updown_prob is not None and not self.scale[0] <= 1 <= self.scale[1]:
            raise PercepkitError(f"resize: with updown_prob, scale must be a range around 1 "
                                 f"([down limit, up limit]), got {scale!r}")
        self.prob = _check_prob(self.name, "prob", prob)

    def draw_scale(self, rng: torch.Generator) -> float:
        """The factor of one sample."""
        lo, hi = self.scale
        if self.updown_prob is None:
            return uniform(rng, lo, hi)
        direction = choose(rng, self.updown_prob)
        return (uniform(rng, 1.0, hi), uniform(rng, lo, 1.0), 1.0)[direction]

    def resize_to(self, image: torch.Tensor, size: Size, rng: torch.Generator) -> torch.Tensor:
        """``image`` resized to ``size`` with a mode drawn from ``modes``."""
        mode = self.modes[min(int(uniform(rng, 0, len(self.modes))), len(self.modes) - 1)]
        size = (max(1, int(size[0])), max(1, int(size[1])))
        if tuple(image.shape[-2:]) == size:
            return image
        extra = {} if mode == "area" else {"align_corners": False}
        return F.interpolate(image[None], size=size, mode=mode, **extra)[0].clamp(0, 1)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        apply = chance(rng, self.prob)
        s = self.draw_scale(rng)
        h, w = image.shape[-2:]
        out = self.resize_to(image, (int(h * s), int(w * s)), rng)
        return out if apply else image

    def output_size(self, size: Size) -> Size | None:
        lo, hi = self.scale
        if lo != hi or self.prob < 1:
            return None
        return max(1, int(size[0] * lo)), max(1, int(size[1] * lo))


_KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
            "plateau_aniso")


def _blur_steps(sigma: Range, beta_g: Range, beta_p: Range, kernel_size: Any
                ) -> list[GaussianBlur]:
    """Real-ESRGAN's six kernel families as :class:`GaussianBlur` steps (order of _KERNELS)."""
    out = []
    for kind in _KERNELS:
        shape: KernelShape = "generalized" if kind.startswith("generalized") else \
            "plateau" if kind.startswith("plateau") else "gaussian"
        beta = None if shape == "gaussian" else (beta_g if shape == "generalized" else beta_p)
        out.append(GaussianBlur(sigma=sigma, kernel_size=kernel_size, shape=shape, beta=beta,
                                anisotropic_prob=1.0 if kind.endswith("aniso") else 0.0,
                                angle=(-180.0, 180.0)))
    return out


@DEGRADATIONS.register("realesrgan", aliases=("real_esrgan",))
class RealESRGAN(Degradation):
    """Real-ESRGAN's second-order degradation (Wang et al. 2021), made of the steps above.

    Twice: blur (a sinc kernel with probability ``sinc_prob``, else a kernel family drawn by
    ``kernel_prob`` among iso, aniso, generalized_iso, generalized_aniso, plateau_iso,
    plateau_aniso; the second blur with probability ``second_blur_prob``) -> resize
    (up/down/keep by ``resize_prob``, factor in ``resize_range``, random mode; the second
    relative to the final size) -> noise (Gaussian with probability ``gaussian_noise_prob``,
    sigma in ``noise_range``, else Poisson with scale in ``poisson_scale_range``; grey with
    probability ``gray_noise_prob``) -> JPEG (quality in ``jpeg_range``). Then the final
    resize to ``H/scale x W/scale`` (random mode) followed by a sinc filter with probability
    ``final_sinc_prob``, and JPEG (``jpeg_range2``), in random order. Keys and defaults are
    those of Real-ESRGAN's ``options/train_realesrnet_x4plus.yml`` (keys ending in 2 are the
    second order).

    Differences: JPEG is Pillow's, not the differentiable DiffJPEG; the target is not
    unsharp-masked (``gt_usm``); no batch queue (``queue_size``).
    """

    name = "realesrgan"

    def __init__(
        self,
        scale: int = 4,
        kernel_size: int | tuple[int, int] = (7, 21),
        kernel_prob: tuple[float, float, float, float, float, float] = (
            0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob: float = 0.1,
        blur_sigma: Range = (0.2, 3.0),
        betag_range: Range = (0.5, 4.0),
        betap_range: Range = (1.0, 2.0),
        resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1),
        resize_range: Range = (0.15, 1.5),
        gaussian_noise_prob: float = 0.5,
        noise_range: Range = (1.0, 30.0),
        poisson_scale_range: Range = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_range: Range = (30.0, 95.0),
        second_blur_prob: float = 0.8,
        kernel_prob2: tuple[float, float, float, float, float, float] = (
            0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob2: float = 0.1,
        blur_sigma2: Range = (0.2, 1.5),
        betag_range2: Range = (0.5, 4.0),
        betap_range2: Range = (1.0, 2.0),
        resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3),
        resize_range2: Range = (0.3, 1.2),
        gaussian_noise_prob2: float = 0.5,
        noise_range2: Range = (1.0, 25.0),
        poisson_scale_range2: Range = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_range2: Range = (30.0, 95.0),
        final_sinc_prob: float = 0.8,
    ) -> None:
        step = self.name
        if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16:
            raise PercepkitError(f"{step}: scale must be an integer between 1 and 16, got "
                                 f"{scale!r}")
        self.scale = scale
        # checked here first, so that an error names realesrgan's own key
        limits = {"blur_sigma": (0.0, 50.0, True), "blur_sigma2": (0.0, 50.0, True),
                  "betag_range": (0.0, 10.0, True), "betag_range2": (0.0, 10.0, True),
                  "betap_range": (0.0, 10.0, True), "betap_range2": (0.0, 10.0, True),
                  "resize_range": (0.0, 8.0, True), "resize_range2": (0.0, 8.0, True),
                  "noise_range": (0.0, 255.0, False), "noise_range2": (0.0, 255.0, False),
                  "poisson_scale_range": (0.0, 20.0, False),
                  "poisson_scale_range2": (0.0, 20.0, False),
                  "jpeg_range": (1.0, 100.0, False), "jpeg_range2": (1.0, 100.0, False)}
        given = locals()
        for key, (low, high, open_low) in limits.items():
            lo, hi = _check_range(step, key, given[key], low, high, open_low=open_low)
            if key.startswith("resize_range") and not lo <= 1 <= hi:
                raise PercepkitError(f"{step}: {key} must hold 1 ([down limit, up limit]), got "
                                     f"{given[key]!r}")
        for key in ("gray_noise_prob", "gray_noise_prob2", "sinc_prob", "sinc_prob2",
                    "final_sinc_prob"):
            _check_prob(step, key, given[key])
        _odd_sizes(step, kernel_size)
        try:
            self.kernel_prob = _check_probs(step, "kernel_prob", kernel_prob, 6)
            self.kernel_prob2 = _check_probs(step, "kernel_prob2", kernel_prob2, 6)
            self.blur1 = _blur_steps(blur_sigma, betag_range, betap_range, kernel_size)
            self.blur2 = _blur_steps(blur_sigma2, betag_range2, betap_range2, kernel_size)
            self.resize1 = Resize(resize_range, updown_prob=resize_prob)
            self.resize2 = Resize(resize_range2, updown_prob=resize_prob2)
            self.final_resize = Resize(1.0)
            self.gauss1 = GaussianNoise(noise_range, gray_prob=gray_noise_prob)
            self.gauss2 = GaussianNoise(noise_range2, gray_prob=gray_noise_prob2)
            self.poisson1 = PoissonNoise(poisson_scale_range, gray_prob=gray_noise_prob)
            self.poisson2 = PoissonNoise(poisson_scale_range2, gray_prob=gray_noise_prob2)
            self.jpeg1, self.jpeg2 = Jpeg(jpeg_range), Jpeg(jpeg_range2)
            self.sinc = Sinc(kernel_size=kernel_size)  # cutoff by kernel size, as Real-ESRGAN
            self.final_sinc = Sinc(cutoff=(math.pi / 3, math.pi), kernel_size=kernel_size)
        except PercepkitError as e:  # name the pipeline's key, not the inner step's
            raise PercepkitError(f"{step}: {e}") from None
        self.gaussian_noise_prob = _check_prob(step, "gaussian_noise_prob", gaussian_noise_prob)
        self.gaussian_noise_prob2 = _check_prob(step, "gaussian_noise_prob2",
                                                gaussian_noise_prob2)
        self.second_blur_prob = _check_prob(step, "second_blur_prob", second_blur_prob)
        self.sinc_prob, self.sinc_prob2 = sinc_prob, sinc_prob2
        self.final_sinc_prob = final_sinc_prob

    def _blur(self, blurs: list[GaussianBlur], probs: Sequence[float], sinc_prob: float,
              image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if chance(rng, sinc_prob):
            return self.sinc(image, rng)
        return blurs[choose(rng, probs)](image, rng)

    def _final(self, image: torch.Tensor, size: Size, rng: torch.Generator) -> torch.Tensor:
        """The resize back to ``size`` and the final sinc filter (or none)."""
        out = self.final_resize.resize_to(image, size, rng)
        return self.final_sinc(out, rng) if chance(rng, self.final_sinc_prob) else out

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        _check_image(self.name, image)
        h, w = image.shape[-2:]
        final = (max(1, h // self.scale), max(1, w // self.scale))
        # first order
        out = self._blur(self.blur1, self.kernel_prob, self.sinc_prob, image, rng)
        s = self.resize1.draw_scale(rng)
        out = self.resize1.resize_to(out, (int(h * s), int(w * s)), rng)
        noise = self.gauss1 if chance(rng, self.gaussian_noise_prob) else self.poisson1
        out = self.jpeg1(noise(out, rng), rng)
        # second order
        if chance(rng, self.second_blur_prob):
            out = self._blur(self.blur2, self.kernel_prob2, self.sinc_prob2, out, rng)
        s = self.resize2.draw_scale(rng)
        out = self.resize2.resize_to(out, (int(final[0] * s), int(final[1] * s)), rng)
        noise = self.gauss2 if chance(rng, self.gaussian_noise_prob2) else self.poisson2
        out = noise(out, rng)
        if chance(rng, 0.5):  # resize back + sinc, then JPEG
            out = self.jpeg2(self._final(out, final, rng), rng)
        else:  # JPEG, then resize back + sinc
            out = self._final(self.jpeg2(out, rng), final, rng)
        return out

    def output_size(self, size: Size) -> Size | None:
        return max(1, size[0] // self.scale), max(1, size[1] // self.scale)

    def __repr__(self) -> str:
        return f"realesrgan(scale={self.scale})"


# -- pipelines ------------------------------------------------------------------------------------
class Pipeline:
    """Steps applied in order: ``pipeline(image, rng)``; ``output_size`` as a step's."""

    def __init__(self, steps: Sequence[Degradation]) -> None:
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            image = step(image, rng)
        return image

    def output_size(self, size: Size) -> Size | None:
        out: Size | None = size
        for step in self.steps:
            out = step.output_size(out) if out is not None else None
        return out

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return " -> ".join(repr(s) for s in self.steps) or "(no steps)"


def build_pipeline(specs: Any, where: str = "degradations") -> Pipeline:
    """A :class:`Pipeline` from a recipe list of ``{name: ..., **args}`` (or names); problems
    (unknown names with did-you-mean, unknown keys, out-of-range values) raise one RecipeError
    naming every bad step by its key path."""
    problems, steps = _build_steps(specs, where)
    if problems:
        raise RecipeError("; ".join(problems))
    return Pipeline(steps)


def _build_steps(specs: Any, where: str) -> tuple[list[str], list[Degradation]]:
    if not isinstance(specs, (list, tuple)) or not specs:
        return [f"{where}: expected a non-empty list of steps such as [{{name: gaussian_blur, "
                f"sigma: [0.2, 3]}}, {{name: bicubic, scale: 4}}], got {specs!r}"], []
    problems: list[str] = []
    steps: list[Degradation] = []
    for i, spec in enumerate(specs):
        try:
            step = DEGRADATIONS.build(spec, where=f"{where}[{i}]")
        except RecipeError as e:
            problems.append(str(e))
            continue
        except (PercepkitError, ValueError, TypeError) as e:
            problems.append(f"{where}[{i}]: {e}")
            continue
        if not callable(step):
            problems.append(f"{where}[{i}]: {type(step).__name__} is not callable as "
                            f"step(image, rng)")
            continue
        steps.append(step)
    return problems, steps


def check_pipeline(specs: Any, where: str, patch_size: int | None = None,
                   scale: int | None = None) -> list[str]:
    """Problems with a recipe's degradation list; with ``patch_size`` and ``scale``, also that
    it turns a ``patch_size`` square into the ``patch_size/scale`` input an SR net expects."""
    problems, steps = _build_steps(specs, where)
    if problems or patch_size is None or scale is None:
        return problems
    problem = size_problem(Pipeline(steps), patch_size, scale, where)
    return [problem] if problem else []


def size_problem(pipeline: Pipeline, patch_size: int, scale: int, where: str) -> str | None:
    """Why ``pipeline`` cannot make the ``patch_size/scale`` input of ``patch_size`` targets."""
    want = (patch_size // scale, patch_size // scale)
    got = pipeline.output_size((patch_size, patch_size))
    if got is None:
        return (f"{where}: a step changes the size at random (resize with a scale range), so "
                f"the input would not be {want[0]}x{want[1]} ({patch_size}/{scale}); use a "
                f"fixed resize scale, bicubic, or realesrgan, which resizes back itself")
    if got != want:
        return (f"{where}: the steps turn a {patch_size}x{patch_size} target into a "
                f"{got[1]}x{got[0]} input, but scale {scale} needs {want[1]}x{want[0]}; end "
                f"with {{name: bicubic, scale: {scale}}} (or a resize/realesrgan of scale "
                f"{scale})")
    return None



def dataset_degradation(spec: Mapping[str, Any] | str, where: str = "data.train"
                        ) -> tuple[Any, str]:
    """``(make_input(target, rng), description)`` of a dataset block: its ``degradations``
    list, or the built-in blur + bicubic of ``sr_patches``/``synthetic``; then the dataset's
    8-bit rounding (``quantize``). What ``percepkit degrade`` shows; a dataset that reads its
    inputs from files (``paired_folder``) has none and raises PercepkitError."""
    from ..registry import DATASETS
    from ..registry.arguments import arguments
    from .datasets import degrade

    name, kwargs = DATASETS.resolve(spec, where=where)
    entry = DATASETS.entry(name)
    args = {a.name: a.default for a in arguments(entry.obj)}
    quantize = bool(kwargs.get("quantize", args.get("quantize", True)))
    specs = kwargs.get("degradations")
    if specs is not None:
        make, text = input_maker(specs, f"{where}.degradations", quantize)
        return make, f"{where} ({entry.name}): {text}"
    scale = kwargs.get("scale", args.get("scale"))
    if "blur_sigma" in args and isinstance(scale, int):
        sigma = float(kwargs.get("blur_sigma", args["blur_sigma"]))

        def builtin(target: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
            return degrade(target, scale, sigma, quantize)

        return builtin, (f"{where} ({entry.name}): the built-in Gaussian blur sigma {sigma:g} "
                         f"-> MATLAB bicubic 1/{scale}")
    raise PercepkitError(f"{where}: {entry.name}, as configured, makes no degraded inputs (it "
                         f"reads them from files, or yields images without a scale); nothing to "
                         f"show. Give --degradations, or a recipe whose data.train makes its LR "
                         f"from the HR (sr_patches, or synthetic with scale)")


def input_maker(specs: Any, where: str = "degradations", quantize: bool = True
                ) -> tuple[Any, str]:
    """``(make_input(target, rng), description)`` of a degradation list (one mapping is a list
    of one): the pipeline, then rounding to 8 bits (``quantize``) or clamping to [0, 1]."""
    from .images import quantize as quantize_8bit

    pipeline = build_pipeline([specs] if isinstance(specs, Mapping) else specs, where)

    def make(target: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        out = pipeline(target, rng)
        return quantize_8bit(out) if quantize else out.clamp(0, 1)

    items = [specs] if isinstance(specs, Mapping) else specs
    text = " -> ".join(_spec_text(spec) for spec in items)
    return make, text + (", rounded to 8 bits" if quantize else "")


def _spec_text(spec: Any) -> str:
    """``gaussian_blur(sigma=2)``: a recipe step as written (defaults left out)."""
    if not isinstance(spec, Mapping):
        return str(spec)
    args = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name')}({args})"
