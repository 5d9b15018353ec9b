"""Optimisers and learning-rate schedules that recipes name (``optimizer:`` / ``scheduler:``).

The first argument of each factory (the parameters, or the optimiser and the run length) is
supplied by the trainer; every other argument is a recipe key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..registry import OPTIMIZERS, SCHEDULERS

Params = Iterable[torch.nn.Parameter]


@OPTIMIZERS.register("adam")
def adam(params: Params, lr: float = 1e-3, betas: list[float] = (0.9, 0.999),
         weight_decay: float = 0.0, eps: float = 1e-8) -> Optimizer:
    """Adam (the paper's optimiser, lr 1e-3)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, lr: float = 1e-3, betas: list[float] = (0.9, 0.999),
          weight_decay: float = 1e-2, eps: float = 1e-8) -> Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


@OPTIMIZERS.register("sgd")
def sgd(params: Params, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False) -> Optimizer:
    """SGD with momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


@SCHEDULERS.register("constant")
def constant(optimizer: Optimizer, iterations: int, warmup: int = 0) -> LRScheduler:
    """Constant learning rate (the paper), with optional linear warm-up steps."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)


@SCHEDULERS.register("step")
def step(optimizer: Optimizer, iterations: int, milestones: list[int] = (),
         gamma: float = 0.5) -> LRScheduler:
    """Multiply the learning rate by ``gamma`` at each milestone step."""
    marks = sorted(milestones)
    return LambdaLR(optimizer, lambda s: gamma ** sum(s >= m for m in marks))


@SCHEDULERS.register("cosine")
def cosine(optimizer: Optimizer, iterations: int, warmup: int = 0, min_factor: float = 0.0
           ) -> LRScheduler:
    """Linear warm-up, then cosine decay to ``min_factor`` x the initial rate at the end."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, iterations - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)
