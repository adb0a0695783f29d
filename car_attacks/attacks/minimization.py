"""The frame of the gradient-based minimum-norm attacks (FMN, DDN).

* :class:`Objective`: which classes a criterion pushes away from (or towards);
* :class:`BestAdversarial`: per sample the smallest adversarial perturbation seen so far
  (every iterate is a candidate, not only the last);
* :func:`cosine_annealing`: the step-size schedule both attacks share;
* :class:`ClippingAwareMinimizationAttack`: the foolbox ``MinimizationAttack`` with our norm,
  rescaling and seed, the step count and ``gamma`` checked once.

``attack(fmodel, x, criterion, epsilons=None)`` returns the best adversarial found per
sample; with ``epsilons`` foolbox's ``MinimizationAttack.__call__`` shrinks it onto each
``eps`` and reports success there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
from foolbox.attacks.base import Criterion, MinimizationAttack
from foolbox.criteria import Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.tensors import Bounds, batch_view, lp_norms
from .base import AttackCall, ClippingAwareAttack, Rescaling

__all__ = [
    "BestAdversarial",
    "ClippingAwareMinimizationAttack",
    "Objective",
    "cosine_annealing",
    "worst_case_norms",
]


def cosine_annealing(start: float, end: float, step: int, steps: int) -> float:
    """``end + (start - end) (1 + cos(pi step / steps)) / 2``: ``start`` at step 0,
    ``end`` at ``steps`` (the schedule of Pintor et al. 2021 and Rony et al. 2019)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def worst_case_norms(x0: ep.Tensor, bounds: Bounds, p: float) -> ep.Tensor:
    """``|| max(x0 - lo, hi - x0) ||_p`` (N,): no point of the box is farther from ``x0``."""
    lo, hi = bounds
    return lp_norms(ep.maximum(x0 - lo, hi - x0), p)


@dataclass(frozen=True)
class Objective:
    """The classes of a criterion and whether the attack moves towards them (targeted)."""

    classes: ep.Tensor
    targeted: bool

    @classmethod
    def of(cls, criterion: Criterion, n: int) -> Objective:
        """The objective of a (targeted) misclassification criterion for ``n`` inputs."""
        if isinstance(criterion, Misclassification):
            objective = cls(criterion.labels, targeted=False)
        elif isinstance(criterion, TargetedMisclassification):
            objective = cls(criterion.target_classes, targeted=True)
        else:
            raise ValueError(
                "criterion must be labels, Misclassification or TargetedMisclassification, "
                f"got criterion={criterion!r}"
            )
        if tuple(objective.classes.shape) != (n,):
            name = "target_classes" if objective.targeted else "labels"
            raise ValueError(f"{name} must have shape ({n},), got {tuple(objective.classes.shape)}")
        return objective

    @property
    def sign(self) -> float:
        """+1 untargeted (ascend the loss of the label), -1 targeted (descend towards it)."""
        return -1.0 if self.targeted else 1.0


@dataclass
class BestAdversarial:
    """Per sample the adversarial point closest to the original seen so far (``x`` where
    ``found``, at distance ``norm``); ``norm`` starts at the worst case, ``x`` at the start."""

    x: ep.Tensor
    norm: ep.Tensor
    found: ep.Tensor

    @classmethod
    def starting_at(cls, x: ep.Tensor, worst: ep.Tensor) -> BestAdversarial:
        return cls(x, worst, ep.zeros(x, len(x)).bool())

    def update(self, x: ep.Tensor, norms: ep.Tensor, is_adv: ep.Tensor) -> None:
        """Take ``x`` (at distance ``norms``) where it is adversarial and no farther than
        the best so far."""
        better = ep.logical_and(is_adv, norms <= self.norm)
        self.found = ep.logical_or(self.found, is_adv)
        self.norm = ep.where(better, norms, self.norm)
        self.x = ep.where(batch_view(better, x.ndim), x, self.x)


class ClippingAwareMinimizationAttack(ClippingAwareAttack, MinimizationAttack):
    """A gradient-based minimum-norm attack: ``steps`` iterations, norm update ``gamma``.

    Args:
        steps: Number of iterations (>= 1).
        gamma: Relative change of the norm constraint per step, in (0, 1).
        rescaling: ``"car"`` (exact, default), ``"bisection"`` or ``"naive"`` (foolbox).
        seed: ``None`` draws from the backend's global generator (as foolbox); an int gives
            every sample its own stream (batch-independent results).
    """

    def __init__(self, *, steps: int, gamma: float, rescaling: Rescaling, seed: int | None) -> None:
        super().__init__(rescaling=rescaling, seed=seed)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got steps={steps!r}")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got gamma={gamma!r}")
        self.steps = steps
        self.gamma = gamma

    @staticmethod
    def checked_call(
        model: Model, inputs: Any, criterion: Any, kwargs: dict[str, Any]
    ) -> tuple[AttackCall, Objective]:
        """The run preamble (:meth:`AttackCall.checked`) and the criterion's objective."""
        call = AttackCall.checked(model, inputs, criterion, kwargs)
        if call.criterion is None:
            raise ValueError("a minimization attack needs labels or a criterion, got None")
        return call, Objective.of(call.criterion, len(call.x))
