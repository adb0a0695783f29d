"""Clipping-aware gradient attacks: PGD, the basic iterative method and FGM for L1, L2, L-inf.

Each iteration of foolbox's gradient attacks is ``x <- clip(P(x + alpha d))``
with ``d`` the normalised gradient and ``P`` the shrink onto the Lp ball. Both
the clip and the project-then-clip lose perturbation: the step actually taken
is shorter than ``alpha`` and the projected point is not the closest one in
ball ∩ box. Here (``rescaling="car"``):

* step: ``x <- clip(x + eta d)`` with ``eta`` from clipping-aware rescaling, so
  ``||x_new - x||_p == alpha`` exactly (unless the sample saturates);
* projection: the exact projection onto ``{v : ||v - x0||_p <= eps} ∩ [lo, hi]``;
* random start: a random ball sample rescaled clipping-aware to its own norm.

``rescaling="bisection"`` uses the iterative baseline for the same scales and
``rescaling="naive"`` reproduces foolbox 3.3.4 (``keep_best=False`` makes it
step-for-step identical). The attacks keep the first adversarial iterate of
every sample (``keep_best=True``), not only the last one.

The steps are small methods a subclass can override: :meth:`get_loss_fn`,
:meth:`direction`, :meth:`step`, :meth:`project`, :meth:`sample_start`.

References: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018; Kurakin et al., "Adversarial examples in the
physical world", 2016; Tramèr & Boneh, "Adversarial Training and Robustness
for Multiple Perturbations", NeurIPS 2019 (sparse L1 descent); Rauber & Bethge,
arXiv:2007.07677, 2020 (clipping-aware rescaling).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import eagerpy as ep
from foolbox.attacks.base import (
    FixedEpsilonAttack,
    get_criterion,
    raise_if_kwargs,
    verify_input_bounds,
)
from foolbox.attacks.gradient_descent_base import uniform_l1_n_balls, uniform_l2_n_balls
from foolbox.criteria import Misclassification
from foolbox.distances import LpDistance
from foolbox.models import Model

from ..core.tensors import Bound, batch_view, flatten_batch, lp_norms, room_along
from .gradients import LossFn, cross_entropy_loss, loss_logits_and_grad
from .rescale import (
    Rescaling,
    check_rescaling,
    clipped_step,
    model_bounds,
    project,
    rescale_eta,
)
from .sampling import draw

Bounds = tuple[Bound, Bound]


class ClippingAwareGradientAttack(FixedEpsilonAttack):
    """Projected gradient ascent with clipping-aware steps and exact projections.

    Args:
        rel_stepsize: Step size relative to epsilon.
        abs_stepsize: Absolute step size; takes precedence over ``rel_stepsize``.
        steps: Number of gradient steps.
        random_start: Start from a random point of the ball ∩ box.
        rescaling: ``"car"`` (exact), ``"bisection"`` (iterative baseline) or ``"naive"``.
        keep_best: Return each sample's first adversarial iterate (else the last iterate).
        seed: ``None`` draws the random start from the backend's global RNG (as
            foolbox does); an int gives every sample its own stream, independent of
            the rest of the batch.
    """

    p: ClassVar[float]
    default_rel_stepsize: ClassVar[float]
    default_steps: ClassVar[int]
    default_random_start: ClassVar[bool]

    def __init__(
        self,
        *,
        rel_stepsize: float | None = None,
        abs_stepsize: float | None = None,
        steps: int | None = None,
        random_start: bool | None = None,
        rescaling: Rescaling = "car",
        keep_best: bool = True,
        seed: int | None = None,
    ) -> None:
        self.rel_stepsize = self.default_rel_stepsize if rel_stepsize is None else rel_stepsize
        self.abs_stepsize = abs_stepsize
        self.steps = self.default_steps if steps is None else steps
        self.random_start = self.default_random_start if random_start is None else random_start
        self.rescaling = check_rescaling(rescaling)
        self.keep_best = keep_best
        self.seed = seed
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got steps={self.steps}")
        step = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize
        if not step > 0:
            raise ValueError(f"the step size must be > 0, got {step!r}")

    @property
    def distance(self) -> LpDistance:
        return LpDistance(self.p)

    # -- the steps a subclass may override ------------------------------------------------

    def get_loss_fn(self, model: Model, labels: ep.Tensor) -> LossFn:
        """``inputs -> (scalar loss, logits)``; the summed cross-entropy by default."""
        return cross_entropy_loss(model, labels)

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Ascent direction from the loss gradient (any scale: the step rescales it)."""
        raise NotImplementedError

    def step(
        self, x: ep.Tensor, direction: ep.Tensor, size: ep.Tensor, bounds: Bounds
    ) -> ep.Tensor:
        """``clip(x + eta d)`` with ``||clip(x + eta d) - x||_p == size`` (per the rescaling).

        Naive: ``x + size d / ||d||_p`` unclipped, as foolbox steps before it projects and clips.
        """
        if self.rescaling == "naive":
            eta = rescale_eta(x, direction, size, p=self.p, bounds=bounds, rescaling="naive")
            return x + batch_view(eta, x.ndim) * direction
        return clipped_step(x, direction, size, p=self.p, bounds=bounds, rescaling=self.rescaling)

    def project(self, x: ep.Tensor, x0: ep.Tensor, epsilon: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Onto ``{v : ||v - x0||_p <= eps} ∩ box`` (exact, or project-then-clip when naive)."""
        return project(x0, x, epsilon, p=self.p, bounds=bounds, rescaling=self.rescaling)

    def sample_start(self, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
        """A random perturbation from the Lp ball of radius ``epsilon`` (before clipping)."""
        raise NotImplementedError

    def get_random_start(self, x0: ep.Tensor, epsilon: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``x0`` plus a ball sample; the clipped perturbation keeps the sample's norm
        (clipping-aware) unless the rescaling is naive (then: clip)."""
        r = self.sample_start(x0, epsilon)
        return clipped_step(
            x0, r, lp_norms(r, self.p), p=self.p, bounds=bounds, rescaling=self.rescaling
        )

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        model: Model,
        inputs: Any,
        criterion: Any,
        *,
        epsilon: float,
        **kwargs: Any,
    ) -> Any:
        raise_if_kwargs(kwargs)
        x0, restore_type = ep.astensor_(inputs)
        criterion_ = get_criterion(criterion)
        del inputs, criterion, kwargs
        verify_input_bounds(x0, model)
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got epsilon={epsilon!r}")
        if isinstance(criterion_, Misclassification):
            ascent_sign, classes = 1.0, criterion_.labels
        elif hasattr(criterion_, "target_classes"):
            ascent_sign, classes = -1.0, criterion_.target_classes
        else:
            raise ValueError(f"unsupported criterion {criterion_!r}")
        bounds: Bounds = model_bounds(model)
        n = x0.shape[0]
        eps = ep.full(x0, (n,), float(epsilon))
        stepsize = ep.full(
            x0,
            (n,),
            self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * epsilon,
        )
        loss_fn = self.get_loss_fn(model, classes)

        x = self.get_random_start(x0, eps, bounds) if self.random_start else x0
        best, found = x, ep.zeros(x0, (n,)).bool()
        for _ in range(self.steps):
            _, logits, gradient = loss_logits_and_grad(loss_fn, x)
            if self.keep_best:
                best, found = _remember_first(best, found, x, criterion_(x, logits))
                if found.all().item():
                    return restore_type(best)
            d = self.direction(ascent_sign * gradient, x=x, bounds=bounds)
            x = self.project(self.step(x, d, stepsize, bounds), x0, eps, bounds)
        if not self.keep_best:
            return restore_type(x)
        best, found = _remember_first(best, found, x, criterion_(x, model(x)))
        return restore_type(ep.where(batch_view(found, x.ndim), best, x))


