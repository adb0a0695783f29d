"""The frame every attack family shares.

* :class:`ClippingAwareAttack`: a :class:`~car_attacks.attacks.norms.Norm`, the rescaling
  choice and the seed, each checked once (``p`` and ``distance`` come from the norm);
* :class:`AttackCall`: one call's checked inputs (:meth:`AttackCall.checked` is the one
  run preamble);
* :class:`ClippingAwareFixedEpsilonAttack`: the fixed-epsilon frame (gradient and noise
  families), whose hook is ``perturbed_batch``;
* :class:`DecisionBasedAttack`: the minimization frame (Boundary Attack, HopSkipJump),
  its adversarial starting points, and its hook ``minimize``;
* :class:`FirstSuccess`: each sample's first adversarial candidate, the update every
  family that tries several candidates uses.

A new family subclasses a frame and overrides a few hooks; a public class sets its norm.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
from foolbox.attacks.base import (
    Criterion,
    FixedEpsilonAttack,
    MinimizationAttack,
    T,
    get_criterion,
    get_is_adversarial,
    raise_if_kwargs,
    verify_input_bounds,
)
from foolbox.attacks.blended_noise import LinearSearchBlendedUniformNoiseAttack
from foolbox.distances import LpDistance
from foolbox.models import Model

from ..core.tensors import Bounds
from .first_success import FirstSuccess
from .norms import Norm
from .rescaled_steps import RESCALINGS, RescaledSteps, Rescaling, check_rescaling
from .starting_points import IsAdversarial, blended_noise_init

__all__ = [
    "RESCALINGS",
    "AttackCall",
    "Bounds",
    "ClippingAwareAttack",
    "ClippingAwareFixedEpsilonAttack",
    "DecisionBasedAttack",
    "FirstSuccess",
    "IsAdversarial",
    "Rescaling",
    "check_epsilon",
    "check_rescaling",
    "check_seed",
    "model_bounds",
]


def model_bounds(model: Model) -> tuple[float, float]:
    """A foolbox model's input bounds as two floats (the box every attack clips to)."""
    lo, hi = model.bounds
    return float(lo), float(hi)


def check_seed(seed: int | None) -> int | None:
    """``seed`` if it is None or an int >= 0, else a ValueError naming it."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got seed={seed!r}")
    return seed


def check_epsilon(epsilon: float) -> float:
    """``epsilon`` unchanged if it is >= 0 (inf included), else a ValueError naming it."""
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got epsilon={epsilon!r}")
    return epsilon


class ClippingAwareAttack(ABC):
    """A norm, the rescaling choice and the seed, checked once for every family.

    Args:
        rescaling: ``"car"`` (exact, default), ``"bisection"`` or ``"naive"``.
        seed: ``None`` draws from the backend's global generator (as foolbox); an int
            >= 0 gives every sample its own random streams (batch-independent results).
    """

    def __init__(self, *, rescaling: Rescaling = "car", seed: int | None = None) -> None:
        self.rescaling: Rescaling = check_rescaling(rescaling)
        self.seed = check_seed(seed)

    @property
    @abstractmethod
    def norm(self) -> Norm:
        """The norm perturbations are measured in (a class attribute ``norm = L2``)."""

    @property
    def p(self) -> float:
        """The order of the norm."""
        return self.norm.p

    @property
    def distance(self) -> LpDistance:
        return self.norm.distance

    def rescaled(self, bounds: Bounds) -> RescaledSteps:
        """Steps and projections in this attack's norm and rescaling, inside ``bounds``."""
        return RescaledSteps(p=self.p, bounds=bounds, rescaling=self.rescaling)


@dataclass(frozen=True)
class AttackCall:
    """One call's checked inputs: the batch, how to give it back in the caller's type,
    the criterion (None when none was given) and the model's box."""

    x: ep.Tensor
    restore_type: Callable[[ep.Tensor], Any]
    criterion: Criterion | None
    bounds: Bounds

    @classmethod
    def checked(
        cls, model: Model, inputs: Any, criterion: Any, kwargs: dict[str, Any]
    ) -> AttackCall:
        """The run preamble of every attack: no unknown keywords, the criterion from labels
        or a criterion, inputs inside the model's bounds."""
        raise_if_kwargs(kwargs)
        x, restore_type = ep.astensor_(inputs)
        verify_input_bounds(x, model)
        criterion_ = None if criterion is None else get_criterion(criterion)
        return cls(x, restore_type, criterion_, model_bounds(model))


