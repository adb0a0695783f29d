"""The soft threshold of the L1-ball ∩ box projection: ``h(lam) = eps``.

``h(lam) = sum_i min((a_i - lam)_+, r_i)`` (``a = |w|``, ``r`` the room to the box)
is piecewise linear and non-increasing, with breakpoints ``a_i - r_i`` (slope
down by one) and ``a_i`` (slope up by one), so neither convex nor concave. Newton
with the right derivative ``-#{i : a_i - r_i <= lam < a_i}``, safeguarded by
bisection inside the bracket ``h(lo) > eps >= h(hi)``, stops exactly once a Newton
step crosses no breakpoint: the active and saturated sets at both ends agree and
``lam`` is the root of that segment,
``lam = (sum_saturated r + sum_active a - eps) / |active|``. It starts from the sort
solve on a strided subsample (``n / 16`` coordinates), typically 3-8 steps before the end
(the structure of the CAR Newton solver, :mod:`~car_attacks.core.solvers`; cf. the
Newton-type methods for the continuous quadratic knapsack, Cominetti, Mascarenhas
and Silva, Math. Prog. Comp. 2014). Samples still moving after
:data:`L1_NEWTON_MAX_ITER` steps are solved by sorting the breakpoints.
"""

from __future__ import annotations

import eagerpy as ep

L1_NEWTON_MAX_ITER = 32
"""Newton steps before the remaining samples are solved by sorting (2-8 are typical)."""

L1_ESTIMATE_STRIDE = 16
"""Every how many coordinates the starting ``lam`` is estimated from (a sort on ``n / 16``)."""


def l1_threshold(size: ep.Tensor, room: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
    """``lam`` of shape ``(N, 1)`` with ``h(lam) = sum_i min((a_i - lam)_+, r_i) = eps``.

    Safeguarded Newton on ``h`` (see the module docstring); ``size`` is ``a``, ``room``
    is ``r`` (both ``(N, n)``, non-negative), ``eps`` is ``(N,)``. Each sample is
    solved on its own; rows with ``h(0) <= eps`` give ``lam = 0`` (callers mask them).
    Differentiable like the sort solve: the last step is the segment's closed form.
    """
    lam, done = _newton(size, room, eps.reshape((-1, 1)), L1_NEWTON_MAX_ITER)
    if done.all().item():
        return lam
    return ep.where(done, lam, l1_threshold_sort(size, room, eps))


def _newton(
    size: ep.Tensor, room: ep.Tensor, eps_col: ep.Tensor, max_iter: int
) -> tuple[ep.Tensor, ep.Tensor]:
    """``(lam, done)``, both ``(N, 1)``: safeguarded Newton iterates and where they are exact.

    The sets {a_i > lam} and {a_i - r_i > lam} (right derivative) only shrink as ``lam``
    grows, so equal counts at a point and at the Newton point computed from it mean
    no breakpoint lies between them: ``h`` is linear there and the Newton point is the
    exact root. ``h`` is not convex (concave kinks at ``a_i - r_i``), so a Newton point
    outside the bracket ``(lo, hi)`` (``h(lo) > eps >= h(hi)``) is replaced by bisection.
    """
    lo = ep.zeros_like(eps_col)
    hi = size.max(axis=1, keepdims=True)
    zero_count = (size < 0).sum(axis=1, keepdims=True)  # integer zeros, the counts' type
    count_lo, count_hi = (zero_count - 1, zero_count - 1), (zero_count, zero_count)
    lam = _estimate(size, room, eps_col)
    start = size - room  # where a coordinate leaves saturation; compared, never recomputed
    counts: tuple[ep.Tensor, ep.Tensor] | None = None
    was_newton = eps_col != eps_col  # all False (eps is never NaN here)
    done = was_newton
    for step in range(max_iter + 1):
        t = size - lam
        is_saturated = start > lam
        positive = (t > 0).sum(axis=1, keepdims=True)
        saturated = is_saturated.sum(axis=1, keepdims=True)
        # a where, not a minimum: no gradient to r_i = 0 from a tie with (a_i - lam)_+ = 0
        h = ep.where(is_saturated, room, ep.maximum(t, 0.0)).sum(axis=1, keepdims=True)
        # lam = 0 with h(0) <= eps: nothing to threshold (the callers mask these rows)
        exact = ep.logical_or(h == eps_col, ep.logical_and(lam == 0, h < eps_col))
        if counts is not None:
            same = ep.logical_and(positive == counts[0], saturated == counts[1])
            exact = ep.logical_or(exact, ep.logical_and(was_newton, same))
        done = ep.logical_or(done, exact)
        if step == max_iter or done.all().item():
            break
        counts = (positive, saturated)
        above = h > eps_col
        lo, hi = ep.where(above, lam, lo), ep.where(above, hi, lam)
        count_lo = (ep.where(above, positive, count_lo[0]), ep.where(above, saturated, count_lo[1]))
        count_hi = (ep.where(above, count_hi[0], positive), ep.where(above, count_hi[1], saturated))
        n_active = (positive - saturated).astype(lam.dtype)
        newton = ep.maximum(lam + (h - eps_col) / ep.where(n_active > 0, n_active, 1.0), 0.0)
        # (a step lost to rounding, newton == lam, is exact too: the counts then agree)
        forward = ep.logical_or(newton > lo, ep.logical_or(newton == lam, newton == 0))
        was_newton = ep.logical_and(n_active > 0, ep.logical_and(forward, newton < hi))
        new = ep.where(was_newton, newton, (lo + hi) / 2)
        # flat above eps (every moving coordinate saturated): go to the next breakpoint
        flat = ep.logical_and(n_active == 0, above)
        if flat.any().item():
            following = ep.where(is_saturated, start, hi).min(axis=1, keepdims=True)
            new = ep.where(flat, following, new)
        # no breakpoint inside the bracket (equal counts at its ends): the root is the
        # segment's, the Newton point (clipped: float sums of h are noisy at ulp scale);
        # a bracket one ulp wide (rounding near a breakpoint): ``hi`` is exact to rounding
        mid = (lo + hi) / 2
        one_segment = ep.logical_and(
            ep.logical_and(count_lo[0] == count_hi[0], count_lo[1] == count_hi[1]), n_active > 0
        )
        tight = ep.logical_and(ep.logical_not(was_newton), ep.logical_or(mid <= lo, mid >= hi))
        settled = ep.where(one_segment, ep.minimum(ep.maximum(newton, lo), hi), hi)
        lam = ep.where(done, lam, ep.where(ep.logical_or(one_segment, tight), settled, new))
        done = ep.logical_or(done, ep.logical_or(one_segment, tight))
    return lam, done


def _estimate(size: ep.Tensor, room: ep.Tensor, eps_col: ep.Tensor) -> ep.Tensor:
    """A starting ``lam``: the sort solve on every :data:`L1_ESTIMATE_STRIDE`-th coordinate
    with ``eps`` scaled by the share of coordinates kept (per sample, deterministic)."""
    n = size.shape[1]
    if n < 2 * L1_ESTIMATE_STRIDE:
        return ep.zeros_like(eps_col)
    kept = size[:, ::L1_ESTIMATE_STRIDE]
    share = kept.shape[1] / n
    return l1_threshold_sort(kept, room[:, ::L1_ESTIMATE_STRIDE], eps_col.reshape((-1,)) * share)


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
