"""The plan of a run: its methods and its units of work, in execution order.

A unit is ``clean`` for one batch (the model's predictions), or one method on one batch
for a group of eps: fixed-eps methods have a unit per eps, minimization methods one unit
for the whole eps grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import prepare_methods
from .config import ExperimentConfig
from .records import CLEAN, MethodRecord, unit_key

__all__ = ["Unit", "batch_slice", "n_batches", "plan_methods", "plan_units"]


@dataclass(frozen=True)
class Unit:
    """One unit of work: a method on one batch for a group of eps."""

    method: str
    attack: str
    variant: str
    batch: int
    eps: tuple[float, ...]

    @property
    def key(self) -> str:
        return unit_key(self.method, self.batch, self.eps)


def plan_methods(config: ExperimentConfig) -> list[MethodRecord]:
    """Attacks x variants and the peers, each peer right after the attack it is compared
    with. Raises ConfigError."""
    return [m.record for m in prepare_methods(config)]


def n_batches(config: ExperimentConfig) -> int:
    """How many batches ``data.n`` samples make."""
    return math.ceil(config.data.n / config.data.batch_size)


def batch_slice(config: ExperimentConfig, batch: int) -> slice:
    """The samples of batch ``batch``."""
    bs = config.data.batch_size
    return slice(batch * bs, min(config.data.n, (batch + 1) * bs))


def plan_units(config: ExperimentConfig, methods: list[MethodRecord]) -> list[Unit]:
    """Every unit of the experiment, in execution order.

    Per attack, the methods (variants and peers) take turns on each eps and batch, so
    that a change in the machine's load during the run affects them alike."""
    nb = n_batches(config)
    units = [Unit(CLEAN, CLEAN, CLEAN, b, ()) for b in range(nb)]
    for a in config.attacks:
        mine = [m for m in methods if m.attack == a.id]
        groups = [(m, a.eps) for m in mine if m.kind == "minimization"]
        for e in a.eps:
            groups += [(m, (e,)) for m in mine if m.kind != "minimization"]
        for b in range(nb):
            units += [Unit(m.key, m.attack, m.variant, b, group) for m, group in groups]
    return units
