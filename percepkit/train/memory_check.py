"""Will a training step fit? An estimate of its peak memory made before anything big exists.

The transform and the loss (its network with random weights) are built on torch's ``meta``
device, where tensors have shapes but no storage, and one forward pass at batch 1 and the
training input size counts the bytes of every tensor an operation creates (views and in-place
results excluded): the activations kept for backward, and some temporaries, so an upper bound.
The peak is that sum times the batch size, plus the transform's (and a gan term's
discriminator's) parameters with their gradients and optimiser state (4 copies: Adam keeps two
moments), the loss network's parameters and the batch itself. The discriminator's own step is
not counted: it runs after the generator's step has freed its activations, and the generator's
step already holds D's forward passes. A recipe whose estimate exceeds the device's available
memory is refused with what to reduce; one whose parts cannot run on ``meta`` is not estimated
(training goes on as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import PercepkitError, RecipeError
from ..inference.memory import available_memory, format_bytes, require_memory
from ..recipes.recipe import Recipe
from .adversarial import attach_meta_discriminator

PARAM_COPIES = 4  # parameter, gradient and the optimiser's two moments (Adam)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's peak, and its parts."""

    activations_per_image: int
    parameters: int
    loss_network: int
    batch_per_image: int
    batch_size: int

    @property
    def total(self) -> int:
        """The estimated peak in bytes."""
        return (self.batch_size * (self.activations_per_image + self.batch_per_image)
                + PARAM_COPIES * self.parameters + self.loss_network)


class _CountCreated(TorchDispatchMode):
    """Sum the bytes of the tensors operations create (not views, not in-place results)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or func._schema.is_mutable):
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out)
                              if isinstance(t, torch.Tensor))
        return out


def _nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _random_weights(spec: Any) -> Any:
    """The loss network's recipe entry with random weights (nothing is read on ``meta``)."""
    if isinstance(spec, dict) and "weights" in spec:
        return {**spec, "weights": "random"}
    return spec


def estimate_training_memory(recipe: Recipe, input_shape: tuple[int, ...],
                             target_shape: tuple[int, ...]) -> MemoryEstimate | None:
    """The peak memory estimate of one training step of ``recipe`` for per-image input and
    target shapes ``(C, H, W)``; None when the parts cannot run on the meta device."""
    raw = dict(recipe.raw)
    if "loss_network" in raw:
        raw["loss_network"] = _random_weights(raw["loss_network"])
    try:
        meta_recipe = Recipe(raw, recipe.source)
        with torch.device("meta"):
            model = meta_recipe.build_transform()
            loss = meta_recipe.build_loss()
            critic = attach_meta_discriminator(meta_recipe, loss)  # a gan term's D, if any
            x = torch.zeros((1, *input_shape))
            y = torch.zeros((1, *target_shape))
            if loss.style_layers:  # style targets are set once from the style image
                loss.set_style(torch.zeros((1, *target_shape)))
            counter = _CountCreated()
            with counter:
                loss(model(x), y)
    except Exception:  # a part that needs real data (files, .item(), custom kernels)
        return None
    net = getattr(loss, "loss_network", None)
    per_image = (x.numel() + y.numel()) * x.element_size()
    params = _nbytes(model) + (_nbytes(critic) if critic is not None else 0)
    return MemoryEstimate(counter.bytes, params, _nbytes(net) if net is not None else 0,
                          per_image, recipe.train.batch_size)


def _size(n: float) -> str:
    return format_bytes(n)


#: float32 copies of one image that making a training item holds at once (the image, its
#: resized/cropped and degraded versions, the synthetic images' coordinate grids and masks)
ITEM_COPIES = 6


def _side(values: Any) -> int:
    """The largest ``size`` / ``patch_size`` among an object's attributes or a dict's keys."""
    get = values.get if isinstance(values, dict) else (lambda k: getattr(values, k, None))
    sides = [get(k) for k in ("size", "patch_size")]
    return max((int(v) for v in sides if isinstance(v, (int, float))
                and not isinstance(v, bool)), default=0)


def check_item_memory(side: int, where: str) -> None:
    """Raise :class:`RecipeError` when one ``side`` x ``side`` RGB image (``where``: the recipe
    key that sets it) cannot be made in the available RAM, before it is made."""
    if side <= 0:
        return
    need = ITEM_COPIES * 3 * side * side * 4
    try:
        require_memory(need, torch.device("cpu"), f"{where}: one {side}x{side} image (about "
                       f"{ITEM_COPIES} float32 copies while it is made)", f"lower {where}")
    except PercepkitError as e:
        raise RecipeError(str(e)) from None


def check_data_memory(recipe: Recipe, dataset: Any) -> None:
    """:func:`check_item_memory` for the images a run makes before its first step: a training
    item of ``dataset`` (``data.train``), the validation items and the style image."""
    check_item_memory(_side(dataset), "data.train.size/patch_size")
    check_item_memory(_side(recipe.data.val or {}), "data.val.size/patch_size")
    from .tasks import task_class

    for side, where in task_class(recipe.task).memory_images(recipe):
        check_item_memory(side, where)


def check_training_memory(recipe: Recipe, item: dict[str, Any], task: Any,
                          device: torch.device) -> MemoryEstimate | None:
    """Raise :class:`RecipeError` when one training step of ``recipe`` cannot fit ``device``'s
    available memory; ``item`` is one training item and ``task`` unpacks it. Returns the
    estimate (None when not estimated: devices other than CPU/CUDA, parts not meta-capable)."""
    if device.type not in ("cpu", "cuda"):
        return None
    batch = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor)}
    try:
        x, y = task.unpack(batch)
    except Exception:
        return None
    estimate = estimate_training_memory(recipe, tuple(x.shape[1:]), tuple(y.shape[1:]))
    if estimate is None:
        return None
    free = available_memory(device)
    if estimate.total <= free:
        return estimate
    s = recipe.train
    fit = max(0, (free - PARAM_COPIES * estimate.parameters - estimate.loss_network)
              // max(1, estimate.activations_per_image + estimate.batch_per_image))
    batch_hint = (f"at this input size about {fit} image(s) per step fit" if fit
                  else "even one image per step does not fit at this input size")
    raise RecipeError(
        f"train: one training step needs about {_size(estimate.total)} "
        f"(batch {s.batch_size} x {_size(estimate.activations_per_image)} of activations per "
        f"{'x'.join(map(str, x.shape[-2:]))} input, plus {_size(estimate.parameters)} of "
        f"parameters x{PARAM_COPIES} for gradients and optimiser state), but {device} has "
        f"{_size(free)} available; {batch_hint}. Reduce train.batch_size, the training image "
        f"size (data.train.size or data.train.patch_size) or the transform's channels.")
