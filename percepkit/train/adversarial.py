"""Adversarial training: the discriminator, its step, and its part of the checkpoints.

A recipe with a ``gan`` term (:class:`percepkit.losses.adversarial.GANLoss`) trains a
``discriminator`` beside the transform (the generator). Each training step then is:

1. the generator's step (the trainer's): the ``gan`` term calls D on the outputs (and, when
   relativistic, on the targets) under the training precision, with D's parameters frozen, so
   its gradient reaches only the generator;
2. ``train.d_steps`` discriminator updates on the same batch (targets as real, the generator's
   outputs of step 1, detached, as fake), under the same autocast and with D's own GradScaler,
   then one step of D's learning-rate schedule.

During the warm-up (the first ``train.gan_start`` steps) the ``gan`` term is 0 and D is left
alone. ``optimizer_d`` and ``scheduler_d`` default to the recipe's ``optimizer`` and
``scheduler``; ``scheduler_d`` spans the ``iterations - gan_start`` adversarial steps. D's
weights, optimiser, schedule and scaler are checkpoint parts (:mod:`percepkit.models.checkpoint`),
so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, RecipeError
from ..losses.adversarial import GANLoss
from ..losses.base import CompositeLoss, full_precision
from ..models.checkpoint import DISCRIMINATOR, OPTIMIZER_D, SCALER_D, SCHEDULER_D, Checkpoint
from ..recipes.recipe import Recipe
from ..registry import DISCRIMINATORS, OPTIMIZERS, SCHEDULERS

#: the log.csv / TensorBoard columns of the discriminator: its loss, its mean logits on targets
#: (real) and on outputs (fake); empty during the warm-up
COLUMNS = ("d_loss", "d_real", "d_fake")


def gan_term(loss: CompositeLoss) -> GANLoss | None:
    """The composite loss's ``gan`` term, if it has one."""
    return next((t for t in loss.terms.values() if isinstance(t, GANLoss)), None)


