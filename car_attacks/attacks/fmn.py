"""Clipping-aware Fast Minimum-Norm attacks (FMN) for L1, L2 and L-inf.

FMN (Pintor et al., "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
Constraints", NeurIPS 2021) minimises the margin ``l(x) = z_y - max_{j != y} z_j`` inside
a ball of adaptive radius ``eps_k`` around ``x0``. Per step ``k``:

* ``eps_k``: once adversarial ``min(eps (1 - gamma_k), ||best||_p)``; after a success that
  was lost ``eps (1 + gamma_k)``; before any success ``||delta||_p + |l| / ||grad l||_q``
  (the linearised distance to the boundary, ``q`` the dual exponent of ``p``); at most the
  largest distance the box allows;
* the gradient step ``x + alpha_k g / ||g||_2`` (Algorithm 1 of the paper normalises the
  gradient in L2 for every norm; ``alpha_k`` and ``gamma_k`` are cosine-annealed);
* the projection onto the ball of radius ``eps_k``.

Foolbox 3.3.4 steps, projects onto the ball and then clips. Here (``rescaling="car"``) the
step is clipping-aware (``||clip(x + eta g) - x||_2 == alpha_k`` exactly) and the
projection is the exact projection onto ball ∩ box
(:meth:`~car_attacks.attacks.rescaled_steps.RescaledSteps.project`). ``"naive"`` steps
without clipping and projects then clips, as foolbox does; two foolbox details differ on
purpose: its L2 "projection" multiplies by ``norms / norms`` (so it never projects), where
naive here shrinks onto the L2 ball and clips. For L1 (the Euclidean L1-ball projection of
Duchi et al. 2008, then clip) and L-inf naive is foolbox's arithmetic.

With ``starting_points`` or ``init_attack`` the attack first binary-searches between the
original and the adversarial start (foolbox's ``mid_points``), then starts from the
closest adversarial point found.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import eagerpy as ep
from foolbox.attacks.base import MinimizationAttack, T, get_is_adversarial
from foolbox.models import Model

from ..core.projection import l1_threshold
from ..core.tensors import (
    Bounds,
    batch_view,
    clip_to_bounds,
    flatten_batch,
    lp_norms,
    nonzero_or_one,
)
from .base import AttackCall, Rescaling
from .losses import LossFn, class_margin, loss_logits_and_grad
from .minimization import (
    BestAdversarial,
    ClippingAwareMinimizationAttack,
    Objective,
    cosine_annealing,
    worst_case_norms,
)
from .norms import L1, L2, LINF
from .rescaled_steps import RescaledSteps

__all__ = [
    "ClippingAwareFMN",
    "L1ClippingAwareFMN",
    "L2ClippingAwareFMN",
    "LinfClippingAwareFMN",
    "dual_exponent",
]

FINAL_GAMMA = 0.001
"""The value ``gamma_k`` is annealed to (Pintor et al. 2021; foolbox 3.3.4)."""
MIN_STEPSIZE_FRACTION = 0.01
"""``min_stepsize`` defaults to this fraction of ``max_stepsize`` (foolbox 3.3.4)."""
STEP_P = 2.0
"""The norm the gradient is normalised in and the step is measured in (Algorithm 1)."""


def dual_exponent(p: float) -> float:
    """``q`` with ``1/p + 1/q = 1``: inf for 1, 2 for 2, 1 for inf."""
    if p == 1:
        return math.inf
    if p == math.inf:
        return 1.0
    return p / (p - 1)


def margin_loss(model: Model, objective: Objective) -> LossFn:
    """``-sum_i s l_i`` with ``l`` the class margin and ``s`` the objective's sign: its
    gradient ascent drives every sample towards the boundary (foolbox's FMN loss)."""

    def loss_fn(inputs: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        logits = model(inputs)
        return -(objective.sign * class_margin(logits, objective.classes)).sum(), logits

    return loss_fn


def l1_ball_projection(w: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
    """The Euclidean projection of ``w`` onto ``{v : ||v||_1 <= eps}`` (no box): the soft
    threshold ``sign(w) (|w| - lam)_+`` (Duchi et al., ICML 2008), ``lam`` from
    :func:`~car_attacks.core.projection.l1_threshold` with room ``|w_i|`` (no bound)."""
    size = flatten_batch(w).abs()
    inside = size.sum(axis=1) <= eps
    lam = ep.where(inside.reshape((-1, 1)), 0.0, l1_threshold(size, size, eps))
    return (flatten_batch(w).sign() * ep.maximum(size - lam, 0.0)).reshape(w.shape)


class ClippingAwareFMN(ClippingAwareMinimizationAttack):
    """Fast Minimum-Norm attack with a clipping-aware step and the exact ball ∩ box
    projection; concrete classes set ``norm`` and :meth:`mid_points`.

    Args:
        steps: Number of iterations.
        max_stepsize: Initial step size ``alpha_0`` (L2 length of the step).
        min_stepsize: Final step size (cosine annealing); default ``max_stepsize / 100``.
        gamma: Initial relative update of ``eps_k``, annealed to 0.001.
        init_attack: Optional attack that finds adversarial starting points.
        binary_search_steps: Steps of the search from a starting point towards the input.
        rescaling: ``"car"`` (exact, default), ``"bisection"`` or ``"naive"`` (foolbox).
        seed: Accepted for a common interface; FMN draws nothing at random.
    """

    step_p: ClassVar[float] = STEP_P

    def __init__(
        self,
        *,
        steps: int = 100,
        max_stepsize: float = 1.0,
        min_stepsize: float | None = None,
        gamma: float = 0.05,
        init_attack: MinimizationAttack | None = None,
        binary_search_steps: int = 10,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(steps=steps, gamma=gamma, rescaling=rescaling, seed=seed)
        if not max_stepsize > 0:
            raise ValueError(f"max_stepsize must be > 0, got max_stepsize={max_stepsize!r}")
        if min_stepsize is None:
            min_stepsize = max_stepsize * MIN_STEPSIZE_FRACTION
        if not 0 <= min_stepsize <= max_stepsize:
            raise ValueError(
                f"min_stepsize must be in [0, max_stepsize], got min_stepsize={min_stepsize!r}"
            )
        if init_attack is not None and not isinstance(init_attack, MinimizationAttack):
            raise ValueError(
                f"init_attack must be a foolbox MinimizationAttack, got init_attack={init_attack!r}"
            )
        if (
            isinstance(binary_search_steps, bool)
            or not isinstance(binary_search_steps, int)
            or binary_search_steps < 0
        ):
            raise ValueError(
                "binary_search_steps must be an int >= 0, "
                f"got binary_search_steps={binary_search_steps!r}"
            )
        self.max_stepsize = max_stepsize
        self.min_stepsize = min_stepsize
        self.init_attack = init_attack
        self.binary_search_steps = binary_search_steps

    def mid_points(self, x0: ep.Tensor, x1: ep.Tensor, t: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """The point of parameter ``t`` (N,) in [0, 1] from ``x0`` (0) to ``x1`` (1)."""
        raise NotImplementedError

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Any,
        *,
        starting_points: T | None = None,
        early_stop: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Each sample's closest adversarial found (its start if none is found)."""
        call, objective = self.checked_call(model, inputs, criterion, kwargs)
        start = self.starting_point(model, call, starting_points)
        return call.restore_type(self.minimize(model, call, objective, start))

    def starting_point(self, model: Model, call: AttackCall, starting_points: Any) -> ep.Tensor:
        """The input itself, or the closest point to it that the binary search between
        the input and an adversarial start (given, or from ``init_attack``) finds."""
        assert call.criterion is not None
        if starting_points is not None:
            x1 = ep.astensor(starting_points)
            source = "starting_points"
        elif self.init_attack is not None:
            x1 = ep.astensor(self.init_attack.run(model, call.x, call.criterion))
            source = "init_attack"
        else:
            return call.x
        if tuple(x1.shape) != tuple(call.x.shape):
            raise ValueError(
                f"{source} must have the shape of the inputs {tuple(call.x.shape)}, "
                f"got {tuple(x1.shape)}"
            )
        is_adversarial = get_is_adversarial(call.criterion, model)
        if not is_adversarial(x1).all().item():
            raise ValueError(f"{source} must all be adversarial")
        lower, upper = ep.zeros(call.x, len(call.x)), ep.ones(call.x, len(call.x))
        for _ in range(self.binary_search_steps):
            middle = (lower + upper) / 2
            is_adv = is_adversarial(self.mid_points(call.x, x1, middle, call.bounds))
            lower = ep.where(is_adv, lower, middle)
            upper = ep.where(is_adv, middle, upper)
        return self.mid_points(call.x, x1, upper, call.bounds)

    def step(self, x: ep.Tensor, gradient: ep.Tensor, size: float, bounds: Bounds) -> ep.Tensor:
        """``x + eta g`` with an L2 step of ``size``: clipped and exact (car, bisection), or
        ``size g / ||g||_2`` unclipped (naive, as foolbox)."""
        steps = RescaledSteps(p=self.step_p, bounds=bounds, rescaling=self.rescaling)
        alpha = ep.full(x, (len(x),), size)
        if self.rescaling == "naive":
            return x + batch_view(steps.eta(x, gradient, alpha), x.ndim) * gradient
        return steps.clipped_step(x, gradient, alpha)

    def minimize(
        self, model: Model, call: AttackCall, objective: Objective, start: ep.Tensor
    ) -> ep.Tensor:
        """The FMN iterations from ``start``; each sample's closest adversarial iterate."""
        x0, bounds, criterion = call.x, call.bounds, call.criterion
        assert criterion is not None
        worst = worst_case_norms(x0, bounds, self.p)
        loss_fn = margin_loss(model, objective)
        dual = dual_exponent(self.p)
        best = BestAdversarial.starting_at(start, worst)
        eps = ep.full(x0, (len(x0),), math.inf)
        x = start
        for i in range(self.steps):
            stepsize = cosine_annealing(self.max_stepsize, self.min_stepsize, i, self.steps)
            gamma = cosine_annealing(self.gamma, FINAL_GAMMA, i, self.steps)
            _, logits, gradient = loss_logits_and_grad(loss_fn, x)
            is_adv = criterion(x, logits)
            norms = lp_norms(x - x0, self.p)
            best.update(x, norms, is_adv)
            margin = (objective.sign * class_margin(logits, objective.classes)).abs()
            slope = lp_norms(gradient, dual)
            to_boundary = ep.where(slope > 0, margin / nonzero_or_one(slope), math.inf)
            eps = ep.where(
                is_adv,
                ep.minimum(eps * (1 - gamma), best.norm),
                ep.where(best.found, eps * (1 + gamma), norms + to_boundary),
            )
            eps = ep.minimum(eps, worst)
            x = self.project(x0, self.step(x, gradient, stepsize, bounds), eps, bounds)
        return best.x

    def project(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Onto ball ∩ box (exact), or onto the ball then clipped (naive)."""
        return self.rescaled(bounds).project(x0, z, eps)


class L1ClippingAwareFMN(ClippingAwareFMN):
    """L1 FMN (Pintor et al. 2021) with a clipping-aware step and the exact L1-ball ∩ box
    projection."""

    norm = L1

    def project(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Exact L1-ball ∩ box projection, or (naive) foolbox's Euclidean projection onto
        the L1 ball (Duchi et al. 2008) then clipped."""
        if self.rescaling != "naive":
            return super().project(x0, z, eps, bounds)
        return clip_to_bounds(x0 + l1_ball_projection(z - x0, eps), *bounds)

    def mid_points(self, x0: ep.Tensor, x1: ep.Tensor, t: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Coordinates moving more than ``(hi - lo)(1 - t)`` keep the excess (foolbox)."""
        lo, hi = bounds
        threshold = (hi - lo) * (1 - batch_view(t, x0.ndim))
        d = x1 - x0
        return ep.where(d.abs() > threshold, x0 + d.sign() * (d.abs() - threshold), x0)


class L2ClippingAwareFMN(ClippingAwareFMN):
    """L2 FMN (Pintor et al. 2021) with a clipping-aware step and the exact L2-ball ∩ box
    projection."""

    norm = L2

    def mid_points(self, x0: ep.Tensor, x1: ep.Tensor, t: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``(1 - t) x0 + t x1``."""
        t_ = batch_view(t, x0.ndim)
        return t_ * x1 + (1 - t_) * x0


class LinfClippingAwareFMN(ClippingAwareFMN):
    """L-inf FMN (Pintor et al. 2021) with a clipping-aware step."""

    norm = LINF

    def mid_points(self, x0: ep.Tensor, x1: ep.Tensor, t: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``x1 - x0`` clamped to ``±t (hi - lo)`` around ``x0``."""
        lo, hi = bounds
        e = batch_view(t, x0.ndim) * (hi - lo)
        return x0 + ep.minimum(ep.maximum(x1 - x0, -e), e)
