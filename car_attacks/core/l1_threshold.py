"""The soft threshold of the L1-ball ∩ box projection: ``h(lam) = eps``.

``h(lam) = sum_i min((a_i - lam)_+, r_i)`` (``a = |w|``, ``r`` the room to the box)
is piecewise linear and non-increasing, with breakpoints ``a_i - r_i`` (slope
down by one) and ``a_i`` (slope up by one), so neither convex nor concave. Newton
with the right derivative ``-#{i : a_i - r_i <= lam < a_i}``, safeguarded by
bisection inside the bracket ``h(lo) > eps >= h(hi)``, stops exactly once a Newton
step crosses no breakpoint: the active and saturated sets at both ends agree and
``lam`` is the root of that segment,
``lam = (sum_saturated r + sum_active a - eps) / |active|``. It starts from the same
Newton solve on a strided subsample (every :data:`L1_ESTIMATE_STRIDE`-th coordinate,
recursively), typically 3-8 steps before the end (the structure of the CAR Newton
solver, :mod:`~car_attacks.core.solvers`; cf. the Newton-type methods for the continuous
quadratic knapsack, Cominetti, Mascarenhas and Silva, Math. Prog. Comp. 2014). Samples
still moving after :data:`L1_NEWTON_MAX_ITER` steps are solved by sorting the breakpoints.

Each step needs ``h(lam)`` and the two counts ``#{a_i > lam}``, ``#{a_i - r_i > lam}``
per sample, from a :class:`ThresholdProblem`: :class:`EagerProblem` evaluates them with
a few tensor operations (no comparison or select, the slow ones), the fused kernels of
:mod:`~car_attacks.core.fused_projection` in one pass over ``(x0, z)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import eagerpy as ep

from .tensors import needs_grad, stop_gradient

L1_NEWTON_MAX_ITER = 32
"""Newton steps before the remaining samples are solved by sorting (2-8 are typical)."""

L1_ESTIMATE_STRIDE = 16
"""Every how many coordinates the starting ``lam`` is estimated from (a solve on ``n / 16``)."""

L1_ESTIMATE_MIN_SIZE = 16384
"""Coordinates per sample from which the start is estimated (below, the subsample's Newton
steps cost more than the one or two steps they save; per sample: a sample takes the same
path in any batch)."""

EXACT_FLOAT32_COUNT = 2**24
"""Counts up to this are exact as float32 sums of ones (a 24-bit significand)."""


@dataclass(frozen=True)
class Sums:
    """``h(lam)`` and the counts at one ``lam``, each ``(N, 1)``."""

    h: Any
    positive: Any
    """``#{i : a_i > lam}`` (floats, exact: compared, never mixed with other values)."""
    saturated: Any
    """``#{i : a_i - r_i > lam}``."""
    active: Any
    """``positive - saturated`` in ``lam``'s dtype (minus the slope of ``h``)."""
    following: Any = None
    """``min{a_i - r_i : a_i - r_i > lam}`` (inf where none), where the pass computed it."""


class NewtonState(NamedTuple):
    """The safeguarded Newton iteration per sample, each ``(N, 1)`` (EagerPy or PyTorch)."""

    lam: Any
    lo: Any
    """The bracket ``h(lo) > eps >= h(hi)`` and the counts at its ends."""
    hi: Any
    lo_positive: Any
    lo_saturated: Any
    hi_positive: Any
    hi_saturated: Any
    positive: Any
    """The counts at the previous ``lam`` (-1 before the first step)."""
    saturated: Any
    was_newton: Any
    """Whether ``lam`` is a Newton point (then equal counts there prove it exact)."""
    done: Any


def initial_state(first: Sums, largest: Any, eps_col: Any, xp: Any) -> NewtonState:
    """The state at ``lam = 0`` from its sums ``first`` and ``largest = max a`` (both counts
    are 0 there); rows with ``h(0) <= eps`` are done at 0. ``xp``: ``eagerpy`` or ``torch``."""
    lam = first.h * 0
    unknown = first.positive * 0 - 1
    done = first.h <= eps_col
    return NewtonState(
        lam=lam,
        lo=lam,
        hi=largest,
        lo_positive=first.positive,
        lo_saturated=first.saturated,
        hi_positive=first.positive * 0,
        hi_saturated=first.saturated * 0,
        positive=unknown,
        saturated=unknown,
        was_newton=xp.logical_and(done, xp.logical_not(done)),
        done=done,
    )