def build_discriminator(recipe: Recipe) -> nn.Module:
    """The recipe's ``discriminator``, built through :data:`DISCRIMINATORS`."""
    try:
        return DISCRIMINATORS.build(recipe.raw["discriminator"], where="discriminator")
    except ValueError as e:
        raise RecipeError(f"discriminator: {e}") from None


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters do not require gradients inside (they become constants of the
    graph built there); their previous flags are restored after."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class Adversary:
    """The discriminator's side of adversarial training (see the module docstring).

    ``autocast`` is the trainer's autocast factory (its precision), ``scaler_enabled`` whether
    the generator's GradScaler is on (float16): D gets its own scaler, on when G's is.
    """

    columns = COLUMNS

    def __init__(self, recipe: Recipe, loss: CompositeLoss, device: torch.device,
                 autocast: Callable[[], AbstractContextManager[Any]], scaler_enabled: bool,
                 channels_last: bool = False) -> None:
        term = gan_term(loss)
        if term is None or "discriminator" not in recipe.raw:
            raise RecipeError("losses: adversarial training needs a gan term and a "
                              "'discriminator:' block")
        s, raw = recipe.train, recipe.raw
        self.term, self.device, self.autocast = term, device, autocast
        self.d_steps, self.start = int(s.d_steps), int(s.gan_start)
        self.spec = raw["discriminator"]
        self.name = DISCRIMINATORS.resolve(self.spec)[0]
        self.module = build_discriminator(recipe).to(device)
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.train_module: nn.Module = self.module  # the DDP wrapper when distributed
        self.optimizer = OPTIMIZERS.build(raw.get("optimizer_d", raw.get("optimizer", "adam")),
                                          where="optimizer_d", params=self.module.parameters())
        self.scheduler = SCHEDULERS.build(raw.get("scheduler_d", raw.get("scheduler", "constant")),
                                          where="scheduler_d", optimizer=self.optimizer,
                                          iterations=max(1, s.iterations - self.start))
        self.scaler = torch.amp.GradScaler(device.type, enabled=scaler_enabled)
        term.attach(self.discriminate)

    def describe(self) -> str:
        """One line for the start of training."""
        n = sum(p.numel() for p in self.module.parameters())
        warm = f", generator-only warm-up of {self.start} steps" if self.start else ""
        return (f"discriminator {self.name}: {n / 1e6:.2f}M parameters, {self.d_steps} step(s) per "
                f"generator step{warm}")

    def distribute(self, device_ids: list[int] | None) -> None:
        """Wrap D in DistributedDataParallel for its own step (the gan term uses it bare)."""
        self.train_module = nn.parallel.DistributedDataParallel(self.module,
                                                                device_ids=device_ids)

    def active(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is adversarial (after the warm-up)."""
        return step >= self.start

    def prepare(self, step: int) -> None:
        """Before the generator's step ``step``: the gan term is on after the warm-up."""
        self.term.active = self.active(step)

    def check_target(self, target: torch.Tensor) -> None:
        """Raise :class:`RecipeError` unless D takes training targets of ``target``'s size
        (for datasets whose crop size ``recipe check`` cannot read from the recipe)."""
        from ..nets.discriminators import input_problem

        h, w = target.shape[-2:]
        why = input_problem(self.spec, h, w)
        if why is not None:
            raise RecipeError(f"discriminator: {self.name} {why}: the training targets are "
                              f"{h}x{w}; change data.train's crop size or choose a "
                              f"discriminator that takes that size")

    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits for the generator's loss: training precision, D's parameters frozen."""
        with frozen(self.module), self.autocast():
            return self.module(images)

    def train_step(self, step: int, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """``d_steps`` updates of D on targets (real) and detached outputs (fake), one step of
        its schedule; returns [D loss, mean logit on real, mean logit on fake] of the last
        update (NaN during the warm-up)."""
        if not self.active(step):
            return torch.full((len(COLUMNS),), math.nan, device=real.device)
        fake = fake.detach()
        for _ in range(self.d_steps):
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                real_logits = self.train_module(real)
                fake_logits = self.train_module(fake)
            with full_precision(real.device):
                loss = self.term.discriminator_loss(real_logits, fake_logits)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        return torch.stack([loss.detach(), real_logits.detach().float().mean(),
                            fake_logits.detach().float().mean()])

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """D's checkpoint parts: weights (buffers included), optimiser, schedule, scaler."""
        state: dict[str, Any] = {DISCRIMINATOR: self.module.state_dict(),
                                 OPTIMIZER_D: self.optimizer.state_dict(),
                                 SCHEDULER_D: self.scheduler.state_dict()}
        if self.scaler.is_enabled():
            state[SCALER_D] = self.scaler.state_dict()
        return state

    def load(self, ckpt: Checkpoint) -> None:
        """Restore :meth:`state`'s parts from ``ckpt``."""
        state, path = ckpt.state, ckpt.path
        if DISCRIMINATOR not in state:
            raise CheckpointError(f"{path}: holds no discriminator, but the recipe trains one; "
                                  f"to start adversarial training from its generator, use "
                                  f"train.init={path} in a new run")
        try:
            self.module.load_state_dict(state[DISCRIMINATOR])
            if OPTIMIZER_D in state:
                self.optimizer.load_state_dict(state[OPTIMIZER_D])
            if SCHEDULER_D in state:
                self.scheduler.load_state_dict(state[SCHEDULER_D])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its discriminator state does not fit the recipe's "
                                  f"discriminator/optimizer_d ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}); resume with the recipe it was "
                                  f"trained with") from None
        if SCALER_D in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state[SCALER_D])


def make_adversary(recipe: Recipe, loss: CompositeLoss, device: torch.device,
                   autocast: Callable[[], AbstractContextManager[Any]], scaler_enabled: bool,
                   channels_last: bool = False) -> Adversary | None:
    """The :class:`Adversary` of a recipe with a ``gan`` term; None without one."""
    if gan_term(loss) is None:
        return None
    return Adversary(recipe, loss, device, autocast, scaler_enabled, channels_last)


def attach_meta_discriminator(recipe: Recipe, loss: CompositeLoss) -> nn.Module | None:
    """Build the recipe's discriminator on the current (``meta``) device and attach it to the
    gan term, for the memory estimate; returns it (None without a gan term)."""
    term = gan_term(loss)
    if term is None or "discriminator" not in recipe.raw:
        return None
    net = build_discriminator(recipe)
    term.attach(net)
    return net
