"""The restorable training state: model, optimiser, scheduler, AMP scaler, EMA and RNG states.

What each part is called inside a checkpoint is defined in :mod:`percepkit.models.checkpoint`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, PercepkitError, RecipeError
from ..models.checkpoint import EMA_MODEL, MODEL, OPTIMIZER, RNG, SCALER, SCHEDULER, Checkpoint


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process (torch CPU, CUDA, NumPy, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s result."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(cuda))


class EMA:
    """Exponential moving average of a module's parameters and buffers (``decay`` per step)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise RecipeError(f"train.ema: decay must be between 0 and 1, got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average one step towards ``module``'s current weights."""
        for e, v in zip(self.module.state_dict().values(), module.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(v.to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(v)


def init_weights(model: nn.Module, spec: str, task: str | None = None) -> None:
    """Copy the weights of a model name or checkpoint (``train.init``) into ``model``; one
    trained for another task than ``task`` is refused."""
    from ..models.checkpoint import state_dict_mismatch
    from ..models.zoo import load, resolve
    from .tasks import check_checkpoint_task

    try:
        if task is not None:
            check_checkpoint_task(resolve(spec), task, "the recipe (train.init)")
        source = load(spec)
    except PercepkitError as e:
        raise RecipeError(f"train.init: {e}") from None
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as e:
        raise RecipeError(f"train.init: the weights of {spec} do not fit the recipe's transform "
                          f"({state_dict_mismatch(e)})") from None


def training_state(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler, ema: EMA | None,
                   rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint state of a training run (``rng_states``: one per process, by rank)."""
    state: dict[str, Any] = {
        MODEL: module.state_dict(), OPTIMIZER: optimizer.state_dict(),
        SCHEDULER: scheduler.state_dict(),
        RNG: {f"rank{r}": st for r, st in enumerate(rng_states)},
    }
    if scaler.is_enabled():
        state[SCALER] = scaler.state_dict()
    if ema is not None:
        state[EMA_MODEL] = ema.module.state_dict()
    return state


def restore_training_state(ckpt: Checkpoint, module: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, scaler: torch.amp.GradScaler, ema: EMA | None,
                           transform: Mapping[str, Any]) -> None:
    """Load :func:`training_state`'s parts from ``ckpt`` (not the RNG states)."""
    path, state = ckpt.path, ckpt.state
    if MODEL not in state:
        raise CheckpointError(f"{path}: checkpoint holds no model weights")
    try:
        module.load_state_dict(state[MODEL])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the recipe's transform "
                              f"{transform} (stored: {ckpt.meta.get('transform')}): "
                              f"{str(e).splitlines()[0]}") from None
    try:
        if OPTIMIZER in state:
            optimizer.load_state_dict(state[OPTIMIZER])
        if SCHEDULER in state:
            scheduler.load_state_dict(state[SCHEDULER])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: optimiser/scheduler state does not fit the recipe's "
                              f"optimizer ({type(e).__name__}: {e}); resume with the recipe it "
                              f"was trained with") from None
    if SCALER in state and scaler.is_enabled():
        scaler.load_state_dict(state[SCALER])
    if ema is not None:
        ema.module.load_state_dict(state.get(EMA_MODEL) or state[MODEL])