def newton_step(
    state: NewtonState, sums: Sums, eps_col: Any, following: Any, xp: Any
) -> tuple[NewtonState, Any, Any]:
    """One safeguarded Newton step from ``state`` with ``sums`` at ``state.lam``: the next
    state, ``done`` at ``state.lam`` and the rows where ``h`` is flat above ``eps``.

    The sets {a_i > lam} and {a_i - r_i > lam} (right derivative) only shrink as ``lam``
    grows, so equal counts at a point and at the Newton point computed from it mean
    no breakpoint lies between them: ``h`` is linear there and the Newton point is the
    exact root. ``h`` is not convex (concave kinks at ``a_i - r_i``), so a Newton point
    outside the bracket ``(lo, hi)`` is replaced by bisection; where ``h`` is flat above
    ``eps`` (every moving coordinate saturated) the step goes to ``following``, the next
    breakpoint ``min{a_i - r_i > lam}`` (``None``: no flat row). Written with operators and
    the functions ``eagerpy`` and ``torch`` share (``xp``), so it also compiles.
    """
    lam, lo, hi = state.lam, state.lo, state.hi
    h, positive, saturated, active = sums.h, sums.positive, sums.saturated, sums.active
    same = xp.logical_and(positive == state.positive, saturated == state.saturated)
    exact = xp.logical_or(h == eps_col, xp.logical_and(state.was_newton, same))
    done = xp.logical_or(state.done, exact)
    above = h > eps_col
    flat = xp.logical_and(active == 0, above)
    lo, hi = xp.where(above, lam, lo), xp.where(above, hi, lam)
    lo_positive = xp.where(above, positive, state.lo_positive)
    lo_saturated = xp.where(above, saturated, state.lo_saturated)
    hi_positive = xp.where(above, state.hi_positive, positive)
    hi_saturated = xp.where(above, state.hi_saturated, saturated)
    newton = (lam + (h - eps_col) / active.clip(1.0, math.inf)).clip(0.0, math.inf)
    # (a step lost to rounding, newton == lam, is exact too: the counts then agree)
    inside = xp.logical_or(xp.logical_and(newton > lo, newton < hi), newton == lam)
    was_newton = xp.logical_and(active > 0, inside)
    mid = (lo + hi) / 2
    new = xp.where(was_newton, newton, mid)
    if following is not None:
        new = xp.where(flat, xp.minimum(following, hi), new)
    # no breakpoint inside the bracket (equal counts at its ends): the root is the
    # segment's, the Newton point (clipped: float sums of h are noisy at ulp scale);
    # a bracket one ulp wide (rounding near a breakpoint): ``hi`` is exact to rounding
    one_segment = xp.logical_and(
        xp.logical_and(lo_positive == hi_positive, lo_saturated == hi_saturated), active > 0
    )
    tight = xp.logical_and(xp.logical_not(was_newton), xp.logical_or(mid <= lo, mid >= hi))
    settle = xp.logical_or(one_segment, tight)
    settled = xp.where(one_segment, xp.minimum(xp.maximum(newton, lo), hi), hi)
    following_state = NewtonState(
        lam=xp.where(done, lam, xp.where(settle, settled, new)),
        lo=lo,
        hi=hi,
        lo_positive=lo_positive,
        lo_saturated=lo_saturated,
        hi_positive=hi_positive,
        hi_saturated=hi_saturated,
        positive=positive,
        saturated=saturated,
        was_newton=was_newton,
        done=xp.logical_or(done, settle),
    )
    return following_state, done, flat


@dataclass(frozen=True)
class Outcome:
    """Where Newton ended, each ``(N, 1)``."""

    lam: ep.Tensor
    done: ep.Tensor
    """Where ``lam`` is exact."""
    h: ep.Tensor
    """``h(lam)`` (as the last pass summed it)."""


class ThresholdProblem(Protocol):
    """``h`` and its counts for ``N`` samples of ``n`` coordinates."""

    @property
    def n(self) -> int: ...

    def start(self, eps_col: ep.Tensor) -> tuple[NewtonState, Sums]:
        """The state at ``lam = 0`` and the sums there."""
        ...

    def step(
        self, state: NewtonState, eps_col: ep.Tensor, sums: Sums | None
    ) -> tuple[NewtonState, ep.Tensor, ep.Tensor, ep.Tensor]:
        """:func:`newton_step` at ``state.lam`` (``sums``: already known there): the next
        state, ``done`` and ``h`` at ``state.lam``, and whether every row is done."""
        ...

    def subsample(self, stride: int) -> ThresholdProblem:
        """The problem on every ``stride``-th coordinate."""
        ...

    def parts(self) -> tuple[ep.Tensor, ep.Tensor]:
        """``(a, r)``, both ``(N, n)`` (for the sort fallback)."""
        ...


