"""Clipping-aware rescaling (CAR) for any Lp norm, with the baselines beside it.

Given inputs ``x`` in a box ``[lo, hi]`` and directions ``delta``, find per
sample the scale ``eta >= 0`` with

    || clip(x + eta * delta, lo, hi) - x ||_p == eps.

With ``r_i`` the room to the box along ``delta_i`` and ``t = eta^p`` the
left-hand side to the power p is ``g(t) = sum_i min(t |delta_i|^p, r_i^p)``:
continuous, non-decreasing, concave and piecewise linear, with breakpoints
``t_i = (r_i / |delta_i|)^p``. On the segment where the saturated set is fixed,
``g(t) = C + t S`` and ``eta = ((eps^p - C) / S)^(1/p)``.

Methods:

* ``"newton"`` (default): Newton's method on ``g`` from ``t = 0``. Because ``g`` is
  concave and piecewise linear the iterates never overshoot and stop exactly
  once the saturated set no longer changes: a few O(n) passes, no sort.
  An iteration cap hands unfinished samples to the sort solve.
* ``"sort"``: the algorithm of Rauber & Bethge (2020), generalised to any p:
  sort the breakpoints, prefix sums, find the segment. O(n log n).
* ``"bisection"``: the iterative baseline; bisection on ``eta`` of the actual
  clipped norm to a relative tolerance. Not differentiable.
* ``"naive"``: ``eps / ||delta||_p``, what attacks do when they ignore clipping.

For p = inf the exact solution is closed-form: ``eta = eps / max{|delta_i| : r_i >= eps}``.

Once the segment is known, ``eta`` is recomputed from ``C`` and ``S`` with
ordinary tensor operations, so gradients flow to ``x``, ``delta`` and ``eps``.

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware
Normalization and Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import eagerpy as ep
import numpy as np

from .tensors import (
    Bound,
    batch_view,
    compute_dtype,
    dtype_limits,
    dtype_name,
    flatten_batch,
    is_floating,
    lp_norms,
    needs_grad,
    room_along,
    select,
    stop_gradient,
)
from .validation import (
    as_bounds,
    as_eps,
    as_tensors,
    cast_like,
    check_batch,
    check_in_bounds,
    check_same_shape,
    parse_p,
)

Method = Literal["newton", "sort", "bisection", "naive"]
METHODS: tuple[str, ...] = ("newton", "sort", "bisection", "naive")
BISECTION_RTOL = 1e-7
"""Default bracket width of the bisection baseline: clipped norms within ~1e-7 relative."""
NEWTON_MAX_ITER = 32
"""Newton iterations before the remaining samples are solved by sorting (3-9 are typical)."""
VERIFY_RTOL = 1e-9
"""Relative accuracy of the clipped norm that :func:`clipping_aware_rescaling` checks for p
other than 1, 2 and inf (solved in float64) before it falls back to bisection."""
FULL_BISECTION_STEPS = 2200
"""Enough halvings to narrow ``[0, eta_max]`` to adjacent float64 numbers (2098 binades + 53)."""
FLOAT32_RANGE = 1e12
"""The float32 solves for p = 1 and 2 work on ``|delta|`` (p = 2: its square relative to the
largest), the room and ``eps`` unscaled: the public functions solve in float64 when a
sample's non-zero ``|delta|`` spans more than this factor, a non-zero ``eps`` is below its
inverse, the bounds are wider than it, or that span times the width exceeds 1e18."""


@dataclass(frozen=True)
class SolveInfo:
    """What a solve did: iterations (Newton) or steps (bisection), and fallback samples."""

    method: str
    iterations: int
    fallback_samples: int = 0


def clipping_aware_rescaling(
    x: Any,
    delta: Any,
    eps: Any,
    *,
    p: float | str = 2,
    bounds: Any = (0.0, 1.0),
    method: Method = "newton",
    bisection_rtol: float = BISECTION_RTOL,
    bisection_max_steps: int = 100,
) -> Any:
    """Scale ``eta`` with ``||clip(x + eta*delta, lo, hi) - x||_p == eps`` per sample.

    Args:
        x: Batch of points inside ``bounds``, shape ``(N, ...)``; a PyTorch,
            NumPy or JAX array or an EagerPy tensor.
        delta: Directions, same shape and type as ``x``.
        eps: Target norm, a float or one value per sample (length ``N``).
        p: Norm order, a float ``>= 1`` or infinity (``math.inf`` or ``"inf"``).
        bounds: ``(lo, hi)``, floats or tensors broadcastable to ``x``.
        method: ``"newton"`` (exact, default), ``"sort"`` (exact, the paper's
            algorithm), ``"bisection"`` (iterative baseline) or ``"naive"``.
        bisection_rtol: Relative width of the final ``eta`` bracket (bisection).
        bisection_max_steps: Step limit of the bisection.

    Returns:
        ``eta`` of shape ``(N, 1, ..., 1)``, the type of ``x`` and its dtype
        (half precision is computed in float32; float32 inputs of extreme
        range, see :data:`FLOAT32_RANGE`, and p other than 1, 2 and inf in
        float64, the latter checked to :data:`VERIFY_RTOL`). Where ``eps`` exceeds
        the largest attainable clipped norm (see :func:`reachable_norm`), the
        smallest ``eta`` that attains it.

    Raises:
        ValueError: for invalid arguments, and where ``eta`` does not fit the dtype
            of ``x``: it overflows (``delta`` tiny compared with ``eps`` and the room
            to the bounds) or is below the smallest normal number though not 0.
    """
    (x_, delta_), restore = as_tensors(x=x, delta=delta)
    xc, dc, lo, hi, eps_, p_ = _checked(x_, delta_, eps, p, bounds)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if not bisection_rtol > 0:
        raise ValueError(f"bisection_rtol must be > 0, got bisection_rtol={bisection_rtol!r}")
    if bisection_max_steps < 1:
        raise ValueError(
            f"bisection_max_steps must be >= 1, got bisection_max_steps={bisection_max_steps!r}"
        )
    general_p = p_ not in (1.0, 2.0, math.inf)
    if general_p or (p_ in (1.0, 2.0) and needs_float64(dc, eps_, lo, hi)):
        xc, dc, eps_, lo, hi = xc.float64(), dc.float64(), eps_.float64(), _f64(lo), _f64(hi)
    eta = solve_eta(
        xc,
        dc,
        eps_,
        p=p_,
        lo=lo,
        hi=hi,
        method=method,
        bisection_rtol=bisection_rtol,
        bisection_max_steps=bisection_max_steps,
    )
    if general_p and method in ("newton", "sort"):
        eta = _verified(xc, dc, eps_, eta, p_, lo, hi)
    out_dtype = x_.dtype if is_floating(x_) else xc.dtype
    eta = batch_view(eta, x_.ndim).astype(out_dtype)
    _check_representable(eta, xc, dc, eps_, p_, lo, hi)
    return restore(eta)


def reachable_norm(x: Any, delta: Any, *, p: float | str = 2, bounds: Any = (0.0, 1.0)) -> Any:
    """Largest attainable clipped norm ``sup_eta ||clip(x + eta*delta) - x||_p``, shape ``(N,)``.

    It is ``|| r * [delta != 0] ||_p`` with ``r`` the room to the box along ``delta``.
    """
    (x_, delta_), restore = as_tensors(x=x, delta=delta)
    xc, dc, lo, hi, _, p_ = _checked(x_, delta_, 0.0, p, bounds)
    return restore(reachable_norm_unchecked(xc, dc, p=p_, lo=lo, hi=hi, scaled=True))


def lp_norm(v: Any, p: float | str = 2) -> Any:
    """Per-sample Lp norm of a batch ``(N, ...)``, shape ``(N,)``, same tensor type as ``v``.

    Raises ValueError where a norm overflows the dtype (float32 for half precision).
    """
    (v_,), restore = as_tensors(v=v)
    p_ = parse_p(p)
    check_batch(v_, "v")
    norms = lp_norms(compute_dtype(v_), p_, scaled=True)
    if ep.isinf(norms).any().item():
        raise ValueError(f"the norm of v overflows {dtype_name(norms)} (p={p!r})")
    return restore(norms)


def reachable_norm_unchecked(
    x: ep.Tensor, delta: ep.Tensor, *, p: float, lo: Bound, hi: Bound, scaled: bool = False
) -> ep.Tensor:
    """:func:`reachable_norm` on EagerPy tensors without input checks (``scaled``: see
    :func:`~car_attacks.core.tensors.lp_norms`)."""
    room = ep.where(delta != 0, room_along(x, delta, lo, hi), 0.0)
    return lp_norms(room, p, scaled=scaled)


def needs_float64(delta: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound) -> bool:
    """Whether a p = 1 or 2 problem in float32 (``delta`` and ``eps`` of the compute dtype)
    is outside :data:`FLOAT32_RANGE`: its squares could lose coordinates or ``eps``, or the
    scales it passes through on the way (``t``, the breakpoints ``r_i / |delta_i|``, up to
    ``width max|delta| / min|delta|``) could leave float32's normal range."""
    if dtype_name(delta) == "float64":
        return False
    if ep.logical_and(eps > 0, eps < 1 / FLOAT32_RANGE).any().item():
        return True
    width = hi - lo
    widest = width if isinstance(width, float) else float(width.max().item())
    if widest > FLOAT32_RANGE:
        return True
    size = flatten_batch(delta).abs()
    # some non-zero |delta_i| below max |delta| / FLOAT32_RANGE (or, times widest, below
    # max |delta| / FLOAT32_RANGE^1.5), without dividing
    factor = max(1 / FLOAT32_RANGE, widest / FLOAT32_RANGE**1.5)
    below = size < size.max(axis=1, keepdims=True) * factor
    return bool(ep.logical_and(below, size > 0).any().item())


