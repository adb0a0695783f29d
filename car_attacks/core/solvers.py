"""Solvers of the CAR equation ``g(t) = sum_i min(t |delta_i|^p, r_i^p) = eps^p``, ``t = eta^p``.

On EagerPy tensors without input checks; :mod:`~car_attacks.core.rescaling` states the
equation, checks the inputs and picks the solver:

* :func:`solve_power`: Newton from below on the concave piecewise-linear ``g`` (``"newton"``)
  or sorting its breakpoints (``"sort"``), for finite p; differentiable.
* :func:`linf_eta`: the closed form for p = inf.
* :func:`naive_eta`: ``eps / ||delta||_p``, what attacks do when they ignore clipping.
* :func:`bisection`: the iterative baseline, bisection on ``eta`` of the clipped norm.
* :func:`verified`: a solve checked against the clipped norm, bisection where it misses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import eagerpy as ep
import numpy as np
import torch

from . import fused, fused_newton, native_newton
from .tensors import (
    Bound,
    detached_bound,
    dtype_limits,
    dtype_name,
    flatten_batch,
    float64_bound,
    lp_norms,
    needs_grad,
    nonzero_or_one,
    room_along,
    select,
    stop_gradient,
)

NEWTON_MAX_ITER = 32
"""Newton iterations before the remaining samples are solved by sorting (3-9 are typical)."""
VERIFY_RTOL = 1e-9
"""Relative accuracy of the clipped norm that :func:`verified` checks (the public function
solves p other than 1, 2 and inf in float64) before it falls back to bisection."""
FULL_BISECTION_STEPS = 2200
"""Enough halvings to narrow ``[0, eta_max]`` to adjacent float64 numbers (2098 binades + 53)."""


@dataclass(frozen=True, kw_only=True)
class SolveInfo:
    """What a solve did: iterations (Newton) or steps (bisection), and fallback samples."""

    method: str
    iterations: int
    fallback_samples: int = 0


@dataclass(frozen=True, kw_only=True)
class RescalingProblem:
    """One batch of the CAR equation: points ``x`` in ``[lo, hi]``, directions ``delta`` of
    ``x``'s shape, targets ``eps`` of shape ``(N,)`` and the norm order ``p``."""

    x: ep.Tensor
    delta: ep.Tensor
    eps: ep.Tensor
    p: float
    lo: Bound
    hi: Bound
    first: fused.FirstPass | None = None
    """The first fused pass of the solve, where the input checks already ran it (with these
    inputs: a copy in another dtype drops it)."""
    scaled: bool = False
    """Scale the room by ``eps`` before its power, as for p other than 1 and 2 (see
    :class:`_PowerProblem`): set by :func:`solve_power` for p = 2 where some ``eps`` is below
    :func:`smallest_squared_eps` (its square would be subnormal or 0)."""

    def detached(self) -> RescalingProblem:
        """The same problem without autograd history."""
        return RescalingProblem(
            x=stop_gradient(self.x),
            delta=stop_gradient(self.delta),
            eps=stop_gradient(self.eps),
            p=self.p,
            lo=detached_bound(self.lo),
            hi=detached_bound(self.hi),
            scaled=self.scaled,
        )

    def float64(self) -> RescalingProblem:
        """The same problem in float64."""
        return RescalingProblem(
            x=self.x.float64(),
            delta=self.delta.float64(),
            eps=self.eps.float64(),
            p=self.p,
            lo=float64_bound(self.lo),
            hi=float64_bound(self.hi),
            scaled=self.scaled,
        )

    def room(self) -> ep.Tensor:
        """``r``: the room to the box along ``delta``, ``(N, n)``."""
        return flatten_batch(room_along(self.x, self.delta, self.lo, self.hi))