class EagerProblem:
    """:class:`ThresholdProblem` on the tensors ``a`` and ``r`` (no autograd history)."""

    def __init__(self, size: ep.Tensor, room: ep.Tensor) -> None:
        self.size, self.room = size, room
        self.start_points = size - room
        """``a - r``: where a coordinate leaves saturation."""

    @property
    def n(self) -> int:
        return int(self.size.shape[1])

    def sums(self, lam: ep.Tensor) -> Sums:
        """``h = sum min((a - lam)_+, r)`` and the counts, as signs of differences
        (``fl(u - v) > 0`` exactly when ``u > v``; comparisons and selects are slower)."""
        t = self.size - lam
        h = ep.minimum(t.clip(0.0, math.inf), self.room).sum(axis=1, keepdims=True)
        positive, saturated = self._count(t), self._count(self.start_points - lam)
        active = (positive - saturated).astype(lam.dtype)
        return Sums(h=h, positive=positive, saturated=saturated, active=active)

    def _count(self, difference: ep.Tensor) -> ep.Tensor:
        """``#{i : difference_i > 0}`` per row, exact (float64 sums past float32's range)."""
        ones = difference.sign().clip(0.0, 1.0)
        if self.n >= EXACT_FLOAT32_COUNT:
            ones = ones.float64()
        return ones.sum(axis=1, keepdims=True)

    def start(self, eps_col: ep.Tensor) -> tuple[NewtonState, Sums]:
        first = self.sums(ep.zeros_like(eps_col))
        return initial_state(first, self.size.max(axis=1, keepdims=True), eps_col, ep), first

    def step(
        self, state: NewtonState, eps_col: ep.Tensor, sums: Sums | None
    ) -> tuple[NewtonState, ep.Tensor, ep.Tensor, ep.Tensor]:
        lam = state.lam
        sums = self.sums(lam) if sums is None else sums
        following = sums.following
        if following is None and ep.logical_and(sums.active == 0, sums.h > eps_col).any().item():
            starts = self.start_points
            following = ep.where(starts > lam, starts, math.inf).min(axis=1, keepdims=True)
        new, done, _ = newton_step(state, sums, eps_col, following, ep)
        return new, done, sums.h, done.all()

    def subsample(self, stride: int) -> EagerProblem:
        return EagerProblem(self.size[:, ::stride], self.room[:, ::stride])

    def parts(self) -> tuple[ep.Tensor, ep.Tensor]:
        return self.size, self.room


