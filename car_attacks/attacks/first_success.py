"""Each sample's first adversarial candidate: the update every multi-candidate attack shares.

The gradient family (iterates), the repeated noise attacks (draws) and the seeded
blended-noise starting points (draws) all keep, per sample, the first candidate that is
adversarial, so a sample's result does not depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import eagerpy as ep

from ..core.tensors import batch_view


@dataclass
class FirstSuccess:
    """Each sample's first adversarial candidate (``best`` where ``found``), else its start.

    ``update`` keeps a sample's earlier success, so its result does not depend on which
    other samples are in the batch or when they succeed.
    """

    best: ep.Tensor
    found: ep.Tensor

    @classmethod
    def starting_at(cls, x: ep.Tensor, found: ep.Tensor | None = None) -> FirstSuccess:
        """Nothing found yet (or ``found``, for inputs already adversarial); ``best = x``."""
        return cls(x, ep.zeros(x, len(x)).bool() if found is None else found)

    def update(self, candidate: ep.Tensor, is_adv: ep.Tensor) -> None:
        """Take ``candidate`` for the samples it makes adversarial for the first time."""
        new = ep.logical_and(is_adv, ep.logical_not(self.found))
        self.best = ep.where(batch_view(new, candidate.ndim), candidate, self.best)
        self.found = ep.logical_or(self.found, is_adv)

    def all_found(self) -> bool:
        return bool(self.found.all().item())

    def or_else(self, fallback: ep.Tensor) -> ep.Tensor:
        """``best`` where found, ``fallback`` elsewhere."""
        return ep.where(batch_view(self.found, fallback.ndim), self.best, fallback)
