"""The one interface every evaluated method goes through: our attacks, foolbox's and
every peer library's.

A :class:`MethodAdapter` attacks one batch at a group of eps and returns a
:class:`MethodOutcome`: per eps the points the model sees (clipped to its bounds) and
per sample whether they are adversarial; minimization attacks also return the point they
found before it is shrunk to each eps. :class:`FoolboxMethod` adapts any foolbox-style
attack (ours and foolbox's, fixed-eps and minimization);
:mod:`car_attacks.evaluation.peers` adapts AutoAttack's APGD, APGD-T and AutoAttack, and
:mod:`car_attacks.evaluation.adv_lib_peers` adv-lib's attacks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from foolbox.attacks.base import Attack
from torch import Tensor, nn

from ..attacks.starting_points import batch_blend_starting_points as _blend_starting_points
from .inputs import ExperimentError
from .records import MethodRecord

__all__ = [
    "AttackTarget",
    "FoolboxMethod",
    "MethodAdapter",
    "MethodOutcome",
    "PreparedMethod",
    "batch_blend_starting_points",
]


@dataclass(frozen=True)
class AttackTarget:
    """The model under attack as the methods see it."""

    model: nn.Module
    """For checks that are not counted as queries."""
    counted: nn.Module
    """The same model, counting the rows of input it sees (what attacks call)."""
    fmodel: Any
    """``counted`` as a ``foolbox.PyTorchModel`` with ``bounds``."""
    bounds: tuple[float, float]


@dataclass(frozen=True)
class MethodOutcome:
    """What a method did to one batch at a group of eps."""

    clipped: list[Tensor]
    """Per eps: the points the model sees."""
    success: list[list[bool]]
    """Per eps and sample: is the clipped point adversarial?"""
    found: Tensor | None = None
    """Minimization attacks: the point found, before it is shrunk to each eps."""


class MethodAdapter(ABC):
    """An attack as the runner calls it."""

    kind: str
    """``fixed`` (attacks at each eps) or ``minimization`` (one run for the eps grid)."""

    @abstractmethod
    def run(
        self, target: AttackTarget, x: Tensor, y: Tensor, eps: tuple[float, ...], seed: int
    ) -> MethodOutcome:
        """Attack ``(x, y)`` at every eps of ``eps``; ``seed`` seeds the method's randomness
        where it takes a seed of its own."""


@dataclass(frozen=True)
class PreparedMethod:
    """A planned method and the attack that runs it (built once per run)."""

    record: MethodRecord
    adapter: MethodAdapter


def batch_blend_starting_points(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Starting points for minimization attacks from the batch itself (``init:
    batch_blend``, :func:`car_attacks.attacks.starting_points.batch_blend_starting_points`):
    every variant and peer of an attack starts from the same points. Raises
    ExperimentError if some image has no image of another predicted class in its batch."""
    try:
        return _blend_starting_points(model, x, y)
    except ValueError:
        raise ExperimentError(
            "init: batch_blend needs, for every image, another image in its batch that "
            "the model assigns to a different class; use a larger data.batch_size"
        ) from None


class FoolboxMethod(MethodAdapter):
    """A foolbox-style attack: ``attack(fmodel, x, Misclassification(y), epsilons=...)``.

    ``batch_blend``: a minimization attack started from :func:`batch_blend_starting_points`
    (computed with the counted model, so they count as queries)."""

    def __init__(self, *, attack: Attack, kind: str, batch_blend: bool = False) -> None:
        self.attack = attack
        self.kind = kind
        self.batch_blend = batch_blend

    def __repr__(self) -> str:
        return f"FoolboxMethod(attack={self.attack!r}, kind={self.kind!r})"

    def run(
        self, target: AttackTarget, x: Tensor, y: Tensor, eps: tuple[float, ...], seed: int
    ) -> MethodOutcome:
        from foolbox.criteria import Misclassification

        kwargs: dict[str, Any] = {}
        if self.batch_blend:
            kwargs["starting_points"] = batch_blend_starting_points(target.counted, x, y)
        raw, clipped, ok = self.attack(
            target.fmodel, x, Misclassification(y), epsilons=list(eps), **kwargs
        )
        return MethodOutcome(
            clipped=[torch.as_tensor(c) for c in clipped],
            success=[torch.as_tensor(ok[i]).bool().tolist() for i in range(len(eps))],
            found=torch.as_tensor(raw[0]) if self.kind == "minimization" else None,
        )