def solve_eta(
    x: ep.Tensor,
    delta: ep.Tensor,
    eps: ep.Tensor,
    *,
    p: float,
    lo: Bound,
    hi: Bound,
    method: str = "newton",
    bisection_rtol: float = BISECTION_RTOL,
    bisection_max_steps: int = 100,
) -> ep.Tensor:
    """The CAR scale ``eta`` of shape ``(N,)`` on EagerPy tensors, without input checks.

    This is the hot path used inside attacks; ``eps`` has shape ``(N,)``.
    """
    return solve_eta_with_info(
        x,
        delta,
        eps,
        p=p,
        lo=lo,
        hi=hi,
        method=method,
        bisection_rtol=bisection_rtol,
        bisection_max_steps=bisection_max_steps,
    )[0]


def solve_eta_with_info(
    x: ep.Tensor,
    delta: ep.Tensor,
    eps: ep.Tensor,
    *,
    p: float,
    lo: Bound,
    hi: Bound,
    method: str = "newton",
    bisection_rtol: float = BISECTION_RTOL,
    bisection_max_steps: int = 100,
) -> tuple[ep.Tensor, SolveInfo]:
    """:func:`solve_eta` and what the solve did (iterations, fallback samples)."""
    if method == "naive":
        norms = lp_norms(delta, p)
        return _safe_div(eps, norms), SolveInfo(method, 0)
    if method == "bisection":
        return _bisection(x, delta, eps, p, lo, hi, bisection_rtol, bisection_max_steps)
    if method not in ("newton", "sort"):
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if p == math.inf:
        return _linf_eta(x, delta, eps, lo, hi), SolveInfo(method, 0)
    if p not in (1.0, 2.0) and dtype_name(x) != "float64":
        # |delta|^p and r^p span p times the decades of the inputs: float32 underflows
        # for large p and small eps, so these p are solved in float64.
        eta, info = solve_eta_with_info(
            x.float64(),
            delta.float64(),
            eps.float64(),
            p=p,
            lo=_f64(lo),
            hi=_f64(hi),
            method=method,
        )
        return eta.astype(x.dtype), info

    detached = _PowerProblem.build(
        stop_gradient(x), stop_gradient(delta), stop_gradient(eps), p, _sg(lo), _sg(hi)
    )
    fallback, unfinished = 0, None
    if method == "newton":
        t, active_sum, iterations, unfinished = _newton(detached, NEWTON_MAX_ITER)
        if unfinished is not None:
            fallback = int(unfinished.astype(t.dtype).sum().item())
            t = ep.where(unfinished, _sort_t(detached), t)
    else:
        t, active_sum, iterations = _sort_t(detached), None, 0
    info = SolveInfo(method, iterations, fallback)

    if needs_grad(x, delta, eps, lo, hi):
        problem = _PowerProblem.build(x, delta, eps, p, lo, hi, reachable=detached.reachable)
        eta = problem.eta_from_saturation(t)
    elif active_sum is None:
        eta = detached.eta_from_saturation(t)
    else:
        eta = detached.eta_from_t(t, active_sum)
        if unfinished is not None:  # the samples the sort solved
            eta = ep.where(unfinished[:, 0], detached.eta_from_saturation(t), eta)
    # t = (eta d_scale / r_scale)^p overflowed (for p = 1: eta itself): report eta = inf
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

    x: ep.Tensor
    delta: ep.Tensor
    lo: Bound
    hi: Bound
    p: float
    dp: ep.Tensor  # (N, n)
    rp: ep.Tensor  # (N, n)
    target: ep.Tensor  # (N, 1): E = (eps / r_scale)^p, 0 where unreachable
    d_scale: ep.Tensor | float  # (N, 1)
    r_scale: ep.Tensor | float  # (N, 1)
    reachable: ep.Tensor  # (N, 1) bool

    @classmethod
    def build(
        cls,
        x: ep.Tensor,
        delta: ep.Tensor,
        eps: ep.Tensor,
        p: float,
        lo: Bound,
        hi: Bound,
        reachable: ep.Tensor | None = None,
    ) -> _PowerProblem:
        # the order of operations and the dels keep at most four x-sized tensors alive
        room = flatten_batch(room_along(x, delta, lo, hi))
        d = flatten_batch(delta).abs()
        d_scale: ep.Tensor | float = 1.0
        r_scale: ep.Tensor | float = 1.0
        if p != 1:
            d_scale = _nonzero_or_one(d.max(axis=1, keepdims=True))
            d = d / d_scale
        if p not in (1.0, 2.0):
            largest = stop_gradient(room).max(axis=1, keepdims=True)
            e = stop_gradient(eps).reshape((-1, 1))
            below = ep.logical_and(e > 0, e < largest)
            r_scale = ep.where(below, e, _nonzero_or_one(largest))
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
        return cls(x, delta, lo, hi, p, dp, rp, target, d_scale, r_scale, reachable)

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
        return self.eta_from_t(t + (self.target - g) / _nonzero_or_one(s), s)

    def eta_from_t(self, t: ep.Tensor, active_sum: ep.Tensor) -> ep.Tensor:
        """``eta = t^(1/p) r_scale / d_scale``; the saturating scale where the target is
        unreachable, or positive with nothing left active (``S = 0``; a zero target is met
        by ``eta = 0`` even where rounding left every ``rp`` at 0)."""
        t = ep.maximum(t, 0.0)
        positive = t > 0
        root = ep.where(positive, _nonzero_or_one(t) ** (1.0 / self.p), 0.0)
        eta = (root * self.r_scale / self.d_scale)[:, 0]
        stuck = ep.logical_and(active_sum <= 0, self.target > 0)
        use_max = ep.logical_or(ep.logical_not(self.reachable), stuck)[:, 0]
        if use_max.any().item():
            eta = ep.where(use_max, _saturating_eta(self.x, self.delta, self.lo, self.hi), eta)
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
        step = ep.maximum((problem.target - g) / _nonzero_or_one(s), 0.0)
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
    on_segment = (problem.target - c_prev) / _nonzero_or_one(s_prev)
    # Rounding can leave g just below E at the last breakpoint (E == max of g): then
    # every moving coordinate saturates, at the largest finite breakpoint.
    n_finite = finite.astype(order.dtype).sum(axis=1, keepdims=True)
    largest = bp_sorted.take_along_axis(ep.maximum(n_finite - 1, 0), axis=1)
    return ep.where(k >= n_finite, ep.where(n_finite > 0, largest, 0.0), on_segment)


