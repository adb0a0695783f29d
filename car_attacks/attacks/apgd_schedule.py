"""APGD's step-size schedules: checkpoints and halving (L2, L-inf), adaptive sparsity (L1).

L2 / L-inf (Croce & Hein, ICML 2020, Sec. 3.2): checkpoints ``p_j`` every ``w_j``
iterations, ``w_1 = 0.22 N`` shrinking by ``0.03 N`` to at least ``0.06 N``. At a
checkpoint a sample's step size is halved, and it restarts from its best point, if

1. the loss increased in at most ``rho * (p_j - p_{j-1})`` of the window's steps
   (``<=``, as the authors' code counts; the paper writes ``<``), or
2. its step size was not reduced at the previous checkpoint and its best loss did not
   improve since then.

Two details of the first window: its first step counts as an increase where
``f(x_1) > f(x_0)`` (the paper's sum; the authors' code compares ``f(x_1)`` with a zeroed
buffer row, i.e. with 0), and condition 2 is not checked at the first checkpoint (as the
authors' code and pyautoattack; the paper's formula and adv-lib check it). adv-lib also
aliases its best loss at the last checkpoint to the running best from the second
checkpoint on, so its condition 2 reads "not reduced at the previous checkpoint". None of
the three changed a single sample (L-inf APGD-CE, ``fashion_mnist_bcop``, eps 0.1, 1,000
images, 3 seeds each, same starts).

L1 ("Mind the box", Croce & Hein, ICML 2021, Sec. 4): every ``0.04 N`` iterations the
sparsity ``k`` becomes the L0 norm of the best perturbation over ``1.5``; the step size
is reset to ``eps`` (and the sample restarts from its best point) where that L0 norm
dropped by more than 5%, else divided by 1.5, within ``[eps / 10, eps]``.

Every decision is per sample; only the checkpoint positions are shared by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import eagerpy as ep

from ..core.tensors import flatten_batch

__all__ = ["HalvingSchedule", "SparsitySchedule", "StepSchedule"]

FIRST_WINDOW = 0.22
"""``w_1 / N``: the first checkpoint's window as a fraction of the iterations."""
WINDOW_DECREASE = 0.03
"""How much each following window shrinks, as a fraction of the iterations."""
MIN_WINDOW = 0.06
"""The smallest window, as a fraction of the iterations."""
L1_WINDOW = 0.04
"""The L1 schedule's fixed window, as a fraction of the iterations."""
SPARSITY_DROP = 0.95
"""L1: the L0 ratio below which the step size is reset and the sample restarts."""


def fraction_of(steps: int, fraction: float) -> int:
    """``max(int(fraction * steps), 1)``: a number of iterations of the schedule."""
    return max(int(fraction * steps), 1)


@dataclass
class StepSchedule:
    """Per-sample step sizes (N,) that a checkpoint may change; the shared window."""

    step_size: ep.Tensor
    window: int
    since_check: int = 0

    def tick(self) -> bool:
        """Count one iteration; True when it ends the window (a checkpoint)."""
        self.since_check += 1
        if self.since_check < self.window:
            return False
        self.since_check = 0
        return True

    def checkpoint(
        self, previous: ep.Tensor, loss: ep.Tensor, best_loss: ep.Tensor, best_delta: ep.Tensor
    ) -> ep.Tensor:
        """After one iteration (losses before and after it, each sample's best loss and
        best perturbation): the samples that restart from their best point (N,) bool."""
        raise NotImplementedError


@dataclass
class HalvingSchedule(StepSchedule):
    """The L2 / L-inf schedule: conditions 1 and 2 at each checkpoint, then halving."""

    rho: float = 0.75
    decrease: int = 1
    min_window: int = 1
    increases: ep.Tensor | None = None
    best_at_check: ep.Tensor | None = None
    reduced_at_check: ep.Tensor | None = None

    @classmethod
    def start(
        cls, step_size: ep.Tensor, best_loss: ep.Tensor, *, steps: int, rho: float
    ) -> HalvingSchedule:
        return cls(
            step_size=step_size,
            window=fraction_of(steps, FIRST_WINDOW),
            rho=rho,
            decrease=fraction_of(steps, WINDOW_DECREASE),
            min_window=fraction_of(steps, MIN_WINDOW),
            increases=ep.zeros_like(best_loss),
            best_at_check=best_loss,
            reduced_at_check=ep.ones_like(best_loss).bool(),
        )

    def checkpoint(
        self, previous: ep.Tensor, loss: ep.Tensor, best_loss: ep.Tensor, best_delta: ep.Tensor
    ) -> ep.Tensor:
        """Record ``f(x_{k+1}) > f(x_k)``; at a checkpoint return the samples whose step was
        halved (they restart from their best point), else none."""
        assert self.increases is not None and self.best_at_check is not None
        assert self.reduced_at_check is not None
        self.increases = self.increases + (loss > previous).astype(loss.dtype)
        window = self.window
        if not self.tick():
            return ep.zeros_like(loss).bool()
        oscillating = self.increases <= self.rho * window
        stalled = ep.logical_and(
            ep.logical_not(self.reduced_at_check), self.best_at_check >= best_loss
        )
        halve = ep.logical_or(oscillating, stalled)
        self.step_size = ep.where(halve, self.step_size / 2.0, self.step_size)
        self.reduced_at_check = halve
        self.best_at_check = best_loss
        self.increases = ep.zeros_like(loss)
        self.window = max(window - self.decrease, self.min_window)
        return halve


@dataclass
class SparsitySchedule(StepSchedule):
    """The L1 schedule: the per-sample sparsity ``k / d`` and step sizes of "Mind the box"."""

    top_fraction: ep.Tensor | None = None
    previous_l0: ep.Tensor | None = None
    max_step: ep.Tensor | None = None
    reduction: float = 1.5
    min_step_fraction: float = 0.1

    @classmethod
    def start(
        cls,
        step_size: ep.Tensor,
        *,
        steps: int,
        dim: int,
        initial_fraction: float,
        reduction: float,
        min_step_fraction: float,
    ) -> SparsitySchedule:
        return cls(
            step_size=step_size,
            window=fraction_of(steps, L1_WINDOW),
            top_fraction=ep.full_like(step_size, initial_fraction),
            previous_l0=ep.full_like(step_size, float(dim)),
            max_step=step_size,
            reduction=reduction,
            min_step_fraction=min_step_fraction,
        )

    def checkpoint(
        self, previous: ep.Tensor, loss: ep.Tensor, best_loss: ep.Tensor, best_delta: ep.Tensor
    ) -> ep.Tensor:
        """At a checkpoint: adapt ``k`` and the step; return the samples whose L0 norm
        dropped (they restart from their best point), else none."""
        assert self.previous_l0 is not None and self.max_step is not None
        if not self.tick():
            return ep.zeros_like(loss).bool()
        flat = flatten_batch(best_delta)
        l0 = (flat != 0).astype(flat.dtype).sum(axis=1)
        dropped = l0 / self.previous_l0 < SPARSITY_DROP
        self.top_fraction = l0 / flat.shape[1] / self.reduction
        reduced = ep.where(dropped, self.max_step, self.step_size / self.reduction)
        self.step_size = ep.minimum(
            ep.maximum(reduced, self.max_step * self.min_step_fraction), self.max_step
        )
        self.previous_l0 = l0
        return dropped
