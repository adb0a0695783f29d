"""Clipping-aware Auto-PGD (APGD, APGD-T) for L1, L2 and L-inf.

One iteration (Croce & Hein, ICML 2020, eq. 2):
``z = P(x_k + eta_k d_k)``, ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))``
with ``alpha = 0.75`` (1 at the first step), ``d_k`` the steepest-ascent direction of the
loss, ``eta_k`` from :mod:`~car_attacks.attacks.apgd_schedule` (initially ``2 eps``; ``eps``
for L1) and ``P`` the projection onto ball ∩ box. Each sample keeps its best-loss point
(restarts go there) and its first adversarial iterate (the result).

``rescaling="car"``: the step ``clip(x_k + eta d)`` moves ``x_k`` by exactly ``eta_k``
(clipping-aware rescaling) and ``P`` is the exact projection onto ball ∩ box;
``"bisection"``: the same with the iterative solver; ``"naive"``: pyautoattack's arithmetic
(``x_k + eta_k d / ||d||``, shrink onto the ball, clip).

L1 ("Mind the box", Croce & Hein, ICML 2021): ``d`` is the gradient's sign on the top-k
coordinates that can still move towards the box, ``k`` adapted over the run.
APGD-T (``loss="dlr-targeted"``): one round per target, the ``n_target_classes`` classes
with the largest clean logits after the top one, on the targeted DLR loss.

A foolbox ``TargetedMisclassification(target_classes)`` criterion makes every loss targeted
towards the given class ``t`` (one round, no loop over classes), and success means
"classified as ``t``": ``"ce"`` ascends ``-CE(z, t)`` (pyautoattack's ``ce-targeted``);
``"dlr"`` and ``"dlr-targeted"`` ascend the targeted DLR
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (Croce & Hein, 2020, eq. 4) with ``y`` the
model's clean prediction (the criterion carries no labels; on the correctly classified
points AutoAttack attacks, it is the label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypedDict

import eagerpy as ep
import numpy as np
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.tensors import batch_view, flatten_batch, lp_norms, room_along
from .apgd_schedule import HalvingSchedule, SparsitySchedule, StepSchedule
from .base import AttackCall, Bounds, ClippingAwareFixedEpsilonAttack, Rescaling
from .first_success import FirstSuccess
from .losses import (
    PerSampleLoss,
    dlr_loss,
    loss_logits_and_grad,
    summed_loss,
    targeted_dlr_loss,
)
from .minimization import Objective
from .norms import L1, L2, LINF
from .sampling import draw

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "APGD_LOSSES",
    "APGDLoss",
    "APGDOptions",
    "APGDRun",
    "ClippingAwareAPGD",
    "L1ClippingAwareAPGD",
    "L2ClippingAwareAPGD",
    "LinfClippingAwareAPGD",
    "top_k_sign",
]

APGDLoss = Literal["ce", "dlr", "dlr-targeted"]
APGD_LOSSES: tuple[APGDLoss, ...] = ("ce", "dlr", "dlr-targeted")


class APGDOptions(TypedDict, total=False):
    """The keyword arguments of :class:`ClippingAwareAPGD` (for subclasses that add some)."""

    steps: int
    restarts: int
    loss: APGDLoss
    n_target_classes: int
    rho: float
    random_start: bool
    rescaling: Rescaling
    seed: int | None


MOMENTUM = 0.75
"""``alpha``: the weight of the new step against the previous move (paper, Sec. 3.1)."""


def top_k_sign(gradient: ep.Tensor, x: ep.Tensor, bounds: Bounds, fraction: ep.Tensor) -> ep.Tensor:
    """``sign(g_i)`` on each sample's ``k = max(1, round(fraction d))`` largest ``|g_i|``
    among coordinates that can still move that way (room to the box > 0), 0 elsewhere."""
    lo, hi = bounds
    g = flatten_batch(gradient)
    movable = flatten_batch(room_along(x, gradient, lo, hi)) > 0
    score = ep.where(movable, g.abs(), 0.0)
    dim = g.shape[1]
    k = np.clip(np.rint(fraction.numpy() * dim), 1, dim).astype(np.int64)
    ranked = -((-score).sort(axis=1))
    kth = ranked.take_along_axis(ep.from_numpy(g, (k - 1).reshape((-1, 1))), axis=1)
    chosen = ep.logical_and(score >= kth, score > 0)
    return ep.where(chosen, g.sign(), 0.0).reshape(gradient.shape)


@dataclass
class APGDRun:
    """One run's per-sample results: the best-loss point and loss, the first adversarial."""

    best: ep.Tensor
    best_loss: ep.Tensor
    first: FirstSuccess


