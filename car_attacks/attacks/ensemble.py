"""The worst case over several attacks: AutoAttack's recipe with clipping-aware attacks.

:class:`ClippingAwareAutoAttack` runs, per eps, APGD with the cross-entropy loss, APGD
with the targeted DLR loss and FMN (``version="standard"``; ``"fast"``: APGD-CE and FMN),
each only on the samples that no earlier attack fooled, and keeps per sample the first
adversarial any of them found (Croce & Hein, ICML 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks"; FMN: Pintor
et al., NeurIPS 2021). Which attack fooled which sample is recorded in
:attr:`ClippingAwareAutoAttack.last_found_by` (per eps) after each call.

A ``TargetedMisclassification(target_classes)`` criterion is supported: every component
then attacks towards the given class and success means "classified as the target"
(APGD-CE minimises the target's cross-entropy, APGD-T runs one round of the targeted DLR
loss towards it instead of looping over ``n_target_classes``, FMN its targeted version).
Other criteria raise a ValueError that names them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import eagerpy as ep
import numpy as np
from foolbox.attacks.base import Attack
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.models import Model

from .apgd import (
    APGDLoss,
    ClippingAwareAPGD,
    L1ClippingAwareAPGD,
    L2ClippingAwareAPGD,
    LinfClippingAwareAPGD,
)
from .base import AttackCall, ClippingAwareFixedEpsilonAttack, Rescaling, check_seed
from .fmn import ClippingAwareFMN, L1ClippingAwareFMN, L2ClippingAwareFMN, LinfClippingAwareFMN
from .norms import L1, L2, LINF, Norm

__all__ = [
    "CLEAN",
    "VERSIONS",
    "ClippingAwareAutoAttack",
    "Component",
    "FoundBy",
]

Version = Literal["standard", "fast"]
VERSIONS: tuple[str, ...] = ("standard", "fast")
CLEAN = "clean"
"""The name :class:`FoundBy` gives samples that the model already misclassifies."""

_NORMS: dict[str, Norm] = {n.name: n for n in (L1, L2, LINF)}
_APGD: dict[str, type[ClippingAwareAPGD]] = {
    "l1": L1ClippingAwareAPGD,
    "l2": L2ClippingAwareAPGD,
    "linf": LinfClippingAwareAPGD,
}
_FMN: dict[str, type[ClippingAwareFMN]] = {
    "l1": L1ClippingAwareFMN,
    "l2": L2ClippingAwareFMN,
    "linf": LinfClippingAwareFMN,
}


@dataclass(frozen=True)
class Component:
    """One attack of the ensemble and the name :class:`FoundBy` records for it."""

    name: str
    attack: Attack


@dataclass(frozen=True)
class FoundBy:
    """Per sample of one call at one eps: the component that found its adversarial
    (:data:`CLEAN` if the input itself is misclassified), ``None`` if none did."""

    epsilon: float
    attacks: tuple[str | None, ...]

    def counts(self) -> dict[str, int]:
        """How many samples each component (and :data:`CLEAN`) fooled."""
        return dict(Counter(a for a in self.attacks if a is not None))


def _subset(criterion: Criterion, idx: ep.Tensor) -> Criterion:
    """The criterion for the samples ``idx`` of the batch."""
    if isinstance(criterion, Misclassification):
        return Misclassification(criterion.labels[idx])
    if isinstance(criterion, TargetedMisclassification):
        return TargetedMisclassification(criterion.target_classes[idx])
    raise ValueError(
        "criterion must be labels, Misclassification or TargetedMisclassification, "
        f"got criterion={criterion!r}"
    )


class ClippingAwareAutoAttack(ClippingAwareFixedEpsilonAttack):
    """Per sample and eps, the first adversarial that APGD-CE, APGD-T (targeted DLR over
    ``n_target_classes`` classes, or towards the given class of a targeted criterion) or FMN
    finds; later attacks only see the samples that earlier ones did not fool (foolbox's
    fixed-epsilon call contract).

    Args:
        norm: ``"l1"``, ``"l2"`` or ``"linf"`` (default, as AutoAttack's).
        version: ``"standard"`` (APGD-CE, APGD-T, FMN) or ``"fast"`` (APGD-CE, FMN).
        steps: iterations of every attack of the ensemble.
        n_target_classes: classes APGD-T targets in turn (untargeted criteria only).
        rescaling: ``"car"``, ``"bisection"`` or ``"naive"``, for every attack.
        seed: ``None`` or an int >= 0 given to every attack (per-sample streams).
    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        version: Version = "standard",
        steps: int = 100,
        n_target_classes: int = 9,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got norm={norm!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got version={version!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got steps={steps!r}")
        super().__init__(rescaling=rescaling, seed=check_seed(seed))
        self._norm = _NORMS[norm]
        self.version: Version = version
        self.steps = steps
        self.n_target_classes = n_target_classes
        self.components: tuple[Component, ...] = tuple(self.build_components())
        self.last_found_by: dict[float, FoundBy] = {}
        """Per eps of the last call, which component fooled which sample (a call on other
        inputs starts a new record)."""
        self._last_inputs: object = None

    @property
    def norm(self) -> Norm:
        return self._norm

    def __repr__(self) -> str:
        return (
            f"ClippingAwareAutoAttack(norm={self.norm.name!r}, version={self.version!r}, "
            f"steps={self.steps}, rescaling={self.rescaling!r}, seed={self.seed!r})"
        )

    def build_components(self) -> list[Component]:
        """The attacks in the order they run (override to change the ensemble)."""
        apgd, fmn = _APGD[self.norm.name], _FMN[self.norm.name]
        losses: list[tuple[str, APGDLoss]] = [("apgd-ce", "ce")]
        if self.version == "standard":
            losses.append(("apgd-t", "dlr-targeted"))
        out = [
            Component(
                name,
                apgd(
                    steps=self.steps,
                    loss=loss,
                    n_target_classes=self.n_target_classes,
                    rescaling=self.rescaling,
                    seed=self.seed,
                ),
            )
            for name, loss in losses
        ]
        out.append(
            Component("fmn", fmn(steps=self.steps, rescaling=self.rescaling, seed=self.seed))
        )
        return out

    def perturbed_batch(self, model: Model, call: AttackCall, epsilon: float) -> ep.Tensor:
        """Run the components in turn on the samples not yet fooled; keep the first
        adversarial of each sample (the input itself where none was found)."""
        if call.criterion is None:
            raise ValueError("ClippingAwareAutoAttack needs labels or a criterion, got None")
        x = call.x
        fooled = call.criterion(x, model(x))
        found: list[str | None] = [CLEAN if f else None for f in fooled.numpy().tolist()]
        out = x
        for comp in self.components:
            todo = [i for i, f in enumerate(found) if f is None]
            if not todo:
                break
            idx = ep.from_numpy(x, np.asarray(todo, dtype=np.int64))
            _, clipped, success = comp.attack(
                model, x[idx], _subset(call.criterion, idx), epsilons=[epsilon]
            )
            for i, hit in zip(todo, success[0].numpy().tolist(), strict=True):
                if hit:
                    found[i] = comp.name
            won = ep.from_numpy(x, np.asarray([f == comp.name for f in found]))
            won = won.reshape((-1,) + (1,) * (x.ndim - 1))
            out = ep.where(won, ep.index_update(x, idx, clipped[0]), out)
        if self._last_inputs is not x.raw:
            self._last_inputs, self.last_found_by = x.raw, {}
        self.last_found_by[float(epsilon)] = FoundBy(float(epsilon), tuple(found))
        return out