def _remember_first(
    best: ep.Tensor, found: ep.Tensor, x: ep.Tensor, is_adv: ep.Tensor
) -> tuple[ep.Tensor, ep.Tensor]:
    """Keep each sample's first adversarial iterate."""
    new = ep.logical_and(is_adv, ep.logical_not(found))
    return ep.where(batch_view(new, x.ndim), x, best), ep.logical_or(found, is_adv)


class _L1(ClippingAwareGradientAttack):
    """L1 attacks: sparse ascent direction, exact L1-ball ∩ box projection.

    Direction: the sign of the gradient on its ``l1_top_fraction`` largest
    coordinates among those that can still move in the ascent direction (room
    to the box > 0), zero elsewhere -- the sparse L1 descent direction of Tramèr
    & Boneh (2019), masked like APGD-L1 (Croce & Hein 2021). The dense
    L1-normalised gradient that foolbox uses spreads the step over every pixel
    and barely moves any; ``scripts/bench_l1_direction.py`` measures the
    candidates side by side. Set ``l1_top_fraction=1.0`` for the dense sign.
    """

    p = 1.0
    l1_top_fraction: float = 0.01

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        return sparse_sign_direction(gradient, x, bounds, self.l1_top_fraction)

    def sample_start(self, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
        n, dim = flatten_batch(x0).shape
        if self.seed is None:
            ball = uniform_l1_n_balls(x0, n, dim)
        else:  # exponential spacings: e_1..e_n / (e_1 + ... + e_{n+1}), random signs
            u = draw(x0, "uniform", seed=self.seed, shape=(n, dim + 1))
            spacings = -ep.log(ep.maximum((u + 1) / 2, 1e-12))
            signs = draw(x0, "uniform", seed=self.seed, stream=1, shape=(n, dim)).sign()
            ball = signs * spacings[:, :dim] / spacings.sum(axis=1, keepdims=True)
        return ball.reshape(x0.shape) * batch_view(epsilon, x0.ndim)


class _L2(ClippingAwareGradientAttack):
    """L2 attacks: the gradient direction, exact L2-ball ∩ box projection."""

    p = 2.0

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        return gradient

    def sample_start(self, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
        n, dim = flatten_batch(x0).shape
        if self.seed is None:
            ball = uniform_l2_n_balls(x0, n, dim)
        else:  # Voelker et al. (2017): the first n of n + 2 normal coordinates, normalised
            g = draw(x0, "normal", seed=self.seed, shape=(n, dim + 2))
            ball = (g / lp_norms(g, 2.0).reshape((-1, 1)))[:, :dim]
        return ball.reshape(x0.shape) * batch_view(epsilon, x0.ndim)


class _Linf(ClippingAwareGradientAttack):
    """L-inf attacks: the gradient sign, projection by clipping (exact for L-inf)."""

    p = math.inf

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        return gradient.sign()

    def sample_start(self, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
        return draw(x0, "uniform", seed=self.seed) * batch_view(epsilon, x0.ndim)


def sparse_sign_direction(
    gradient: ep.Tensor, x: ep.Tensor, bounds: Bounds, top_fraction: float
) -> ep.Tensor:
    """``sign(g_i)`` on the ``ceil(q n)`` largest ``|g_i|`` whose coordinate can still move
    in that direction (room to the box > 0), zero elsewhere."""
    lo, hi = bounds
    g = flatten_batch(gradient)
    movable = flatten_batch(room_along(x, gradient, lo, hi)) > 0
    score = ep.where(movable, g.abs(), 0.0)
    k = max(1, math.ceil(top_fraction * g.shape[1]))
    if k >= g.shape[1]:
        return ep.where(movable, g.sign(), 0.0).reshape(gradient.shape)
    kth = ep.topk(score, k)[0][:, -1:]
    chosen = ep.logical_and(score >= kth, score > 0)
    return ep.where(chosen, g.sign(), 0.0).reshape(gradient.shape)


# -- the public classes: defaults follow foolbox 3.3.4 -------------------------------------


class _PGD:
    default_rel_stepsize: ClassVar[float] = 0.025
    default_steps: ClassVar[int] = 50
    default_random_start: ClassVar[bool] = True


class _BIM:
    default_rel_stepsize: ClassVar[float] = 0.2
    default_steps: ClassVar[int] = 10
    default_random_start: ClassVar[bool] = False


class _FGM:
    default_rel_stepsize: ClassVar[float] = 1.0
    default_steps: ClassVar[int] = 1
    default_random_start: ClassVar[bool] = False


class L1ClippingAwarePGD(_PGD, _L1):
    """L1 projected gradient descent with clipping-aware steps and the exact projection."""


class L2ClippingAwarePGD(_PGD, _L2):
    """L2 projected gradient descent with clipping-aware steps and the exact projection."""


class LinfClippingAwarePGD(_PGD, _Linf):
    """L-inf projected gradient descent (Madry et al.) with clipping-aware steps."""

    default_rel_stepsize = 0.01 / 0.3
    default_steps = 40


class L1ClippingAwareBasicIterativeAttack(_BIM, _L1):
    """L1 basic iterative method with clipping-aware steps and the exact projection."""


class L2ClippingAwareBasicIterativeAttack(_BIM, _L2):
    """L2 basic iterative method with clipping-aware steps and the exact projection."""


class LinfClippingAwareBasicIterativeAttack(_BIM, _Linf):
    """L-inf basic iterative method (Kurakin et al.) with clipping-aware steps."""


class L1ClippingAwareFastGradientAttack(_FGM, _L1):
    """One clipping-aware L1 step of size epsilon."""


class L2ClippingAwareFastGradientAttack(_FGM, _L2):
    """One clipping-aware L2 step of size epsilon (FGM)."""


class LinfClippingAwareFastGradientAttack(_FGM, _Linf):
    """One clipping-aware L-inf step of size epsilon (FGSM)."""
