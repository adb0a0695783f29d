"""Exact Euclidean projections onto ``{v : ||v - x0||_p <= eps} ∩ [lo, hi]``.

Most attack libraries project onto the Lp ball and then clip to the box. That
point is in the set, but it is not the closest one (and for L1 the common
"projection" is a rescaling). The exact projections, per sample:

* L-inf: ``clip(z, max(lo, x0 - eps), min(hi, x0 + eps))``.
* L2: by the KKT conditions ``v = clip(x0 + eta (z - x0))`` with ``eta = 1/(1 + mu)``
  in (0, 1]; ``eta = 1`` if ``clip(z)`` is already in the ball, otherwise ``eta``
  solves ``||clip(x0 + eta (z - x0)) - x0||_2 = eps``, which is exactly the
  clipping-aware rescaling equation.
* L1: a box-aware soft threshold ``v_i = x0_i + sign(w_i) min((|w_i| - lam)_+, r_i)``,
  ``w = z - x0``, ``r_i`` the room to the box along ``w_i``, with ``lam >= 0`` chosen
  so that the L1 norm is ``eps`` (a continuous quadratic knapsack, solved exactly by
  Newton on the piecewise-linear norm in ``lam``, :mod:`~car_attacks.core.l1_threshold`).

On CPU tensors each projection is one call of a C kernel (the public function's checks in
its first pass; :func:`~car_attacks.core.native_newton.project`) wherever it builds, from
the first call; the rows it leaves, other inputs and gradients take the general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import torch

from . import fused_projection, native_newton
from .fused import FLOAT32_RANGE, NO_CHECKS, CheckLimits, as_dtype_float
from .l1_threshold import L1_NEWTON_MAX_ITER, EagerProblem, solve_threshold, with_gradient
from .l1_threshold import l1_threshold as l1_threshold
from .rescaling import needs_float64, solve_eta
from .solvers import NEWTON_MAX_ITER
from .tensors import (
    UNIT_BOUNDS,
    Bound,
    batch_view,
    clip_to_bounds,
    compute_dtype,
    compute_dtype_bound,
    flatten_batch,
    float64_bound,
    is_floating,
    lp_norms,
    needs_grad,
    room_along,
    stop_gradient,
)
from .validation import as_tensors, check_arguments, numpy_views, parse_p, plain_call

PROJECTION_NORMS: tuple[float, ...] = (1.0, 2.0, math.inf)


def project_lp_ball_box(
    x0: Any, z: Any, eps: Any, *, p: float | str, bounds: Any = UNIT_BOUNDS
) -> Any:
    """Closest point to ``z`` (in L2) in ``{v : ||v - x0||_p <= eps} ∩ [lo, hi]``, per sample.

    Args:
        x0: Centres of the balls, inside ``bounds``, shape ``(N, ...)``.
        z: Points to project, same shape and type as ``x0`` (may lie outside the box).
        eps: Ball radius, a float or one value per sample.
        p: 1, 2 or inf (``math.inf`` or ``"inf"``).
        bounds: ``(lo, hi)``, floats or tensors broadcastable to ``x0``.

    Returns:
        The projection, same type, shape and dtype as ``x0`` (float32 L2 inputs of
        extreme range are computed in float64, see
        :data:`~car_attacks.core.fused.FLOAT32_RANGE`).
    """
    common = _common_projection(x0, z, eps, p, bounds)
    if common is not None:
        return common
    return _project_checked(x0, z, eps, p, bounds)


def _project_checked(x0: Any, z: Any, eps: Any, p: Any, bounds: Any) -> Any:
    """:func:`project_lp_ball_box` with its checks one by one (or fused, see
    :func:`~car_attacks.core.validation.check_arguments`)."""
    (x0_, z_), restore = as_tensors(x0=x0, z=z)
    if parse_p(p) not in PROJECTION_NORMS:
        raise ValueError(f"p must be 1, 2 or inf for the exact projection, got p={p!r}")
    args = check_arguments(x0_, z_, eps, p, bounds, ("x0", "z"), difference=True)
    xc, zc, lo, hi, eps_ = args.x, args.other, args.lo, args.hi, args.eps
    span = None if args.stats is None else args.stats.span
    moved = zc - xc if span is None else zc  # with the span only its dtype is read
    if args.p == 2 and needs_float64(moved, eps_, lo, hi, span=span):
        xc, zc, eps_ = xc.float64(), zc.float64(), eps_.float64()
        lo, hi = float64_bound(lo), float64_bound(hi)
    projected = project_unchecked(xc, zc, eps_, p=args.p, lo=lo, hi=hi)
    return restore(projected.astype(x0_.dtype if is_floating(x0_) else xc.dtype))


def _common_projection(x0: Any, z: Any, eps: Any, p: Any, bounds: Any) -> Any:
    """:func:`project_lp_ball_box` for the common call by the C kernel, the checks in its
    first pass: the call :func:`~car_attacks.core.validation.plain_call` takes, on CPU
    float32/float64 tensors or NumPy arrays viewed as such
    (:func:`~car_attacks.core.validation.numpy_views`). ``None`` where the call is another
    one or a check fails (the general path then raises, in its order)."""
    views = numpy_views(x0, z, eps)
    if views is not None:
        projected = _common_projection(*views, p, bounds)
        return None if projected is None else projected.numpy()
    call = plain_call(x0, z, eps, p, bounds)
    if call is None or not native_newton.eligible(x0, z, call.lo, call.hi):
        return None
    checks = call.checks(x0)

    def general(x_left: torch.Tensor, z_left: torch.Tensor, e_left: torch.Tensor) -> Any:
        # checked again, and in float64 where those samples need it
        return _project_checked(x_left, z_left, e_left, call.p, (call.lo, call.hi))

    return _native_projection(x0, z, call.eps, call.p, call.lo, call.hi, checks, general)


def _project_native(
    x0: ep.Tensor,
    z: ep.Tensor,
    eps: ep.Tensor,
    p: float,
    lo: Bound,
    hi: Bound,
    general: Callable[[ep.Tensor, ep.Tensor, ep.Tensor, Bound, Bound], ep.Tensor],
) -> ep.Tensor | None:
    """:func:`project_unchecked`'s projection for p = 1, 2 or inf by the C kernel (no
    checks), the samples it leaves by ``general``; ``None`` where the kernel does not take
    the call (see :func:`_native_projection`; no CPU PyTorch float32/float64 tensors, tensor
    bounds, a gradient needed)."""
    if not native_newton.eligible(x0.raw, z.raw, lo, hi) or needs_grad(x0, z, eps):
        return None
    assert isinstance(lo, float) and isinstance(hi, float)  # eligible checked

    def general_raw(x_left: torch.Tensor, z_left: torch.Tensor, e_left: torch.Tensor) -> Any:
        return general(ep.astensor(x_left), ep.astensor(z_left), ep.astensor(e_left), lo, hi).raw

    projected = _native_projection(x0.raw, z.raw, eps.raw, p, lo, hi, NO_CHECKS, general_raw)
    return None if projected is None else ep.astensor(projected)


def _native_projection(
    x0: torch.Tensor,
    z: torch.Tensor,
    eps: torch.Tensor,
    p: float,
    lo: float,
    hi: float,
    checks: CheckLimits,
    general: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any],
) -> torch.Tensor | None:
    """The projection by :func:`~car_attacks.core.native_newton.project` with ``checks`` in
    its first pass, the samples it leaves (see
    :class:`~car_attacks.core.native_newton.Projected`) by ``general`` on those samples;
    ``None`` where the kernel could not run, a check failed, or float32 bounds are wider
    than :data:`~car_attacks.core.fused.FLOAT32_RANGE`."""
    if x0.dtype == torch.float32 and hi - lo > FLOAT32_RANGE:
        return None
    n = x0.shape[0]
    found = native_newton.project(
        x0.reshape(n, -1),
        z.reshape(n, -1),
        eps,
        p=p,
        lo=as_dtype_float(lo, x0),
        hi=as_dtype_float(hi, x0),
        max_iter=_max_iter(p),
        checks=checks,
    )
    if found is None or not found.clean:
        return None
    if found.left is not None:
        rows = found.left
        found.out[rows] = general(x0[rows], z[rows], eps[rows]).reshape(rows.shape[0], -1)
    return found.out.reshape(x0.shape)


def _max_iter(p: float) -> int:
    """The Newton steps the C kernel takes at most: the L2 solve's, the L1 threshold's (none
    for L-inf)."""
    return NEWTON_MAX_ITER if p == 2 else L1_NEWTON_MAX_ITER


def project_unchecked(
    x0: ep.Tensor,
    z: ep.Tensor,
    eps: ep.Tensor,
    *,
    p: float,
    lo: Bound,
    hi: Bound,
    method: str = "newton",
) -> ep.Tensor:
    """:func:`project_lp_ball_box` on EagerPy tensors without input checks; ``eps`` is ``(N,)``;
    ``method`` solves the L2 case's CAR equation (:func:`~car_attacks.core.rescaling.solve_eta`).
    Half precision (float16, bfloat16) is projected in float32 (L1 and L2 sum over the
    whole sample) and returned in the dtype of ``x0``."""
    x0_c = compute_dtype(x0)
    if x0_c is not x0 and p != math.inf:
        lo_c, hi_c = compute_dtype_bound(lo), compute_dtype_bound(hi)
        z_c, eps_c = compute_dtype(z), compute_dtype(eps)
        projected = project_unchecked(x0_c, z_c, eps_c, p=p, lo=lo_c, hi=hi_c, method=method)
        return projected.astype(x0.dtype)
    if p == math.inf:
        return project_linf(x0, z, eps, lo, hi)
    if p == 2:
        return project_l2(x0, z, eps, lo, hi, method=method)
    if p == 1:
        return project_l1(x0, z, eps, lo, hi)
    raise ValueError(f"p must be 1, 2 or inf for the exact projection, got p={p!r}")


def project_linf(x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """``clip(z, max(lo, x0 - eps), min(hi, x0 + eps))``."""
    native = _project_native(x0, z, eps, math.inf, lo, hi, _project_linf_general)
    return _project_linf_general(x0, z, eps, lo, hi) if native is None else native


def _project_linf_general(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound
) -> ep.Tensor:
    """:func:`project_linf` without the C kernel (differentiable)."""
    e = batch_view(eps, x0.ndim)
    return ep.minimum(ep.maximum(z, ep.maximum(x0 - e, lo)), ep.minimum(x0 + e, hi))


def project_l2(
    x0: ep.Tensor,
    z: ep.Tensor,
    eps: ep.Tensor,
    lo: Bound,
    hi: Bound,
    *,
    method: str = "newton",
) -> ep.Tensor:
    """``clip(x0 + eta (z - x0))`` with ``eta = min(1, CAR eta)`` (KKT of the L2 projection).

    ``method`` is the solver of the CAR equation (:func:`~car_attacks.core.rescaling.solve_eta`).
    """
    if method == "newton":
        native = _project_native(x0, z, eps, 2.0, lo, hi, _project_l2_general)
        if native is not None:
            return native
    return _project_l2_general(x0, z, eps, lo, hi, method=method)


def _project_l2_general(
    x0: ep.Tensor,
    z: ep.Tensor,
    eps: ep.Tensor,
    lo: Bound,
    hi: Bound,
    *,
    method: str = "newton",
) -> ep.Tensor:
    """:func:`project_l2` without the C kernel: the in-ball test and the output fused where
    :func:`~car_attacks.core.fused_projection.fusable_projection`, ``eta`` by ``method``."""
    fast = fused_projection.fusable_projection(x0, z, eps, lo, hi)
    inside = fused_projection.l2_inside(x0, z, eps, lo, hi) if fast else None
    clipped = clip_to_bounds(z, lo, hi) if inside is None else None
    if clipped is not None:
        inside = lp_norms(clipped - x0, 2.0, scaled=True) <= eps  # tiny moves must not square to 0
    assert inside is not None
    if inside.all().item():
        return clip_to_bounds(z, lo, hi) if clipped is None else clipped
    direction = z - x0
    eta = ep.minimum(solve_eta(x0, direction, eps, p=2.0, lo=lo, hi=hi, method=method), 1.0)
    if fast or clipped is None:
        return fused_projection.l2_output(x0, z, eta, inside, lo, hi)
    projected = clip_to_bounds(x0 + batch_view(eta, x0.ndim) * direction, lo, hi)
    if not inside.any().item():  # (a select is a full pass more)
        return projected
    return ep.where(batch_view(inside, x0.ndim), clipped, projected)


def project_l1(x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """Box-aware soft threshold ``x0 + sign(w) min((|w| - lam)_+, r)`` with L1 norm ``eps``."""
    native = _project_native(x0, z, eps, 1.0, lo, hi, _project_l1_general)
    if native is not None:
        return native
    return _project_l1_general(x0, z, eps, lo, hi)


def _project_l1_general(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound
) -> ep.Tensor:
    """:func:`project_l1` without the C kernel: fused passes where
    :func:`~car_attacks.core.fused_projection.fusable_projection`, else eager (differentiable)."""
    if fused_projection.fusable_projection(x0, z, eps, lo, hi):
        return fused_projection.project_l1_fused(x0, z, eps, lo, hi)
    direction = z - x0
    w = flatten_batch(direction)
    size = w.abs()
    room = flatten_batch(room_along(x0, direction, lo, hi))
    eps_col = eps.reshape((-1, 1))
    problem = EagerProblem(stop_gradient(size), stop_gradient(room))
    fixed_eps = stop_gradient(eps_col)
    state, first = problem.start(fixed_eps)
    inside = state.done  # h(0) = sum min(|w|, r) <= eps: the ball holds clip(z)
    if inside.all().item():
        return clip_to_bounds(z, lo, hi)
    lam = solve_threshold(problem, fixed_eps, state, first).lam
    lam = ep.where(inside, 0.0, with_gradient(lam, size, room, eps_col))
    magnitude = ep.minimum((size - lam).clip(0.0, math.inf), room)
    # With z far from x0, lam is close to |w| and |w| - lam carries ulps of |w|, far more
    # than of eps: shrink the rows whose norm rounding pushed past eps back onto the ball.
    total = magnitude.sum(axis=1, keepdims=True)
    over = total > eps_col
    if over.any().item():
        magnitude = magnitude * ep.where(over, eps_col / ep.where(over, total, 1.0), 1.0)
    # x0 + room can round one ulp past the bound; the clip only undoes that rounding
    return clip_to_bounds(x0 + (w.sign() * magnitude).reshape(x0.shape), lo, hi)