class ClippingAwareAPGD(ClippingAwareFixedEpsilonAttack):
    """APGD / APGD-T (Croce & Hein, ICML 2020) with clipping-aware steps and exact
    projections; subclasses set ``norm``.

    Args:
        steps: Iterations per run (``N``).
        restarts: Runs per target; a run attacks only the samples not yet fooled.
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"`` (APGD-T); with a
            ``TargetedMisclassification`` criterion each is targeted towards the given class
            (see the module docstring).
        n_target_classes: APGD-T's number of target classes (rounds) for labels or a
            ``Misclassification`` criterion (a targeted criterion gives one round).
        rho: Condition 1's threshold of the step-size schedule.
        random_start: Start each run from a random point of the ball (else from the input).
        rescaling: ``"car"`` (exact), ``"bisection"`` or ``"naive"`` (pyautoattack's).
        seed: ``None`` draws from the backend's global RNG; an int gives every sample its
            own streams (batch-independent results).
    """

    initial_step: ClassVar[float] = 2.0
    momentum: ClassVar[float] = MOMENTUM
    clip_step: ClassVar[bool] = True

    def __init__(
        self,
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: APGDLoss = "ce",
        n_target_classes: int = 9,
        rho: float = 0.75,
        random_start: bool = True,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(rescaling=rescaling, seed=seed)
        for name, value in (("steps", steps), ("restarts", restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        if loss not in APGD_LOSSES:
            raise ValueError(f"loss must be one of {APGD_LOSSES}, got loss={loss!r}")
        if (
            isinstance(n_target_classes, bool)
            or not isinstance(n_target_classes, int)
            or n_target_classes < 1
        ):
            raise ValueError(f"n_target_classes must be an int >= 1, got {n_target_classes!r}")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got rho={rho!r}")
        self.steps = steps
        self.restarts = restarts
        self.loss: APGDLoss = loss
        self.n_target_classes = n_target_classes
        self.rho = float(rho)
        self.random_start = bool(random_start)

    # -- per-norm parts a subclass may override ---------------------------------------------

    def start_point(self, x0: ep.Tensor, eps: ep.Tensor, bounds: Bounds, stream: int) -> ep.Tensor:
        """A random start in ball ∩ box: a ball sample, clipped clipping-aware (naive: clipped)."""
        r = (
            self.norm.ball_sample(x0, eps, seed=None)
            if self.seed is None
            else self._seeded(x0, eps, stream)
        )
        return self.rescaled(bounds).clipped_step(x0, r, lp_norms(r, self.p))

    def _seeded(self, x0: ep.Tensor, eps: ep.Tensor, stream: int) -> ep.Tensor:
        """The seeded ball sample of run ``stream`` (L-inf: uniform in the cube)."""
        return draw(x0, "uniform", seed=self.seed, stream=stream) * batch_view(eps, x0.ndim)

    def schedule(self, eps: ep.Tensor, best_loss: ep.Tensor, dim: int) -> StepSchedule:
        return HalvingSchedule.start(
            self.initial_step * eps, best_loss, steps=self.steps, rho=self.rho
        )

    def direction(
        self, gradient: ep.Tensor, x: ep.Tensor, bounds: Bounds, schedule: StepSchedule
    ) -> ep.Tensor:
        """The steepest-ascent direction in this norm (any scale: the step rescales it)."""
        return self.norm.direction(gradient, x=x, bounds=bounds)

    def project(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """Onto ball ∩ box: exact (car, bisection) or shrink-then-clip (naive)."""
        return self.rescaled(bounds).project(x0, z, eps)

    # -- the iteration -----------------------------------------------------------------------

    def step(self, x: ep.Tensor, d: ep.Tensor, size: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``x + eta d`` with ``||clip(x + eta d) - x||_p = size`` (car), clipped unless
        ``clip_step`` is False (then the projection clips); naive: ``x + size d / ||d||_p``,
        unclipped (the projection clips)."""
        steps = self.rescaled(bounds)
        if self.rescaling == "naive" or not self.clip_step:
            return x + batch_view(steps.eta(x, d, size), x.ndim) * d
        return steps.clipped_step(x, d, size)

    def single_run(
        self,
        model: Model,
        x0: ep.Tensor,
        labels: ep.Tensor,
        per_sample: PerSampleLoss,
        eps: ep.Tensor,
        start: ep.Tensor,
        bounds: Bounds,
        *,
        targeted: bool = False,
    ) -> APGDRun:
        """``steps`` APGD iterations from ``start``: each sample's best-loss point and its
        first adversarial iterate (an adversarial ``start`` counts). ``labels``: the classes
        to leave, or with ``targeted`` the classes to reach."""
        loss_fn = summed_loss(model, per_sample)
        is_adv = _criterion(labels, targeted=targeted)
        x = start
        _, logits, grad = loss_logits_and_grad(loss_fn, x)
        loss = per_sample(logits)
        run = APGDRun(best=x, best_loss=loss, first=FirstSuccess.starting_at(x))
        run.first.update(x, is_adv(x, logits))
        best_grad = grad
        schedule = self.schedule(eps, loss, flatten_batch(x0).shape[1])
        x_prev = x
        for i in range(self.steps):
            if run.first.all_found():
                break
            d = self.direction(grad, x, bounds, schedule)
            z = self.project(x0, self.step(x, d, schedule.step_size, bounds), eps, bounds)
            a = self.momentum if i > 0 else 1.0
            moved = x + (z - x) * a + (x - x_prev) * (1 - a)
            x_prev, x = x, self.project(x0, moved, eps, bounds)
            previous = loss
            _, logits, grad = loss_logits_and_grad(loss_fn, x)
            loss = per_sample(logits)
            run.first.update(x, is_adv(x, logits))
            better = batch_view(loss > run.best_loss, x.ndim)
            run.best = ep.where(better, x, run.best)
            best_grad = ep.where(better, grad, best_grad)
            run.best_loss = ep.maximum(loss, run.best_loss)
            restart = schedule.checkpoint(previous, loss, run.best_loss, run.best - x0)
            restart = batch_view(restart, x.ndim)
            x = ep.where(restart, run.best, x)
            grad = ep.where(restart, best_grad, grad)
        return run

    # -- the runs ----------------------------------------------------------------------------

    def perturbed_batch(self, model: Model, call: AttackCall, epsilon: float) -> ep.Tensor:
        """Rounds (one per target for untargeted APGD-T) of ``restarts`` runs on the samples
        not yet fooled; each sample's first adversarial iterate, else its input."""
        if call.criterion is None:
            raise ValueError(
                "APGD needs labels, Misclassification or TargetedMisclassification, got None"
            )
        objective = Objective.of(call.criterion, len(call.x))
        if not math.isfinite(epsilon):
            raise ValueError(f"epsilon must be finite for APGD, got epsilon={epsilon!r}")
        x0 = call.x
        clean_logits = model(x0)
        result = FirstSuccess.starting_at(x0, call.criterion(x0, clean_logits))
        if epsilon == 0:
            return x0
        targeted = objective.targeted
        rounds = self.n_target_classes if self.loss == "dlr-targeted" and not targeted else 1
        ranking = clean_logits.argsort(axis=-1)
        # the classes to leave: the labels, or (targeted) the clean predictions
        labels = ranking[:, -1] if targeted else objective.classes
        for target_round in range(rounds):
            for restart in range(self.restarts):
                todo = np.flatnonzero(np.logical_not(result.found.numpy()))
                if len(todo) == 0:
                    return result.best
                index = ep.from_numpy(labels, todo)
                x, y = x0[index], labels[index]
                eps = ep.full(x, (len(todo),), float(epsilon))
                targets = objective.classes[index] if targeted else None
                per_sample = self.per_sample_loss(y, ranking[index], target_round, targets=targets)
                stream = target_round * self.restarts + restart
                start = self.start_point(x, eps, call.bounds, stream) if self.random_start else x
                run = self.single_run(
                    model,
                    x,
                    y if targets is None else targets,
                    per_sample,
                    eps,
                    start,
                    call.bounds,
                    targeted=targeted,
                )
                found = ep.zeros(x0, len(x0)).bool()
                found = ep.index_update(found, index, run.first.found)
                best = ep.index_update(result.best, index, run.first.best)
                result.update(best, found)
        return result.best

    def per_sample_loss(
        self,
        labels: ep.Tensor,
        ranking: ep.Tensor,
        target_round: int,
        *,
        targets: ep.Tensor | None = None,
    ) -> PerSampleLoss:
        """The loss of round ``target_round``: CE, DLR, or targeted DLR towards each sample's
        ``(target_round + 2)``-th largest clean logit. With ``targets`` (a targeted criterion):
        ``-CE(z, t)`` for ``"ce"``, else the targeted DLR from ``labels`` towards ``t``."""
        if targets is not None:
            given = targets
            if self.loss == "ce":
                return lambda logits: -ep.crossentropy(logits, given)
            return lambda logits: targeted_dlr_loss(logits, labels, given)
        if self.loss == "ce":
            return lambda logits: ep.crossentropy(logits, labels)
        if self.loss == "dlr":
            return lambda logits: dlr_loss(logits, labels)
        if ranking.shape[-1] < self.n_target_classes + 1:
            raise ValueError(
                f"n_target_classes must be < the number of classes {ranking.shape[-1]}, "
                f"got n_target_classes={self.n_target_classes}"
            )
        round_targets = ranking[:, -(target_round + 2)]
        return lambda logits: targeted_dlr_loss(logits, labels, round_targets)


def _criterion(classes: ep.Tensor, *, targeted: bool) -> Criterion:
    """Success for ``classes``: leaving them, or (``targeted``) being classified as them."""
    return TargetedMisclassification(classes) if targeted else Misclassification(classes)


class L2ClippingAwareAPGD(ClippingAwareAPGD):
    """L2 APGD; random start on the sphere of radius eps (as pyautoattack), clipping-aware."""

    norm = L2

    def _seeded(self, x0: ep.Tensor, eps: ep.Tensor, stream: int) -> ep.Tensor:
        g = draw(x0, "normal", seed=self.seed, stream=stream)
        return g * batch_view(eps / lp_norms(g, 2.0), x0.ndim)

    def start_point(self, x0: ep.Tensor, eps: ep.Tensor, bounds: Bounds, stream: int) -> ep.Tensor:
        g = ep.normal(x0, x0.shape) if self.seed is None else self._seeded(x0, eps, stream)
        return self.rescaled(bounds).clipped_step(x0, g, eps)


class LinfClippingAwareAPGD(ClippingAwareAPGD):
    """L-inf APGD; random start uniform in the cube of radius eps."""

    norm = LINF


class L1ClippingAwareAPGD(ClippingAwareAPGD):
    """L1-APGD ("Mind the box", Croce & Hein, ICML 2021): sparse steps on the top-k movable
    coordinates, ``k`` and the step size adapted over the run, initial step ``eps``, no
    momentum (as the authors' code; with it, robust accuracy rose from 0.36 to 0.43 on
    ``fashion_mnist_cnn_pgd``, 100 images, eps 12, 20 steps). The car step's ``eta`` makes
    ``clip(x + eta d)`` move exactly the step size, but the exact L1-ball ∩ box projection
    takes the unclipped ``x + eta d``: coordinates that overshoot the box then survive its
    soft threshold (the sparse, saturated perturbations L1 attacks favour). Projecting the
    clipped step instead left 2-3 more images of 200 robust on ``fashion_mnist_bcop``
    (eps 8, 20 steps, 3 seeds: 0.465-0.48 against 0.445-0.45).

    Args (besides APGD's):
        initial_top_fraction: The first ``k / d`` (0.2 in the paper's code).
        reduction: Divisor of the step size and of ``L0 / d`` at checkpoints (1.5).
        min_step_fraction: The smallest step size as a fraction of ``eps`` (0.1).
    """

    norm = L1
    initial_step = 1.0
    momentum = 1.0  # the authors' L1-APGD takes the projected step without momentum
    clip_step = False  # P(x + eta d) of the unclipped step: see the class docstring

    def __init__(
        self,
        *,
        initial_top_fraction: float = 0.2,
        reduction: float = 1.5,
        min_step_fraction: float = 0.1,
        **options: Unpack[APGDOptions],
    ) -> None:
        super().__init__(**options)
        if not 0 < initial_top_fraction <= 1:
            raise ValueError(
                f"initial_top_fraction must be in (0, 1], got {initial_top_fraction!r}"
            )
        if not reduction > 1:
            raise ValueError(f"reduction must be > 1, got reduction={reduction!r}")
        if not 0 < min_step_fraction <= 1:
            raise ValueError(f"min_step_fraction must be in (0, 1], got {min_step_fraction!r}")
        self.initial_top_fraction = float(initial_top_fraction)
        self.reduction = float(reduction)
        self.min_step_fraction = float(min_step_fraction)

    def start_point(self, x0: ep.Tensor, eps: ep.Tensor, bounds: Bounds, stream: int) -> ep.Tensor:
        """``P(x0 + g)``, ``g`` standard normal (as pyautoattack's L1 APGD)."""
        g = (
            ep.normal(x0, x0.shape)
            if self.seed is None
            else draw(x0, "normal", seed=self.seed, stream=stream)
        )
        return self.project(x0, x0 + g, eps, bounds)

    def schedule(self, eps: ep.Tensor, best_loss: ep.Tensor, dim: int) -> SparsitySchedule:
        return SparsitySchedule.start(
            self.initial_step * eps,
            steps=self.steps,
            dim=dim,
            initial_fraction=self.initial_top_fraction,
            reduction=self.reduction,
            min_step_fraction=self.min_step_fraction,
        )

    def direction(
        self, gradient: ep.Tensor, x: ep.Tensor, bounds: Bounds, schedule: StepSchedule
    ) -> ep.Tensor:
        assert isinstance(schedule, SparsitySchedule) and schedule.top_fraction is not None
        return top_k_sign(gradient, x, bounds, schedule.top_fraction)

    def project(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """The exact L1-ball ∩ box projection for every rescaling (pyautoattack's too), timed
        as rescaling work."""
        return self.rescaled(bounds).project_exact(x0, z, eps)