def l1_threshold(size: ep.Tensor, room: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
    """``lam`` of shape ``(N, 1)`` with ``h(lam) = sum_i min((a_i - lam)_+, r_i) = eps``.

    Safeguarded Newton on ``h`` (see the module docstring); ``size`` is ``a``, ``room``
    is ``r`` (both ``(N, n)``, non-negative), ``eps`` is ``(N,)``. Each sample is
    solved on its own; rows with ``h(0) <= eps`` give ``lam = 0`` (callers mask them).
    Differentiable like the sort solve (the gradient of the segment's closed form).
    """
    eps_col = eps.reshape((-1, 1))
    problem = EagerProblem(stop_gradient(size), stop_gradient(room))
    fixed_eps = stop_gradient(eps_col)
    lam = solve_threshold(problem, fixed_eps, *problem.start(fixed_eps)).lam
    return with_gradient(lam, size, room, eps_col)


def solve_threshold(
    problem: ThresholdProblem, eps_col: ep.Tensor, state: NewtonState, first: Sums
) -> Outcome:
    """Newton from ``state`` (at ``lam = 0``, with the sums ``first`` there), the sort solve
    for samples Newton has not finished (their ``h`` recomputed)."""
    outcome = _newton(problem, eps_col, state, first, L1_NEWTON_MAX_ITER)
    if outcome.done.all().item():
        return outcome
    size, room = problem.parts()
    lam = ep.where(outcome.done, outcome.lam, l1_threshold_sort(size, room, eps_col.reshape((-1,))))
    h = ep.minimum((size - lam).clip(0.0, math.inf), room).sum(axis=1, keepdims=True)
    return Outcome(lam=lam, done=outcome.done, h=ep.where(outcome.done, outcome.h, h))


def with_gradient(
    lam: ep.Tensor, size: ep.Tensor, room: ep.Tensor, eps_col: ep.Tensor
) -> ep.Tensor:
    """``lam`` with the gradient of the segment's closed form
    ``(sum_saturated r + sum_active a - eps) / |active|`` (sets at ``lam``), if one is needed;
    the value stays ``lam``."""
    if not needs_grad(size, room, eps_col):
        return lam
    fixed = stop_gradient(lam)
    saturated = size - room > fixed
    active = ep.logical_and(ep.logical_not(saturated), size > fixed)
    n_active = active.astype(size.dtype).sum(axis=1, keepdims=True)
    total = (ep.where(saturated, room, 0.0) + ep.where(active, size, 0.0)).sum(
        axis=1, keepdims=True
    )
    closed = (total - eps_col) / ep.where(n_active > 0, n_active, 1.0)
    closed = ep.where(n_active > 0, closed, fixed)
    return fixed + (closed - stop_gradient(closed))


def _newton(
    problem: ThresholdProblem, eps_col: ep.Tensor, state: NewtonState, first: Sums, max_iter: int
) -> Outcome:
    """Up to ``max_iter`` steps of :func:`newton_step` from ``state`` (at ``lam = 0``, sums
    ``first``), from the estimate where the problem is large enough."""
    estimate = _estimate(problem, eps_col)
    sums: Sums | None = first
    if estimate is not None:
        state = state._replace(lam=ep.where(state.done, state.lam, estimate))
        sums = None
    for step in range(max_iter + 1):
        lam = state.lam
        state, done, h, finished = problem.step(state, eps_col, sums)
        sums = None
        if step == max_iter or finished.item():
            break
    return Outcome(lam=lam, done=done, h=h)


def _estimate(problem: ThresholdProblem, eps_col: ep.Tensor) -> ep.Tensor | None:
    """A starting ``lam``: the Newton solve on every :data:`L1_ESTIMATE_STRIDE`-th coordinate
    with ``eps`` scaled by the share of coordinates kept (per sample, deterministic); ``None``
    below :data:`L1_ESTIMATE_MIN_SIZE` coordinates (start at 0)."""
    n = problem.n
    if n < L1_ESTIMATE_MIN_SIZE:
        return None
    sub = problem.subsample(L1_ESTIMATE_STRIDE)
    eps_sub = eps_col * (sub.n / n)
    return _newton(sub, eps_sub, *sub.start(eps_sub), L1_NEWTON_MAX_ITER).lam


def l1_threshold_sort(size: ep.Tensor, room: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
    """:func:`l1_threshold` by sorting the ``2n`` breakpoints (the fallback and reference).

    ``h`` is non-increasing and piecewise linear with breakpoints ``a_i - r_i``
    (slope decreases by one) and ``a_i`` (slope increases by one). Sorting them
    locates the segment; ``lam`` is then recomputed from that segment's sums
    ``lam = (sum_saturated r + sum_active a - eps) / |active|``. Rows with
    ``h(0) <= eps`` give a meaningless value; callers mask them.
    """
    eps_col = eps.reshape((-1, 1))
    positions = ep.concatenate([size - room, size], axis=1)
    weights = ep.concatenate([-ep.ones_like(size), ep.ones_like(size)], axis=1)
    order = positions.argsort(axis=1)
    pos_sorted = positions.take_along_axis(order, axis=1)
    slope = ep.cumsum(weights.take_along_axis(order, axis=1), axis=1)
    drops = slope[:, :-1] * (pos_sorted[:, 1:] - pos_sorted[:, :-1])
    h = ep.concatenate(
        [room.sum(axis=1, keepdims=True), room.sum(axis=1, keepdims=True) + ep.cumsum(drops, 1)],
        axis=1,
    )
    k = ep.maximum((h > eps_col).astype(order.dtype).sum(axis=1, keepdims=True), 1)
    k = ep.minimum(k, positions.shape[1] - 1)
    q_prev = pos_sorted.take_along_axis(k - 1, axis=1)
    q_next = pos_sorted.take_along_axis(k, axis=1)
    h_prev = h.take_along_axis(k - 1, axis=1)
    slope_prev = slope.take_along_axis(k - 1, axis=1)
    linear = q_prev + (h_prev - eps_col) / ep.where(slope_prev < 0, -slope_prev, 1.0)

    # Recompute on the segment from plain sums (more accurate than the cumsum of drops).
    mid = (q_prev + q_next) / 2
    saturated = mid <= size - room
    active = ep.logical_and(ep.logical_not(saturated), mid < size)
    n_active = active.astype(size.dtype).sum(axis=1, keepdims=True)
    total = (ep.where(saturated, room, 0.0) + ep.where(active, size, 0.0)).sum(
        axis=1, keepdims=True
    )
    exact = (total - eps_col) / ep.where(n_active > 0, n_active, 1.0)
    return ep.maximum(ep.where(n_active > 0, exact, linear), 0.0)
