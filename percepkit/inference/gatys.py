"""The optimisation baseline (Gatys et al. 2015): optimise the output image itself.

Instead of training a transform network, each output is found by minimising the same registered
losses (:func:`percepkit.losses.build_loss`, the same loss network) over its pixels, with
L-BFGS (as Gatys et al. and the paper's speed table; one loss/gradient evaluation per iteration,
no line search) or Adam. This is what the paper's feed-forward networks are ~1000x faster than.

* Style transfer: ``ŷ`` starts at the content image (or noise) and minimises
  ``λ_c ℓ_feat(ŷ, content) + λ_s ℓ_style(ŷ, style) + λ_tv ℓ_tv(ŷ)``.
* Super-resolution with a known high-resolution target (the paper's Sec. 3.1 feature
  reconstruction): ``ŷ`` starts at the bicubic upsampling of the input and minimises the losses
  (``ℓ_feat`` at relu2_2 by default) against the target.
* Super-resolution without a target: the losses compare the bicubic *downscaling* of ``ŷ`` with
  the low-resolution input (ŷ starts at its bicubic upsampling), i.e. "an image whose reduced
  copy has the input's features".

Pixels are optimised directly (images in [0, 1]); Adam steps are clamped to [0, 1], L-BFGS
iterates are not (clamping would break its curvature pairs) and the result is clamped at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import PercepkitError
from ..losses import CompositeLoss, build_loss
from ..nets.lossnets import IMAGENET_MEAN
from ..runtime.precision import Precision, autocast

Task = str  # a registered task with an optimisation baseline: "style", "sr"
Method = Literal["lbfgs", "adam"]
Callback = Callable[[int, float], None]

#: The paper's style recipe (recipes/style_johnson2016.yaml) without a recipe file.
STYLE_LOSSES: list[dict[str, Any]] = [
    {"name": "feature", "layers": ["relu2_2"], "weight": 1.0},
    {"name": "style", "layers": ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], "weight": 1.0e5,
     "reduction": "mean"},
    {"name": "tv", "weight": 10.0},
]
#: ℓ_feat at VGG16 relu2_2, the paper's SR loss.
SR_LOSSES: list[dict[str, Any]] = [{"name": "feature", "layers": ["relu2_2"], "weight": 1.0}]


def default_losses(task: Task) -> list[dict[str, Any]]:
    """The paper's loss terms for ``task`` (its ``optimize_losses``; copies, safe to edit)."""
    from ..train.tasks import task_class

    return [dict(s) for s in task_class(task).optimize_losses]


def build_objective(
    task: Task,
    losses: Sequence[Mapping[str, Any]] | None = None,
    loss_network: Mapping[str, Any] | str | None = None,
    device: str | torch.device = "cpu",
) -> CompositeLoss:
    """The composite loss for ``task`` (default terms: :func:`default_losses`) on ``device``."""
    from ..registry import DEFAULT_LOSS_NETWORK, LOSS_NETWORKS

    specs = list(losses) if losses else default_losses(task)
    net = LOSS_NETWORKS.build(loss_network or DEFAULT_LOSS_NETWORK,
                              where="loss_network")
    return build_loss(specs, net).to(device)


@dataclass
class OptimizeResult:
    """The optimised image (3, H, W) on the CPU, the loss after each iteration, timings."""

    image: torch.Tensor
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    setup_seconds: float = 0.0
    seconds: float = 0.0
    iteration_times: list[float] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return self.setup_seconds + self.seconds


