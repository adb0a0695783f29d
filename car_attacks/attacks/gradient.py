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

from typing import ClassVar

import eagerpy as ep
from foolbox.criteria import Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.tensors import batch_view, lp_norms
from .base import AttackCall, Bounds, ClippingAwareFixedEpsilonAttack, Rescaling
from .first_success import FirstSuccess
from .losses import LossFn, cross_entropy_loss, loss_logits_and_grad
from .norms import L1, L2, LINF, sparse_sign_direction

__all__ = ["Bounds", "ClippingAwareGradientAttack", "sparse_sign_direction"]


class ClippingAwareGradientAttack(ClippingAwareFixedEpsilonAttack):
    """Projected gradient ascent with clipping-aware steps and exact projections.

    Concrete attacks set ``norm`` and the defaults below. For L1 the direction is the sign
    of the gradient on its ``l1_top_fraction`` largest coordinates among those that can
    still move in the ascent direction (room to the box > 0), zero elsewhere -- the sparse
    L1 descent direction of Tramèr & Boneh (2019), masked like APGD-L1 (Croce & Hein 2021).
    The dense L1-normalised gradient that foolbox uses spreads the step over every pixel
    and barely moves any; ``scripts/bench_l1_direction.py`` measures the candidates side by
    side. Set ``l1_top_fraction=1.0`` for the dense sign.

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

    default_rel_stepsize: ClassVar[float]
    default_steps: ClassVar[int]
    default_random_start: ClassVar[bool]
    l1_top_fraction: float = 0.01

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
        super().__init__(rescaling=rescaling, seed=seed)
        self.rel_stepsize = self.default_rel_stepsize if rel_stepsize is None else rel_stepsize
        self.abs_stepsize = abs_stepsize
        self.steps = self.default_steps if steps is None else steps
        self.random_start = self.default_random_start if random_start is None else random_start
        self.keep_best = keep_best
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got steps={self.steps}")
        step = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize
        if not step > 0:
            raise ValueError(f"the step size must be > 0, got {step!r}")

    # -- the steps a subclass may override ------------------------------------------------

    def get_loss_fn(self, model: Model, labels: ep.Tensor) -> LossFn:
        """``inputs -> (scalar loss, logits)``; the summed cross-entropy by default."""
        return cross_entropy_loss(model, labels)

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Ascent direction from the loss gradient (any scale: the step rescales it)."""
        return self.norm.direction(gradient, x=x, bounds=bounds, sparsity=self.l1_top_fraction)

    def step(
        self, x: ep.Tensor, direction: ep.Tensor, size: ep.Tensor, bounds: Bounds
    ) -> ep.Tensor:
        """``clip(x + eta d)`` with ``||clip(x + eta d) - x||_p == size`` (per the rescaling).

        Naive: ``x + size d / ||d||_p`` unclipped, as foolbox steps before it projects and clips.
        """
        steps = self.rescaled(bounds)
        if self.rescaling == "naive":
            return x + batch_view(steps.eta(x, direction, size), x.ndim) * direction
        return steps.clipped_step(x, direction, size)

    def project(self, x: ep.Tensor, x0: ep.Tensor, epsilon: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Onto ``{v : ||v - x0||_p <= eps} ∩ box`` (exact, or project-then-clip when naive)."""
        return self.rescaled(bounds).project(x0, x, epsilon)

    def sample_start(self, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
        """A random perturbation from the Lp ball of radius ``epsilon`` (before clipping)."""
        return self.norm.ball_sample(x0, epsilon, seed=self.seed)

    def get_random_start(self, x0: ep.Tensor, epsilon: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``x0`` plus a ball sample; the clipped perturbation keeps the sample's norm
        (clipping-aware) unless the rescaling is naive (then: clip)."""
        r = self.sample_start(x0, epsilon)
        return self.rescaled(bounds).clipped_step(x0, r, lp_norms(r, self.p))

    # -- the loop ----------------------------------------------------------------------------

    def perturbed_batch(self, model: Model, call: AttackCall, epsilon: float) -> ep.Tensor:
        """The iterates of projected gradient ascent; each sample's first adversarial one
        (``keep_best``) or the last."""
        x0, bounds, criterion = call.x, call.bounds, call.criterion
        if isinstance(criterion, Misclassification):
            ascent_sign, classes = 1.0, criterion.labels
        elif isinstance(criterion, TargetedMisclassification):
            ascent_sign, classes = -1.0, criterion.target_classes
        else:
            raise ValueError(f"unsupported criterion {criterion!r}")
        n = len(x0)
        eps = ep.full(x0, (n,), float(epsilon))
        stepsize = ep.full(
            x0,
            (n,),
            self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * epsilon,
        )
        loss_fn = self.get_loss_fn(model, classes)

        x = self.get_random_start(x0, eps, bounds) if self.random_start else x0
        first = FirstSuccess.starting_at(x)
        for _ in range(self.steps):
            _, logits, gradient = loss_logits_and_grad(loss_fn, x)
            if self.keep_best:
                first.update(x, criterion(x, logits))
                if first.all_found():
                    return first.best
            d = self.direction(ascent_sign * gradient, x=x, bounds=bounds)
            x = self.project(self.step(x, d, stepsize, bounds), x0, eps, bounds)
        if not self.keep_best:
            return x
        first.update(x, criterion(x, model(x)))
        return first.or_else(x)


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


class _L1(ClippingAwareGradientAttack):
    norm = L1


class _L2(ClippingAwareGradientAttack):
    norm = L2


class _Linf(ClippingAwareGradientAttack):
    norm = LINF


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