def solve_power(problem: RescalingProblem, method: str) -> tuple[ep.Tensor, SolveInfo]:
    """``eta`` of shape ``(N,)`` for a finite p by ``"newton"`` or ``"sort"`` on ``g``.

    The segment is found on detached inputs; ``eta`` is then recomputed on it from the inputs
    themselves where a gradient may be taken. ``eta = inf`` where ``t`` overflows.
    """
    if method == "newton" and problem.p in (1.0, 2.0) and not problem.scaled:
        fast = _fused_newton(problem)
        if fast is not None:
            return fast
    if problem.p == 2 and not problem.scaled and _has_tiny_eps(problem):
        problem = dataclasses.replace(problem, scaled=True, first=None)
    if method == "newton" and (problem.p not in (1.0, 2.0) or problem.scaled):
        fast = _native_general(problem)
        if fast is not None:
            return fast
    detached = _PowerProblem.build(problem.detached())
    fallback, unfinished = 0, None
    if method == "newton":
        t, active_sum, iterations, unfinished = _newton(detached, NEWTON_MAX_ITER)
        if unfinished is not None:
            fallback = int(unfinished.astype(t.dtype).sum().item())
            t = ep.where(unfinished, _sort_t(detached), t)
    else:
        t, active_sum, iterations = _sort_t(detached), None, 0
    info = SolveInfo(method=method, iterations=iterations, fallback_samples=fallback)

    if needs_grad(problem.x, problem.delta, problem.eps, problem.lo, problem.hi):
        powers = _PowerProblem.build(problem, reachable=detached.reachable)
        eta = powers.eta_from_saturation(t)
    elif active_sum is None:
        eta = detached.eta_from_saturation(t)
    else:
        eta = detached.eta_from_t(t, active_sum)
        if unfinished is not None:  # the samples the sort solved
            eta = ep.where(unfinished[:, 0], detached.eta_from_saturation(t), eta)
    # t = (eta d_scale / r_scale)^p overflowed (for p = 1: eta itself): report eta = inf
    return select(ep.isinf(t[:, 0]), math.inf, eta), info


def smallest_squared_eps(like: ep.Tensor) -> float:
    """The smallest ``eps`` whose square is a normal number of ``like``'s dtype (float32
    ``2^-63``, float64 ``2^-511``): below it, the p = 2 solve's target ``eps^2`` would lose
    digits or vanish, and the room is scaled by ``eps`` first (``RescalingProblem.scaled``)."""
    return math.sqrt(dtype_limits(like)[0])


def _has_tiny_eps(problem: RescalingProblem) -> bool:
    """Whether some ``eps`` lies in ``(0, smallest_squared_eps)`` (one host sync)."""
    eps = stop_gradient(problem.eps)
    tiny = ep.logical_and(eps > 0, eps < smallest_squared_eps(problem.x))
    return bool(tiny.any().item())


def _fusable_bounds(problem: RescalingProblem) -> tuple[float, float] | None:
    """The float bounds where :func:`~car_attacks.core.fused.fusable` holds, or where the C
    Newton kernel takes the problem (:func:`~car_attacks.core.native_newton.eligible`: any
    sample size, from the first call), else ``None``."""
    lo, hi = problem.lo, problem.hi
    if isinstance(lo, float) and isinstance(hi, float):
        x, delta = problem.x.raw, problem.delta.raw
        # the C kernel first: values it solves do not count towards compiling (ski rental)
        if native_newton.eligible(x, delta, lo, hi) or fused.fusable(x, delta, lo, hi):
            return lo, hi
    return None


def _fused_newton(problem: RescalingProblem) -> tuple[ep.Tensor, SolveInfo] | None:
    """:func:`solve_power` by Newton with the fused kernels of :mod:`~car_attacks.core.fused`
    (p = 1 or 2); ``None`` where they do not apply, a sample needs the sort fallback, or a
    p = 2 sample's ``eps`` is below :func:`smallest_squared_eps`."""
    bounds = _fusable_bounds(problem)
    if bounds is None:
        return None
    (x, delta), (lo, hi) = (problem.x.raw, problem.delta.raw), bounds
    run = fused_newton.newton_power(
        x,
        delta,
        problem.eps.raw,
        p=problem.p,
        lo=lo,
        hi=hi,
        max_iter=NEWTON_MAX_ITER,
        first=problem.first if isinstance(problem.first, fused.FirstSums) else None,
    )
    if not run.finished:
        return None
    tiny = run.tiny if run.tiny is not None else problem.p == 2 and _has_tiny_eps(problem)
    return None if tiny else eta_from_newton(problem, run)  # tiny: the scaled solve