def _linf_eta(x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """Exact L-inf scale: ``eta = e / max{|delta_i| : r_i >= e}``, ``e = min(eps, reachable)``."""
    room = flatten_batch(room_along(x, delta, lo, hi))
    d = flatten_batch(delta).abs()
    reach = (room * d.sign()).max(axis=1)
    target = ep.minimum(eps, reach)
    fastest = select(room >= target.reshape((-1, 1)), d, 0.0).max(axis=1)
    return ep.where(fastest > 0, target / _nonzero_or_one(fastest), 0.0)


def _bisection(
    x: ep.Tensor,
    delta: ep.Tensor,
    eps: ep.Tensor,
    p: float,
    lo: Bound,
    hi: Bound,
    rtol: float,
    max_steps: int,
) -> tuple[ep.Tensor, SolveInfo]:
    """The iterative baseline: bisection on ``eta`` of the clipped norm.

    Finds the smallest ``eta`` whose clipped norm reaches ``min(eps, reachable)``
    to a relative bracket width ``rtol``. Each step evaluates the norm of the
    clipped change ``min(eta |delta_i|, r_i)`` (equal to ``clip(x + eta delta) - x``
    but without the cancellation of ``x + eta delta - x`` in low precision).
    """
    x, delta, eps = stop_gradient(x), stop_gradient(delta), stop_gradient(eps)
    lo, hi = _sg(lo), _sg(hi)
    # a bracket narrower than a few ulps cannot be resolved in the input's dtype
    rtol = max(rtol, 4 * float(np.finfo(np.dtype(dtype_name(x))).eps))
    speed = flatten_batch(delta).abs()
    room = ep.where(speed > 0, flatten_batch(room_along(x, delta, lo, hi)), 0.0)
    target = ep.minimum(eps, lp_norms(room, p))
    lower = ep.zeros_like(eps)
    upper = _saturating_eta(x, delta, lo, hi)
    trivial = ep.logical_or(target <= 0, upper <= 0)
    done = trivial
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the count is reported
        mid = (lower + upper) / 2
        reached = lp_norms(ep.minimum(mid.reshape((-1, 1)) * speed, room), p) >= target
        # converged samples stay put, so a sample's result does not depend on the batch
        upper = ep.where(ep.logical_and(reached, ep.logical_not(done)), mid, upper)
        lower = ep.where(ep.logical_or(reached, done), lower, mid)
        done = ep.logical_or(upper - lower <= rtol * upper, trivial)
        if done.all().item():
            break
    eta = ep.where(trivial, 0.0, (lower + upper) / 2)
    return eta, SolveInfo("bisection", steps)


def _check_representable(
    eta: ep.Tensor, x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, p: float, lo: Bound, hi: Bound
) -> None:
    """ValueError where ``eta`` (in the output dtype) overflows, or lies below the smallest
    normal number although the answer is not 0 (``eps > 0`` and a reachable norm > 0)."""
    tiny, largest = dtype_limits(eta)
    flat = eta.reshape((-1,))
    wrong = ep.isinf(flat)
    if wrong.any().item():
        problem = "delta is too small for eps and the room to the bounds; scale delta up"
    else:
        wrong = ep.logical_and(flat < tiny, eps > 0)
        if not wrong.any().item():
            return
        wrong = ep.logical_and(wrong, reachable_norm_unchecked(x, delta, p=p, lo=lo, hi=hi) > 0)
        if not wrong.any().item():
            return
        problem = "delta is too large for eps; scale delta down"
    raise ValueError(
        f"eta does not fit {dtype_name(eta)} (range {tiny:g} .. {largest:g}) for "
        f"{int(wrong.astype(x.dtype).sum().item())} sample(s): {problem} or pass float64 inputs"
    )


def _verified(
    x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, eta: ep.Tensor, p: float, lo: Bound, hi: Bound
) -> ep.Tensor:
    """``eta`` where its clipped norm is ``min(eps, reachable)`` to :data:`VERIFY_RTOL`, else
    (not differentiable) the bisection run to the dtype's resolution.

    For p other than 1, 2 and inf, ``|delta_i|^p`` of one sample can span more than
    the dtype's range (large p, or entries of ``delta`` decades apart): the lost
    coordinates rarely matter, but where they do, this notices.
    """
    x, delta, eps = stop_gradient(x), stop_gradient(delta), stop_gradient(eps)
    lo, hi = _sg(lo), _sg(hi)
    speed = flatten_batch(delta).abs()
    room = ep.where(speed > 0, flatten_batch(room_along(x, delta, lo, hi)), 0.0)
    target = ep.minimum(eps, lp_norms(room, p))
    achieved = lp_norms(ep.minimum(stop_gradient(eta).reshape((-1, 1)) * speed, room), p)
    wrong = ep.logical_not((achieved - target).abs() <= VERIFY_RTOL * target)
    if not wrong.any().item():
        return eta
    exact, _ = _bisection(x, delta, eps, p, lo, hi, 0.0, FULL_BISECTION_STEPS)
    return ep.where(wrong, exact, eta)


def _saturating_eta(x: ep.Tensor, delta: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """Smallest ``eta`` at which every moving coordinate is clipped: ``max_i r_i / |delta_i|``."""
    d = flatten_batch(delta).abs()
    room = flatten_batch(room_along(x, delta, lo, hi))
    return ep.where(d > 0, room / _nonzero_or_one(d), 0.0).max(axis=1)


def _checked(
    x: ep.Tensor, delta: ep.Tensor, eps: Any, p: Any, bounds: Any
) -> tuple[ep.Tensor, ep.Tensor, Bound, Bound, ep.Tensor, float]:
    """Validate the public arguments; return them in the compute dtype."""
    p_ = parse_p(p)
    check_batch(x, "x")
    check_batch(delta, "delta")
    check_same_shape(x, delta, "x", "delta")
    xc = compute_dtype(x)
    dc = cast_like(compute_dtype(delta), xc, "delta")
    lo, hi = as_bounds(bounds, xc)
    check_in_bounds(xc, lo, hi, "x")
    return xc, dc, lo, hi, as_eps(eps, xc), p_


def _pow(t: ep.Tensor, p: float) -> ep.Tensor:
    if p == 1:
        return t
    if p == 2:
        return t.square()
    return t**p


def _nonzero_or_one(t: ep.Tensor) -> ep.Tensor:
    return ep.where(t > 0, t, ep.ones_like(t))


def _safe_div(a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
    return ep.where(b > 0, a / _nonzero_or_one(b), 0.0)


def _f64(bound: Bound) -> Bound:
    return bound if isinstance(bound, float) else bound.float64()


def _sg(bound: Bound) -> Bound:
    return bound if isinstance(bound, float) else stop_gradient(bound)