class ClippingAwareFixedEpsilonAttack(ClippingAwareAttack, FixedEpsilonAttack):
    """The fixed-epsilon frame (foolbox's call contract): ``run`` checks the call and
    ``epsilon`` (>= 0, inf included) and hands them to :meth:`perturbed_batch`."""

    def run(
        self, model: Model, inputs: T, criterion: Any = None, *, epsilon: float, **kwargs: Any
    ) -> T:
        call = AttackCall.checked(model, inputs, criterion, kwargs)
        return call.restore_type(self.perturbed_batch(model, call, check_epsilon(epsilon)))

    @abstractmethod
    def perturbed_batch(self, model: Model, call: AttackCall, epsilon: float) -> ep.Tensor:
        """The attack's result for ``call.x`` within ``epsilon`` (the family's hook)."""


class DecisionBasedAttack(ClippingAwareAttack, MinimizationAttack):
    """The minimization frame of the decision-based attacks: the rescaling choice, the seed
    and the adversarial starting points.

    Args:
        init_attack: Attack that finds starting points when ``starting_points`` is not
            passed to the call (default: blended uniform noise, as in foolbox).
    """

    def __init__(
        self,
        *,
        init_attack: MinimizationAttack | None,
        rescaling: Rescaling,
        seed: int | None,
    ) -> None:
        if init_attack is not None and not isinstance(init_attack, MinimizationAttack):
            raise ValueError(
                f"init_attack must be a foolbox MinimizationAttack, got init_attack={init_attack!r}"
            )
        super().__init__(rescaling=rescaling, seed=seed)
        self.init_attack = init_attack

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Criterion | T,
        *,
        early_stop: float | None = None,
        starting_points: T | None = None,
        **kwargs: Any,
    ) -> T:
        """Minimise the distance to ``inputs`` among adversarials; returns the best found."""
        call = AttackCall.checked(model, inputs, criterion, kwargs)
        if call.criterion is None:
            raise ValueError("a decision-based attack needs labels or a criterion, got None")
        is_adversarial = get_is_adversarial(call.criterion, model)
        starts = self.initialize(
            model,
            call.x,
            call.criterion,
            is_adversarial,
            early_stop=early_stop,
            starting_points=starting_points,
        )
        return call.restore_type(self.minimize(call, is_adversarial, starts))

    @abstractmethod
    def minimize(
        self, call: AttackCall, is_adversarial: IsAdversarial, starts: ep.Tensor
    ) -> ep.Tensor:
        """Adversarials close to ``call.x``, from the adversarial ``starts`` (the hook)."""

    def initialize(
        self,
        model: Model,
        originals: ep.Tensor,
        criterion: Criterion,
        is_adversarial: IsAdversarial,
        *,
        early_stop: float | None,
        starting_points: Any,
    ) -> ep.Tensor:
        """Adversarial starting points: ``starting_points`` if given, else ``init_attack``,
        else foolbox's ``LinearSearchBlendedUniformNoiseAttack(steps=50)`` (``seed=None``) or
        its per-sample seeded equivalent. Raises ValueError if any is not adversarial."""
        if starting_points is not None:
            advs = ep.astensor(starting_points)
            source = "starting_points"
        elif self.init_attack is not None or self.seed is None:
            init = self.init_attack or LinearSearchBlendedUniformNoiseAttack(steps=50)
            if self.init_attack is None:
                logging.info(
                    f"Neither starting_points nor init_attack given; initialising with {init!r}."
                )
            advs = ep.astensor(init.run(model, originals, criterion, early_stop=early_stop))
            source = "init_attack"
        else:
            advs = blended_noise_init(
                is_adversarial, originals, model_bounds(model), seed=self.seed
            )
            source = "the seeded blended-noise initialisation"
        if tuple(advs.shape) != tuple(originals.shape):
            raise ValueError(
                f"{source} must have the shape of the inputs {tuple(originals.shape)}, "
                f"got {tuple(advs.shape)}"
            )
        is_adv = is_adversarial(advs)
        if not is_adv.all().item():
            failed = int(is_adv.logical_not().astype(originals.dtype).sum().item())
            raise ValueError(f"{source}: {failed} of {len(is_adv)} inputs are not adversarial")
        return advs
