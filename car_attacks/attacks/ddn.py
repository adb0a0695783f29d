"""Clipping-aware Decoupled Direction and Norm attack (DDN, L2).

DDN (Rony et al., "Decoupling Direction and Norm for Efficient Gradient-Based L2
Adversarial Attacks and Defenses", CVPR 2019) ascends the cross-entropy with a unit L2
gradient step and keeps the norm of the perturbation on a separate schedule. Per step
``k`` (step size ``alpha_k`` cosine-annealed from 1 to 0.01):

    delta <- delta + alpha_k g / ||g||_2,
    eps   <- eps (1 - gamma) if x0 + delta was adversarial else eps (1 + gamma),
    delta <- eps delta / ||delta||_2, then clip x0 + delta to the box.

The clip shortens the rescaled perturbation, so ``eps`` is not the norm that reaches the
model. Here (``rescaling="car"``) the rescale is clipping-aware: ``clip(x0 + eta delta)``
has L2 distance exactly ``eps`` from ``x0`` (or the largest reachable). ``"naive"`` is
foolbox 3.3.4's arithmetic. Zero gradients are replaced by Gaussian noise, as in foolbox
(seeded per sample when ``seed`` is an int).
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
from foolbox.attacks.base import T
from foolbox.models import Model

from ..core.tensors import batch_view, lp_norms
from .base import AttackCall, Rescaling
from .losses import LossFn, cross_entropy_loss, loss_logits_and_grad
from .minimization import (
    BestAdversarial,
    ClippingAwareMinimizationAttack,
    Objective,
    cosine_annealing,
    worst_case_norms,
)
from .norms import L2
from .sampling import draw

__all__ = ["L2ClippingAwareDDN"]

MAX_STEPSIZE = 1.0
"""``alpha_0`` of DDN's step-size schedule (Rony et al. 2019; foolbox 3.3.4)."""
MIN_STEPSIZE = 0.01
"""The value ``alpha_k`` is annealed to."""


def signed_loss(model: Model, objective: Objective) -> LossFn:
    """The summed cross-entropy towards the objective's classes, times its sign (ascent
    leaves the label, or descends towards the target)."""
    cross_entropy = cross_entropy_loss(model, objective.classes)

    def loss_fn(inputs: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        loss, logits = cross_entropy(inputs)
        return objective.sign * loss, logits

    return loss_fn


class L2ClippingAwareDDN(ClippingAwareMinimizationAttack):
    """DDN (Rony et al. 2019) whose rescale onto the norm ``eps`` is clipping-aware.

    Args:
        steps: Number of iterations.
        init_epsilon: Initial norm ``eps`` (> 0).
        gamma: Relative change of ``eps`` per step, in (0, 1).
        rescaling: ``"car"`` (exact, default), ``"bisection"`` or ``"naive"`` (foolbox).
        seed: ``None``: zero gradients are replaced with noise from the backend's global
            generator (as foolbox); an int gives every sample its own stream.
    """

    norm = L2

    def __init__(
        self,
        *,
        steps: int = 100,
        init_epsilon: float = 1.0,
        gamma: float = 0.05,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(steps=steps, gamma=gamma, rescaling=rescaling, seed=seed)
        if not init_epsilon > 0:
            raise ValueError(f"init_epsilon must be > 0, got init_epsilon={init_epsilon!r}")
        self.init_epsilon = init_epsilon

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Any,
        *,
        early_stop: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Each sample's closest adversarial iterate (the input if none is found)."""
        call, objective = self.checked_call(model, inputs, criterion, kwargs)
        return call.restore_type(self.minimize(model, call, objective))

    def unit_gradient(self, gradient: ep.Tensor, x: ep.Tensor, step: int) -> ep.Tensor:
        """``g / ||g||_2``, with Gaussian noise in place of zero gradients (seeded by the
        iterate ``x`` and the step)."""
        norms = lp_norms(gradient, 2.0)
        zero = norms == 0
        if zero.any().item():
            noise = draw(x, "normal", seed=self.seed, stream=step)
            gradient = ep.where(batch_view(zero, gradient.ndim), noise, gradient)
            norms = lp_norms(gradient, 2.0)
        return gradient * batch_view(1 / ep.maximum(norms, 1e-12), gradient.ndim)

    def minimize(self, model: Model, call: AttackCall, objective: Objective) -> ep.Tensor:
        """The DDN iterations from the input; each sample's closest adversarial iterate."""
        x0, bounds, criterion = call.x, call.bounds, call.criterion
        assert criterion is not None
        worst = worst_case_norms(x0, bounds, self.p)
        rescale = self.rescaled(bounds)
        loss_fn = signed_loss(model, objective)
        best = BestAdversarial.starting_at(x0, worst)
        eps = ep.full(x0, (len(x0),), self.init_epsilon)
        x = x0
        for i in range(self.steps):
            stepsize = cosine_annealing(MAX_STEPSIZE, MIN_STEPSIZE, i, self.steps)
            _, logits, gradient = loss_logits_and_grad(loss_fn, x)
            is_adv = criterion(x, logits)
            best.update(x, lp_norms(x - x0, 2.0), is_adv)
            delta = (x - x0) + stepsize * self.unit_gradient(gradient, x, i)
            eps = ep.minimum(eps * ep.where(is_adv, 1.0 - self.gamma, 1.0 + self.gamma), worst)
            x = rescale.clipped_step(x0, delta, eps)
        return best.x
