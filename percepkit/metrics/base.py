"""What every metric shares: the ``Metric`` base class, input checks and the scored planes.

The scored planes follow the convention behind published SR tables: 3-channel images are scored
on MATLAB ``rgb2ycbcr`` luma (BT.601 studio range, float64, unrounded) or on RGB, 1-channel images
on their raw values, on the 0..255 scale, after removing ``crop_border`` pixels on every side.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import PercepkitError
from ..runtime.devices import threads
from ..runtime.precision import Precision, autocast

__all__ = ["RGB_CONVENTION", "Y_CONVENTION", "Channel", "Metric", "PlaneMetric", "check_channel",
           "check_pair", "check_size", "crop", "rgb_to_y", "to_scored"]

Channel = Literal["y", "rgb"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_CONVENTION = ("Y = 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB rgb2ycbcr, BT.601 studio "
                "range, float64, unrounded); 1-channel images scored on raw values")
RGB_CONVENTION = "all RGB channels (1-channel images on raw values)"


class Metric(nn.Module):
    """Base class: ``metric(output, target)`` returns one float64 value per image, shape (B,).

    Subclasses set ``name``, ``higher_is_better``, ``unit`` and describe their exact
    convention in :attr:`convention` (written into every results file). A class attribute
    ``whole_image = True`` tells ``percepkit eval`` not to pass it the SR border crop.
    """

    name: str = "metric"
    higher_is_better: bool = True
    unit: str = ""
    fmt: str = ".4f"
    #: How :func:`~percepkit.metrics.create.create_metric` with ``as_loss=True`` turns the
    #: metric into a loss (lower is better): ``"value"`` (the metric itself), ``"one_minus"``
    #: (1 - the metric: a similarity of at most 1), or None: ``"value"`` for a lower-is-better
    #: metric, no loss form otherwise. :attr:`loss_instead`, when set, refuses a loss form
    #: (a metric without a useful gradient) and says what to minimise instead.
    loss_form: Literal["value", "one_minus"] | None = None
    loss_instead: str = ""
    #: whether the metric runs a network (LPIPS, DISTS) that may run in bf16/fp16 autocast;
    #: ``precision`` is set by :func:`percepkit.evaluation.evaluate.build_metrics` (``None``: fp32)
    runs_network: bool = False
    precision: Precision | None = None

    @property
    def convention(self) -> str:
        """One sentence stating exactly what is computed."""
        return self.name

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_pair(output, target, self.name)
        with autocast(self.precision):
            return super().__call__(output, target)


class PlaneMetric(Metric):
    """A metric of the scored planes (:func:`to_scored`): PSNR, SSIM, MS-SSIM.

    ``planes`` converts an image pair once; ``score_planes`` scores the planes, so metrics with
    the same ``planes_key`` (channel and border crop) can share one conversion
    (:func:`percepkit.evaluation.evaluate.score_pair`). They run single-threaded: many small CPU
    ops (see
    :func:`percepkit.runtime.devices.threads`).
    """

    def __init__(self, name: str, channel: Channel = "y", crop_border: int = 0) -> None:
        super().__init__()
        check_channel(channel, name)
        self.channel = channel
        self.crop_border = int(crop_border)
        self.name = name if channel == "y" else f"{name}_rgb"

    @property
    def planes_key(self) -> tuple[str, int]:
        return self.channel, self.crop_border

    def planes(self, output: torch.Tensor, target: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images as float64 0..255 planes, border cropped."""
        return (to_scored(output, self.channel, self.crop_border),
                to_scored(target, self.channel, self.crop_border))

    def score_planes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """One value per image of the planes ``a`` (output) and ``b`` (target), shape (B,)."""
        raise NotImplementedError

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with threads(1):
            return self.score_planes(*self.planes(output, target))


def check_pair(output: torch.Tensor, target: torch.Tensor, name: str) -> None:
    """Refuse inputs that are not two (B, C, H, W) tensors of one shape with 1 or 3 channels."""
    if output.dim() != 4 or target.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) tensors, got {tuple(output.shape)} "
                         f"and {tuple(target.shape)}")
    if output.shape != target.shape:
        raise ValueError(f"{name}: output {tuple(output.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if output.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got {output.shape[1]}")


def check_channel(channel: str, name: str) -> None:
    """Refuse a ``channel`` other than 'y' or 'rgb' with one sentence."""
    if channel not in ("y", "rgb"):
        raise PercepkitError(f"{name}: channel must be 'y' or 'rgb', got {channel!r}")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` luma (0..255 scale, float64): (B, 3, H, W) in [0, 1] -> (B, 1, H, W)."""
    x = x.to(torch.float64)
    y = x[:, 0:1] * _Y_WEIGHTS[0]
    y.add_(x[:, 1:2], alpha=_Y_WEIGHTS[1]).add_(x[:, 2:3], alpha=_Y_WEIGHTS[2])
    return y.add_(16.0)


def crop(x: torch.Tensor, crop_border: int) -> torch.Tensor:
    """``x`` without ``crop_border`` pixels on every side (unchanged for 0)."""
    c = int(crop_border)
    return x[..., c:-c, c:-c] if c else x


def to_scored(x: torch.Tensor, channel: Channel, crop_border: int) -> torch.Tensor:
    """The float64 0..255 planes a metric scores: Y (or RGB) of 3-channel images, raw 1-channel."""
    x = crop(x, crop_border)
    return rgb_to_y(x) if channel == "y" and x.shape[1] == 3 else x.to(torch.float64) * 255.0


def rgb_pair(output: torch.Tensor, target: torch.Tensor, crop_border: int, minimum: int,
             name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a perceptual metric (LPIPS, DISTS) scores: both images after the border crop,
    checked against ``minimum``, 1-channel images repeated to RGB."""
    output, target = crop(output, crop_border), crop(target, crop_border)
    check_size(output, minimum, name, crop_border)
    if output.shape[1] == 1:
        output, target = output.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
    return output, target


def check_size(x: torch.Tensor, minimum: int, name: str, crop_border: int,
               reason: str = "") -> None:
    """Raise one sentence when ``x`` is smaller than ``minimum`` on a side (after cropping)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < minimum or w < minimum:
        why = f" {reason}" if reason else ""
        raise PercepkitError(
            f"{name}: image too small ({w}x{h} after cropping {crop_border} border pixels); "
            f"it needs at least {minimum}x{minimum}{why}.")
