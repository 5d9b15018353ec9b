"""The adversarial term ``gan``: the generator's loss against a discriminator, and D's own loss.

With discriminator logits ``r = D(y)`` on targets and ``f = D(ŷ)`` on outputs, and ``c(x, t)``
the criterion of ``gan_type`` (averaged over every logit):

* ``vanilla``: c(x, t) = BCE(σ(x), t) (binary cross-entropy on logits; the non-saturating
  generator loss of Goodfellow et al. 2014);
* ``lsgan``:   c(x, t) = (x - t)² (Mao et al. 2017);
* ``hinge``:   D: relu(1 - x) for real, relu(1 + x) for fake; G: -x (Lim & Ye 2017).

Standard form: G minimises c(f, 1); D minimises c(r, ρ) + c(f, 0), ρ = ``real_label_val``.

Relativistic average form (ESRGAN, Wang et al. 2018, after Jolicoeur-Martineau 2018), with
r̃ = r - mean(f) and f̃ = f - mean(r): D minimises ½[c(r̃, ρ) + c(f̃, 0)], and G minimises the
same with the labels swapped, ½[c(r̃, 0) + c(f̃, 1)], where D(y) is a constant for G. For
``hinge`` this is RaHinge: G minimises ½[relu(1 + r̃) + relu(1 - f̃)].

``real_label_val`` < 1 is one-sided label smoothing (Salimans et al. 2016): it changes only the
discriminator's target for real images; the generator's targets stay 1 and 0.

The term needs a discriminator: the trainer builds the recipe's ``discriminator`` and gives the
term a function computing its logits (:meth:`GANLoss.attach`), which runs D under the training
precision with D's parameters frozen; the term's loss itself is computed in float32 like every
term. D's own step (:meth:`GANLoss.discriminator_loss`) is run by
:mod:`percepkit.train.adversarial`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import PercepkitError
from ..registry import LOSSES
from .base import LossInputs, LossTerm

GanType = Literal["vanilla", "lsgan", "hinge"]
Discriminate = Callable[[torch.Tensor], torch.Tensor]


def criterion(gan_type: GanType, logits: torch.Tensor, label: float) -> torch.Tensor:
    """c(x, t) of the module docstring for a label of 1 (real) or 0 (fake), or ρ for real;
    hinge uses only which side the label is on (relu(1 - x) for real, relu(1 + x) for fake)."""
    x = logits.float()
    if gan_type == "vanilla":
        return F.binary_cross_entropy_with_logits(x, torch.full_like(x, label))
    if gan_type == "lsgan":
        return F.mse_loss(x, torch.full_like(x, label))
    if gan_type == "hinge":
        return F.relu(1.0 - x).mean() if label > 0.5 else F.relu(1.0 + x).mean()
    raise ValueError(f"gan_type must be 'vanilla', 'lsgan' or 'hinge', got {gan_type!r}")


@LOSSES.register("gan", aliases=("adversarial",))
class GANLoss(LossTerm):
    """Adversarial loss against the recipe's discriminator: vanilla, LSGAN or hinge, optionally
    relativistic average (ESRGAN); ``real_label_val`` < 1 smooths D's real labels."""

    def __init__(self, weight: float = 1.0, gan_type: GanType = "vanilla",
                 relativistic: bool = False, real_label_val: float = 1.0) -> None:
        super().__init__(weight)
        if gan_type not in ("vanilla", "lsgan", "hinge"):
            raise ValueError(f"gan_type must be 'vanilla', 'lsgan' or 'hinge', got {gan_type!r}")
        if not 0.0 < real_label_val <= 1.0:
            raise ValueError(f"real_label_val must be in (0, 1], got {real_label_val}")
        if gan_type == "hinge" and real_label_val != 1.0:
            raise ValueError("real_label_val: the hinge loss has no labels to smooth; "
                             "leave it at 1.0 or use gan_type vanilla or lsgan")
        self.gan_type: GanType = gan_type
        self.relativistic = bool(relativistic)
        self.real_label_val = float(real_label_val)
        self.active = True
        self._discriminate: Discriminate | None = None  # not a submodule: D is the trainer's

    def attach(self, discriminate: Discriminate | None) -> None:
        """Give the term the function computing the discriminator's logits (None: detach).

        A discriminator module itself may be given; it is not made a submodule of the term
        (the loss's state dict and ``.to()`` never include D: the trainer owns it)."""
        object.__setattr__(self, "_discriminate", discriminate)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if not self.active:  # the warm-up (train.gan_start): the generator trains without it
            return inputs.output.new_zeros((), dtype=torch.float32)
        if self._discriminate is None:
            raise PercepkitError("the gan term needs a discriminator: add a 'discriminator:' "
                                 "block to the recipe (e.g. {name: unet}); outside the "
                                 "trainer, call GANLoss.attach(discriminator)")
        fake = self._discriminate(inputs.output).float()
        real = None
        if self.relativistic:
            if inputs.target is None:
                raise PercepkitError("the relativistic gan term needs targets")
            with torch.no_grad():
                real = self._discriminate(inputs.target).float()
        return self.generator_loss(fake, real)

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """G's loss from D's logits on outputs (``fake``) and, if relativistic, on targets."""
        t = self.gan_type
        if not self.relativistic:
            return -fake.float().mean() if t == "hinge" else criterion(t, fake, 1.0)
        if real is None:
            raise ValueError("the relativistic form needs the logits on real images")
        real, fake = real.float().detach(), fake.float()
        return 0.5 * (criterion(t, real - fake.mean(), 0.0)
                      + criterion(t, fake - real.mean(), 1.0))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss from its logits on targets (``real``) and on detached outputs (``fake``)."""
        t, rho = self.gan_type, self.real_label_val
        real, fake = real.float(), fake.float()
        if not self.relativistic:
            return criterion(t, real, rho) + criterion(t, fake, 0.0)
        return 0.5 * (criterion(t, real - fake.mean().detach(), rho)
                      + criterion(t, fake - real.mean().detach(), 0.0))