def _as_batch(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise PercepkitError(f"expected one RGB image (3, H, W), got shape {tuple(image.shape)}")
    return image.to(device, torch.float32)


def loss_device(loss: CompositeLoss) -> torch.device:
    """The device a composite loss (its loss network) lives on."""
    for t in (*loss.parameters(), *loss.buffers()):
        return t.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimize_image(
    loss: CompositeLoss,
    init: torch.Tensor,
    target: torch.Tensor | None,
    *,
    iterations: int = 500,
    method: Method = "lbfgs",
    lr: float | None = None,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callback | None = None,
    setup_seconds: float = 0.0,
    max_seconds: float | None = None,
    min_iterations: int = 1,
    precision: Precision | None = None,
    project: bool = False,
) -> OptimizeResult:
    """Minimise ``loss(view(ŷ), target)`` over the pixels of ``ŷ`` starting from ``init``.

    One iteration is one loss/gradient evaluation followed by one update (L-BFGS without line
    search, as Gatys et al.). ``view`` maps ŷ to what the loss sees (identity by default).
    ``callback(iteration, loss)`` is called after every iteration. With ``max_seconds``, it
    stops after the iteration that exceeds that time (but not before ``min_iterations``).
    ``precision``: the loss network's forward passes in that autocast (the pixels, the loss
    terms and L-BFGS stay fp32). ``project``: clip ŷ to [0, 1] after every L-BFGS update
    (projected L-BFGS, the baseline of Johnson et al. 2016); Adam's updates are always clipped.
    """
    if iterations < 1:
        raise PercepkitError(f"iterations must be at least 1, got {iterations}")
    device = init.device
    image = init.detach().clone().contiguous().requires_grad_(True)
    if method == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [image], lr=lr or 1.0, max_iter=1, history_size=100, tolerance_grad=0.0,
            tolerance_change=0.0, line_search_fn=None)
    elif method == "adam":
        opt = torch.optim.Adam([image], lr=lr or 0.02)
    else:
        raise PercepkitError(f"unknown optimiser {method!r}; use lbfgs or adam")
    history: list[float] = []
    times: list[float] = []
    last = [float("nan")]

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            total, _parts = loss(view(image) if view else image, target)
        total.backward()
        last[0] = float(total.detach())
        return total

    _sync(device)
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        if method == "lbfgs":
            opt.step(closure)
            if project:
                with torch.no_grad():
                    image.clamp_(0, 1)
        else:
            closure()
            opt.step()
            with torch.no_grad():
                image.clamp_(0, 1)
        _sync(device)
        times.append(time.perf_counter() - start)
        if last[0] != last[0]:
            raise PercepkitError(f"the loss became NaN at iteration {it}; lower the learning "
                                 "rate (--lr) or the loss weights")
        history.append(last[0])
        if callback is not None:
            callback(it, last[0])
        if max_seconds is not None and it >= min_iterations and times[-1] > max_seconds:
            break
    seconds = times[-1]
    result = image.detach().clamp(0, 1)[0].cpu()
    return OptimizeResult(result, history, len(history), setup_seconds, seconds, times)


def stylize(
    content: torch.Tensor,
    style: torch.Tensor,
    loss: CompositeLoss,
    *,
    iterations: int = 500,
    method: Method = "lbfgs",
    lr: float | None = None,
    init: Literal["content", "noise", "random"] = "content",
    seed: int = 0,
    callback: Callback | None = None,
    precision: Precision | None = None,
    project: bool = False,
) -> OptimizeResult:
    """Gatys et al. style transfer of ``content`` (3, H, W) towards ``style`` (3, h, w).

    ``init``: start from the content image, from uniform noise in [0, 1], or as
    jcjohnson/neural-style's ``-init random`` (the implementation behind Johnson et al.'s
    white-noise baseline): the ImageNet mean colour plus Gaussian noise of 0.001 levels.
    ``project``: see :func:`optimize_image`.
    """
    device = loss_device(loss)
    _sync(device)
    t0 = time.perf_counter()
    x = _as_batch(content, device)
    if not loss.style_layers:
        raise PercepkitError("the losses have no style term; add {name: style, ...}")
    with autocast(precision):
        loss.set_style(_as_batch(style, device))
    gen = torch.Generator().manual_seed(seed)
    if init == "noise":
        start = torch.rand(x.shape, generator=gen).to(device)
    elif init == "random":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        start = (mean + torch.randn(x.shape, generator=gen) * (0.001 / 255)).to(device)
    elif init == "content":
        start = x
    else:
        raise PercepkitError(f"unknown init {init!r}; use content, noise or random")
    _sync(device)
    return optimize_image(loss, start, x, iterations=iterations, method=method, lr=lr,
                          callback=callback, setup_seconds=time.perf_counter() - t0,
                          precision=precision, project=project)


def upscale(
    image: torch.Tensor,
    scale: int,
    loss: CompositeLoss,
    *,
    target: torch.Tensor | None = None,
    iterations: int = 200,
    method: Method = "lbfgs",
    lr: float | None = None,
    callback: Callback | None = None,
    precision: Precision | None = None,
    project: bool = False,
) -> OptimizeResult:
    """Super-resolve ``image`` (3, h, w) ``scale`` times by optimisation (see module docs)."""
    from ..data.imresize import imresize

    device = loss_device(loss)
    t0 = time.perf_counter()
    x = _as_batch(image, device)
    start = imresize(x, scale=scale).clamp(0, 1)
    if target is not None:
        y = _as_batch(target, device)
        if y.shape[-2:] != start.shape[-2:]:
            raise PercepkitError(f"the target is {y.shape[-1]}x{y.shape[-2]}, but x{scale} of "
                                 f"the input is {start.shape[-1]}x{start.shape[-2]}")
        view = None
    else:
        y = x
        h, w = x.shape[-2:]

        def view(z: torch.Tensor) -> torch.Tensor:
            return imresize(z, size=(h, w))

    return optimize_image(loss, start, y, iterations=iterations, method=method, lr=lr,
                          view=view, callback=callback, setup_seconds=time.perf_counter() - t0,
                          precision=precision, project=project)