def _native_general(problem: RescalingProblem) -> tuple[ep.Tensor, SolveInfo] | None:
    """:func:`solve_power` by Newton for a p other than 1 and 2 with the C kernel
    (:func:`~car_attacks.core.native_newton.general_eta`: float64 CPU tensors, float bounds,
    no gradient); ``None`` where it does not apply to every sample."""
    x, delta, lo, hi = problem.x.raw, problem.delta.raw, problem.lo, problem.hi
    if not native_newton.eligible(x, delta, lo, hi) or x.dtype != torch.float64:
        return None
    if needs_grad(problem.x, problem.delta, problem.eps, lo, hi):
        return None
    assert isinstance(lo, float) and isinstance(hi, float)  # eligible checked
    n = x.shape[0]
    found = native_newton.general_eta(
        x.reshape(n, -1),
        delta.reshape(n, -1),
        problem.eps.raw,
        p=problem.p,
        lo=lo,
        hi=hi,
        max_iter=NEWTON_MAX_ITER,
    )
    if found is None:
        return None
    return ep.astensor(found.eta), SolveInfo(method="newton", iterations=found.iterations)


def eta_from_newton(
    problem: RescalingProblem, run: fused_newton.NewtonRun
) -> tuple[ep.Tensor, SolveInfo]:
    """``eta`` ``(N,)`` and the info of a finished fused Newton ``run`` on ``problem``
    (recomputed on the final segment from the inputs where a gradient may be taken)."""
    info = SolveInfo(method="newton", iterations=run.iterations)
    grad = needs_grad(problem.x, problem.delta, problem.eps, problem.lo, problem.hi)
    if run.eta is not None and not grad:  # the kernel's closed form, for every sample
        return ep.astensor(run.eta), info
    t = ep.astensor(run.t)
    reachable = ep.astensor(run.reachable)
    if grad:
        eta = _PowerProblem.build(problem, reachable=reachable).eta_from_saturation(t)
    else:
        eta = _eta_from_t(
            t,
            ep.astensor(run.active_sum),
            problem=problem,
            target=ep.astensor(run.target),
            scales=(1.0, ep.astensor(run.d_scale)),
            reachable=reachable,
        )
    return select(ep.isinf(t[:, 0]), math.inf, eta), info


@dataclass
class _PowerProblem:
    """``g(t) = sum_i min(t dp_i, rp_i) = E`` per sample (rows); breakpoints ``rp_i / dp_i``.

    ``dp = (|delta| / d_scale)^p`` and ``rp = (r / r_scale)^p``: the directions are
    normalised by their largest entry (gradients can be tiny), and for p other than
    1 and 2 the room too, by ``eps`` where it is below the largest room (else by that
    room), so large p overflows none of the largest terms and the target ``E`` is 1
    or more; rooms whose power would overflow are capped (they cannot saturate before
    ``E`` is reached). ``eta = t^(1/p) * r_scale / d_scale``. Coordinates that do not
    move (``delta_i = 0``) have ``dp = rp = 0``: they never contribute.
    """

    problem: RescalingProblem
    dp: ep.Tensor  # (N, n)
    rp: ep.Tensor  # (N, n)
    target: ep.Tensor  # (N, 1): E = (eps / r_scale)^p, 0 where unreachable
    d_scale: ep.Tensor | float  # (N, 1)
    r_scale: ep.Tensor | float  # (N, 1)
    reachable: ep.Tensor  # (N, 1) bool

    @classmethod
    def build(cls, problem: RescalingProblem, reachable: ep.Tensor | None = None) -> _PowerProblem:
        # the order of operations and the dels keep at most four x-sized tensors alive
        p, eps = problem.p, problem.eps
        room = problem.room()
        d = flatten_batch(problem.delta).abs()
        d_scale: ep.Tensor | float = 1.0
        r_scale: ep.Tensor | float = 1.0
        if p != 1:
            d_scale = nonzero_or_one(d.max(axis=1, keepdims=True))
            d = d / d_scale
        if p not in (1.0, 2.0) or problem.scaled:
            largest = stop_gradient(room).max(axis=1, keepdims=True)
            e = stop_gradient(eps).reshape((-1, 1))
            below = ep.logical_and(e > 0, e < largest)
            r_scale = ep.where(below, e, nonzero_or_one(largest))
            cap = (dtype_limits(room)[1] / (2 * room.shape[1])) ** (1 / p)
            room = ep.minimum(room / r_scale, cap)
        dp = _pow(d, p)
        del d
        rp = _pow(room, p)
        del room
        rp = rp * dp.sign()  # dp >= 0: sign is 1 where delta moves, else 0
        eps_col = eps.reshape((-1, 1))
        if reachable is None:
            reachable = _pow(eps_col / r_scale, p) <= rp.sum(axis=1, keepdims=True)
        # Unreachable samples get target 0 (a trivially solved problem) before the
        # power, so neither the value nor its gradient can be inf or NaN.
        target = _pow(select(reachable, eps_col, 0.0) / r_scale, p)
        return cls(problem, dp, rp, target, d_scale, r_scale, reachable)

    def value_and_slope(self, t: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        """``g(t)`` and its slope ``S(t)`` (sum of ``dp`` over the coordinates still moving,
        ``t dp_i < rp_i``), both ``(N, 1)``.

        Written with ``minimum``, ``sign`` and ``clip`` rather than boolean masks and
        ``where``, which are an order of magnitude slower on CPU.
        """
        moved = t * self.dp
        g = ep.minimum(moved, self.rp).sum(axis=1, keepdims=True)
        room_left = self.rp - moved
        del moved  # at most four tensors of x's size live at once (dp, rp and two)
        sign = room_left.sign()
        del room_left
        active = sign.clip(0.0, 1.0)
        del sign
        return g, (self.dp * active).sum(axis=1, keepdims=True)

    def eta_from_saturation(self, t: ep.Tensor) -> ep.Tensor:
        """Exact ``eta`` on the segment of ``g`` that contains ``t``: one Newton step
        ``t + (E - g(t)) / S(t) = (E - C) / S``, differentiable in the problem's inputs."""
        t = stop_gradient(t)
        g, s = self.value_and_slope(t)
        return self.eta_from_t(t + (self.target - g) / nonzero_or_one(s), s)

    def eta_from_t(self, t: ep.Tensor, active_sum: ep.Tensor) -> ep.Tensor:
        """``eta = t^(1/p) r_scale / d_scale``; the saturating scale where the target is
        unreachable, or positive with nothing left active (``S = 0``; a zero target is met
        by ``eta = 0`` even where rounding left every ``rp`` at 0)."""
        return _eta_from_t(
            t,
            active_sum,
            problem=self.problem,
            target=self.target,
            scales=(self.r_scale, self.d_scale),
            reachable=self.reachable,
        )


def _eta_from_t(
    t: ep.Tensor,
    active_sum: ep.Tensor,
    *,
    problem: RescalingProblem,
    target: ep.Tensor,
    scales: tuple[ep.Tensor | float, ep.Tensor | float],
    reachable: ep.Tensor,
) -> ep.Tensor:
    """:meth:`_PowerProblem.eta_from_t` given the target, ``(r_scale, d_scale)`` and
    ``reachable``, all ``(N, 1)``."""
    r_scale, d_scale = scales
    t = ep.maximum(t, 0.0)
    positive = t > 0
    root = ep.where(positive, nonzero_or_one(t) ** (1.0 / problem.p), 0.0)
    eta = (root * r_scale / d_scale)[:, 0]
    stuck = ep.logical_and(active_sum <= 0, target > 0)
    use_max = ep.logical_or(ep.logical_not(reachable), stuck)[:, 0]
    if use_max.any().item():
        eta = ep.where(use_max, saturating_eta(problem), eta)
    return eta


def _newton(
    problem: _PowerProblem, max_iter: int
) -> tuple[ep.Tensor, ep.Tensor, int, ep.Tensor | None]:
    """Newton from below on the concave ``g``: ``t <- t + (E - g(t)) / S(t)``.

    Returns ``t``, ``S`` on its segment, the iterations used, and the samples
    that had not converged after ``max_iter`` (``None`` when all had).
    """
    t = ep.zeros_like(problem.target)
    done = t > 0  # all False
    previous_slope = t - 1  # no slope is negative: nothing matches on the first pass
    s = t
    for iteration in range(1, max_iter + 1):
        g, s = problem.value_and_slope(t)
        # The saturated set, hence the slope, did not change since the last step:
        # g is linear there and the last step landed exactly on g(t) = E.
        done = ep.logical_or(done, s == previous_slope)
        if done.all().item():
            return t, s, iteration, None
        step = ep.maximum((problem.target - g) / nonzero_or_one(s), 0.0)
        t = ep.where(done, t, t + step)
        previous_slope = s
    return t, s, max_iter, ep.logical_not(done)


def _sort_t(problem: _PowerProblem) -> ep.Tensor:
    """A ``t`` inside the segment of ``g`` that solves ``g(t) = E``, by sorting breakpoints."""
    dp, rp = problem.dp, problem.rp
    moving = dp > 0
    breakpoints = select(moving, rp / select(moving, dp, 1.0), math.inf)
    order = breakpoints.argsort(axis=1)
    bp_sorted = breakpoints.take_along_axis(order, axis=1)
    dp_sorted = dp.take_along_axis(order, axis=1)
    rp_sorted = rp.take_along_axis(order, axis=1)
    saturated_sum = ep.cumsum(rp_sorted, axis=1)
    # suffix sums by a reversed cumsum: "total - prefix" loses the small tail in float32
    from_here = ep.flip(ep.cumsum(ep.flip(dp_sorted, axis=1), axis=1), axis=1)
    active_sum = ep.concatenate([from_here[:, 1:], ep.zeros_like(from_here[:, :1])], axis=1)
    finite = bp_sorted < math.inf
    g_at_bp = ep.where(
        finite, saturated_sum + ep.where(finite, bp_sorted, 0.0) * active_sum, math.inf
    )
    k = (g_at_bp < problem.target).astype(order.dtype).sum(axis=1, keepdims=True)
    prev = ep.maximum(k - 1, 0)
    c_prev = ep.where(k > 0, saturated_sum.take_along_axis(prev, axis=1), 0.0)
    s_prev = ep.where(
        k > 0, active_sum.take_along_axis(prev, axis=1), dp.sum(axis=1, keepdims=True)
    )
    on_segment = (problem.target - c_prev) / nonzero_or_one(s_prev)
    # Rounding can leave g just below E at the last breakpoint (E == max of g): then
    # every moving coordinate saturates, at the largest finite breakpoint.
    n_finite = finite.astype(order.dtype).sum(axis=1, keepdims=True)
    largest = bp_sorted.take_along_axis(ep.maximum(n_finite - 1, 0), axis=1)
    return ep.where(k >= n_finite, ep.where(n_finite > 0, largest, 0.0), on_segment)


def naive_eta(problem: RescalingProblem) -> ep.Tensor:
    """The scale that ignores clipping: ``eps / ||delta||_p`` (0 where ``delta = 0``)."""
    norms = lp_norms(problem.delta, problem.p)
    return ep.where(norms > 0, problem.eps / nonzero_or_one(norms), 0.0)


def linf_eta(problem: RescalingProblem) -> ep.Tensor:
    """Exact L-inf scale: ``eta = e / max{|delta_i| : r_i >= e}``, ``e = min(eps, reachable)``
    (the C kernel, :func:`~car_attacks.core.native_newton.linf_eta`, or fused passes where
    :func:`~car_attacks.core.fused.fusable`, where no gradient is taken)."""
    bounds = _fusable_bounds(problem)
    if bounds is not None and not needs_grad(
        problem.x, problem.delta, problem.eps, problem.lo, problem.hi
    ):
        x, delta, eps = problem.x.raw, problem.delta.raw, problem.eps.raw
        first = problem.first if isinstance(problem.first, fused.LinfPass) else None
        if first is None and native_newton.eligible(x, delta, *bounds):
            n, (lo, hi) = x.shape[0], (fused.as_dtype_float(b, x) for b in bounds)
            flat = (x.reshape(n, -1), delta.reshape(n, -1))
            found = native_newton.linf_eta(*flat, eps, lo=lo, hi=hi, checks=fused.NO_CHECKS)
            if found is not None:
                return ep.astensor(found.eta)
        eta = fused.linf_eta_fused(x, delta, eps, lo=bounds[0], hi=bounds[1], first=first)
        return ep.astensor(eta)
    room = problem.room()
    d = flatten_batch(problem.delta).abs()
    reach = (room * d.sign()).max(axis=1)
    target = ep.minimum(problem.eps, reach)
    fastest = select(room >= target.reshape((-1, 1)), d, 0.0).max(axis=1)
    return ep.where(fastest > 0, target / nonzero_or_one(fastest), 0.0)


@dataclass(frozen=True)
class _ClippedNorm:
    """The clipped norm ``|| min(eta |delta_i|, r_i) ||_p`` of a batch (equal to
    ``clip(x + eta delta) - x`` but without the cancellation of ``x + eta delta - x`` in low
    precision) and its target ``min(eps, reachable)``, shape ``(N,)``."""

    speed: ep.Tensor  # (N, n): |delta|
    room: ep.Tensor  # (N, n): r, 0 where delta does not move
    target: ep.Tensor  # (N,)
    p: float

    @classmethod
    def build(cls, problem: RescalingProblem) -> _ClippedNorm:
        speed = flatten_batch(problem.delta).abs()
        room = ep.where(speed > 0, problem.room(), 0.0)
        return cls(speed, room, ep.minimum(problem.eps, lp_norms(room, problem.p)), problem.p)

    def at(self, eta: ep.Tensor) -> ep.Tensor:
        """The clipped norm at the scales ``eta`` of shape ``(N,)``."""
        return lp_norms(ep.minimum(eta.reshape((-1, 1)) * self.speed, self.room), self.p)


def bisection(
    problem: RescalingProblem, rtol: float, max_steps: int
) -> tuple[ep.Tensor, SolveInfo]:
    """The iterative baseline: bisection on ``eta`` of the clipped norm.

    Finds the smallest ``eta`` whose clipped norm reaches ``min(eps, reachable)``
    to a relative bracket width ``rtol``. Not differentiable.
    """
    problem = problem.detached()
    # a bracket narrower than a few ulps cannot be resolved in the input's dtype
    rtol = max(rtol, 4 * float(np.finfo(np.dtype(dtype_name(problem.x))).eps))
    norm = _ClippedNorm.build(problem)
    lower = ep.zeros_like(problem.eps)
    upper = saturating_eta(problem)
    trivial = ep.logical_or(norm.target <= 0, upper <= 0)
    done = trivial
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the count is reported
        mid = (lower + upper) / 2
        reached = norm.at(mid) >= norm.target
        # converged samples stay put, so a sample's result does not depend on the batch
        upper = ep.where(ep.logical_and(reached, ep.logical_not(done)), mid, upper)
        lower = ep.where(ep.logical_or(reached, done), lower, mid)
        done = ep.logical_or(upper - lower <= rtol * upper, trivial)
        if done.all().item():
            break
    eta = ep.where(trivial, 0.0, (lower + upper) / 2)
    return eta, SolveInfo(method="bisection", iterations=steps)


def verified(problem: RescalingProblem, eta: ep.Tensor) -> ep.Tensor:
    """``eta`` where its clipped norm is ``min(eps, reachable)`` to :data:`VERIFY_RTOL`, else
    (not differentiable) the bisection run to the dtype's resolution.

    For p other than 1, 2 and inf, ``|delta_i|^p`` of one sample can span more than
    the dtype's range (large p, or entries of ``delta`` decades apart): the lost
    coordinates rarely matter, but where they do, this notices.
    """
    norm = _ClippedNorm.build(problem.detached())
    achieved = norm.at(stop_gradient(eta))
    wrong = ep.logical_not((achieved - norm.target).abs() <= VERIFY_RTOL * norm.target)
    if not wrong.any().item():
        return eta
    exact, _ = bisection(problem, 0.0, FULL_BISECTION_STEPS)
    return ep.where(wrong, exact, eta)


def saturating_eta(problem: RescalingProblem) -> ep.Tensor:
    """Smallest ``eta`` at which every moving coordinate is clipped: ``max_i r_i / |delta_i|``."""
    d = flatten_batch(problem.delta).abs()
    room = problem.room()
    return ep.where(d > 0, room / nonzero_or_one(d), 0.0).max(axis=1)


def _pow(t: ep.Tensor, p: float) -> ep.Tensor:
    if p == 1:
        return t
    if p == 2:
        return t.square()
    return t**p
