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

This module checks the inputs and picks the solver; the solvers are in
:mod:`~car_attacks.core.solvers`.

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware
Normalization and Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, ParamSpec

import eagerpy as ep
import torch

from . import fused, native_newton
from .fused import FLOAT32_RANGE
from .solvers import (
    NEWTON_MAX_ITER,
    RescalingProblem,
    SolveInfo,
    bisection,
    eta_from_newton,
    linf_eta,
    naive_eta,
    solve_power,
    verified,
)
from .tensors import (
    UNIT_BOUNDS,
    Bound,
    batch_view,
    compute_dtype,
    compute_dtype_bound,
    dtype_limits,
    dtype_name,
    flatten_batch,
    is_floating,
    lp_norms,
    room_along,
)
from .validation import (
    CheckedArguments,
    PlainCall,
    as_tensors,
    check_arguments,
    check_batch,
    numpy_views,
    parse_p,
    plain_call,
)

Method = Literal["newton", "sort", "bisection", "naive"]
METHODS: tuple[str, ...] = ("newton", "sort", "bisection", "naive")
BISECTION_RTOL = 1e-7
"""Default bracket width of the bisection baseline: clipped norms within ~1e-7 relative."""
BISECTION_MAX_STEPS = 100
"""Default step limit of the bisection baseline."""

_Params = ParamSpec("_Params")


def clipping_aware_rescaling(
    x: Any,
    delta: Any,
    eps: Any,
    *,
    p: float | str = 2,
    bounds: Any = UNIT_BOUNDS,
    method: Method = "newton",
    bisection_rtol: float = BISECTION_RTOL,
    bisection_max_steps: int = BISECTION_MAX_STEPS,
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
        (half precision is computed in float32; float32 inputs of extreme range, see
        :data:`~car_attacks.core.fused.FLOAT32_RANGE`, and p other than 1, 2 and inf in
        float64, the latter checked to :data:`~car_attacks.core.solvers.VERIFY_RTOL`).
        Where ``eps`` exceeds the largest attainable clipped norm (see
        :func:`reachable_norm`), the smallest ``eta`` that attains it.

    Raises:
        ValueError: for invalid arguments, and where ``eta`` does not fit the dtype
            of ``x``: it overflows (``delta`` tiny compared with ``eps`` and the room
            to the bounds) or is below the smallest normal number though not 0.
    """
    if method == "newton":
        fast = _common_call(x, delta, eps, p, bounds, bisection_rtol, bisection_max_steps)
        if fast is not None:
            return fast
    (x_, delta_), restore = as_tensors(x=x, delta=delta)
    args = check_arguments(
        x_, delta_, eps, p, bounds, ("x", "delta"), first_pass=method == "newton"
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if not bisection_rtol > 0:
        raise ValueError(f"bisection_rtol must be > 0, got bisection_rtol={bisection_rtol!r}")
    if bisection_max_steps < 1:
        raise ValueError(
            f"bisection_max_steps must be >= 1, got bisection_max_steps={bisection_max_steps!r}"
        )
    problem = RescalingProblem(  # with the first pass of the solve where the checks ran it
        x=args.x,
        delta=args.other,
        eps=args.eps,
        p=args.p,
        lo=args.lo,
        hi=args.hi,
        first=None if args.stats is None else args.stats.first,
    )
    general_p = problem.p not in (1.0, 2.0, math.inf)
    too_wide = problem.p in (1.0, 2.0) and _needs_float64(args)
    if general_p or too_wide:
        problem = problem.float64()  # (without the first pass)
    eta, _ = _solve(problem, method, bisection_rtol, bisection_max_steps)
    if general_p and method in ("newton", "sort"):
        eta = verified(problem, eta)
    out_dtype = x_.dtype if is_floating(x_) else problem.x.dtype
    eta = batch_view(eta, x_.ndim).astype(out_dtype)
    _check_representable(eta, problem)
    return restore(eta)


def _common_call(
    x: Any, delta: Any, eps: Any, p: Any, bounds: Any, rtol: Any, max_steps: Any
) -> Any:
    """:func:`clipping_aware_rescaling` by Newton for the common call, on the PyTorch tensors
    themselves (no EagerPy around the checks and the closed form): the call
    :func:`~car_attacks.core.validation.plain_call` takes, on tensors the C kernels take
    (:func:`~car_attacks.core.native_newton.eligible`) or, with the compiler on, the fused
    kernels (:func:`~car_attacks.core.fused.eligible`), or NumPy arrays viewed as such
    (:func:`~car_attacks.core.validation.numpy_views`). The same ``eta`` as the general path
    to rounding (bit for bit where the same kernel solves); ``None`` where the call is
    another one or a check fails (the general path then raises, in its order)."""
    if not (type(rtol) is float and rtol > 0 and type(max_steps) is int and max_steps >= 1):
        return None
    views = numpy_views(x, delta, eps)
    if views is not None:  # NumPy arrays: the same call on PyTorch views of them
        eta = _common_call(*views, p, bounds, rtol, max_steps)
        return None if eta is None else eta.numpy()
    call = plain_call(x, delta, eps, p, bounds)
    if call is None:
        return None
    p_, lo, hi, eps_t = call.p, call.lo, call.hi, call.eps
    if native_newton.eligible(x, delta, lo, hi):
        eta_native = _native_call(x, delta, call)
        return (
            None if eta_native is None else _representable(eta_native, x, delta, eps_t, p_, lo, hi)
        )
    if not (fused.eligible(x, delta, lo, hi) and fused.compile_enabled()):
        return None
    stats = fused.checked_first_pass(
        x, delta, eps_t, p=p_, lo=lo, hi=hi, below=call.below, above=call.above
    )
    if not stats.clean:
        return None
    problem = RescalingProblem(
        x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps_t), p=p_, lo=lo, hi=hi
    )
    if p_ == math.inf:
        first = stats.first if isinstance(stats.first, fused.LinfPass) else None
        eta = fused.linf_eta_fused(x, delta, eps_t, lo=lo, hi=hi, first=first)
    else:
        if stats.wide:
            problem = problem.float64()
        else:
            problem = dataclasses.replace(problem, first=stats.first)
        eta = solve_power(problem, "newton")[0].raw
    return _representable(eta, x, delta, eps_t, p_, lo, hi)


def _native_call(x: torch.Tensor, delta: torch.Tensor, call: PlainCall) -> torch.Tensor | None:
    """``eta`` ``(N,)`` of :func:`_common_call` by the C kernels (the Newton solve for p = 1
    or 2, the closed form for p = inf), the input checks in their first pass; ``None``
    where a check fails (or the kernel could not run)."""
    n, p, lo, hi, eps = x.shape[0], call.p, call.lo, call.hi, call.eps
    lo_, hi_ = fused.as_dtype_float(lo, x), fused.as_dtype_float(hi, x)
    checks = call.checks(x)
    if p == math.inf:
        flat = (x.reshape(n, -1), delta.reshape(n, -1))
        scale = native_newton.linf_eta(*flat, eps, lo=lo_, hi=hi_, checks=checks)
        return None if scale is None or not scale.clean else scale.eta
    checked = native_newton.checked_newton_power(
        x.reshape(n, -1),
        delta.reshape(n, -1),
        eps.reshape(n, 1),
        p=p,
        lo=lo_,
        hi=hi_,
        max_iter=NEWTON_MAX_ITER,
        checks=checks,
    )
    if checked is None or not checked.clean:
        return None
    problem = RescalingProblem(
        x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps), p=p, lo=lo, hi=hi
    )
    if fused.float64_needed(x, hi - lo, checked.wide):
        return solve_power(problem.float64(), "newton")[0].raw
    if not checked.run.finished or checked.run.tiny:  # the sort finishes the rare
        return solve_power(problem, "newton")[0].raw  # unconverged sample; a tiny eps scales
    eta: torch.Tensor = eta_from_newton(problem, checked.run)[0].raw
    return eta


def _representable(
    eta: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    p: float,
    lo: float,
    hi: float,
) -> torch.Tensor:
    """``eta`` shaped like a batch of ``x`` in ``x``'s dtype, checked as by
    :func:`_check_representable` (one host sync where every value is normal)."""
    eta = eta.reshape((eta.shape[0],) + (1,) * (x.ndim - 1)).to(x.dtype)
    info = torch.finfo(eta.dtype)
    smallest, largest = (float(v) for v in torch.aminmax(eta))
    if not info.tiny <= smallest <= largest < info.max:  # rare (or NaN): the general check
        problem = RescalingProblem(
            x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps), p=p, lo=lo, hi=hi
        )
        _check_representable(ep.astensor(eta), problem)
    return eta


def _needs_float64(args: CheckedArguments) -> bool:
    """:func:`needs_float64` of checked arguments of p = 1 or 2 (found by the fused checks,
    where they ran)."""
    if args.stats is not None and args.stats.wide is not None:
        return args.stats.wide
    span = None if args.stats is None else args.stats.span
    return needs_float64(args.other, args.eps, args.lo, args.hi, span=span)


def reachable_norm(x: Any, delta: Any, *, p: float | str = 2, bounds: Any = UNIT_BOUNDS) -> Any:
    """Largest attainable clipped norm ``sup_eta ||clip(x + eta*delta) - x||_p``, shape ``(N,)``.

    It is ``|| r * [delta != 0] ||_p`` with ``r`` the room to the box along ``delta``.
    """
    (x_, delta_), restore = as_tensors(x=x, delta=delta)
    args = check_arguments(x_, delta_, 0.0, p, bounds, ("x", "delta"))
    return restore(
        reachable_norm_unchecked(args.x, args.other, p=args.p, lo=args.lo, hi=args.hi, scaled=True)
    )


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


def needs_float64(
    delta: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound, *, span: fused.Span | None = None
) -> bool:
    """Whether a p = 1 or 2 problem in float32 (``delta`` and ``eps`` of the compute dtype)
    is outside :data:`~car_attacks.core.fused.FLOAT32_RANGE`: its squares could lose
    coordinates or ``eps``, or the scales it passes through on the way (``t``, the
    breakpoints ``r_i / |delta_i|``, up to ``width max|delta| / min|delta|``) could leave
    float32's normal range. ``span``: the largest and smallest non-zero ``|delta_i|`` per
    sample, where the fused checks found them."""
    if dtype_name(delta) == "float64":
        return False
    width = hi - lo
    widest = width if isinstance(width, float) else float(width.max().item())
    if widest > FLOAT32_RANGE:
        return True
    # some non-zero |delta_i| below max |delta| / FLOAT32_RANGE (or, times widest, below
    # max |delta| / FLOAT32_RANGE^1.5), without dividing
    factor, smallest_eps = fused.float64_thresholds(widest)
    if span is not None and isinstance(eps.raw, torch.Tensor):  # one test, one sync
        tiny_eps = (eps.raw > 0) & (eps.raw < smallest_eps)
        return bool((tiny_eps | (span.smallest < span.largest * factor)).any())
    if ep.logical_and(eps > 0, eps < smallest_eps).any().item():
        return True
    if span is not None:
        return bool((span.smallest < span.largest * factor).any())
    size = flatten_batch(delta).abs()
    below = size < size.max(axis=1, keepdims=True) * factor
    return bool(ep.logical_and(below, size > 0).any().item())


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
    bisection_max_steps: int = BISECTION_MAX_STEPS,
) -> tuple[ep.Tensor, SolveInfo]:
    """The CAR scale ``eta`` of shape ``(N,)`` on EagerPy tensors, without input checks
    (``eps`` has shape ``(N,)``), and what the solve did (iterations, fallback samples).

    Half precision (float16, bfloat16) is solved in float32, as by
    :func:`clipping_aware_rescaling` (its sums overflow: 150,528 values of an ImageNet
    image sum past float16's 65,504), and ``eta`` is returned in the dtype of ``x`` (where
    it falls below float16's smallest normal number, 6.1e-5, it keeps fewer digits).
    NumPy arrays go to the C kernels through zero-copy PyTorch views where those take the
    problem (:func:`_numpy_views_for_kernels`)."""
    views = _numpy_views_for_kernels(x, delta, eps, lo, hi) if method == "newton" else None
    if views is not None:
        eta_view, info = solve_eta_with_info(*views, p=p, lo=lo, hi=hi, method=method)
        return ep.astensor(eta_view.raw.numpy()), info
    x_c = compute_dtype(x)
    problem = RescalingProblem(
        x=x_c,
        delta=compute_dtype(delta),
        eps=compute_dtype(eps),
        p=p,
        lo=compute_dtype_bound(lo),
        hi=compute_dtype_bound(hi),
    )
    eta, info = _solve(problem, method, bisection_rtol, bisection_max_steps)
    return (eta if x_c is x else eta.astype(x.dtype)), info


def _numpy_views_for_kernels(
    x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound
) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor] | None:
    """PyTorch views of EagerPy NumPy tensors (:func:`~car_attacks.core.validation.numpy_views`)
    where float bounds and the C kernels take them, else ``None``."""
    if not (isinstance(x, ep.NumPyTensor) and isinstance(lo, float) and isinstance(hi, float)):
        return None
    views = numpy_views(x.raw, delta.raw, eps.raw)
    if views is None or not isinstance(views[2], torch.Tensor):
        return None
    if not native_newton.eligible(views[0], views[1], lo, hi):
        return None
    x_view, delta_view, eps_view = views
    return ep.astensor(x_view), ep.astensor(delta_view), ep.astensor(eps_view)


def _solve(
    problem: RescalingProblem, method: str, bisection_rtol: float, bisection_max_steps: int
) -> tuple[ep.Tensor, SolveInfo]:
    """:func:`solve_eta_with_info` of a :class:`~car_attacks.core.solvers.RescalingProblem`."""
    if method == "naive":
        return naive_eta(problem), SolveInfo(method=method, iterations=0)
    if method == "bisection":
        return bisection(problem, bisection_rtol, bisection_max_steps)
    if method not in ("newton", "sort"):
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if problem.p == math.inf:
        return linf_eta(problem), SolveInfo(method=method, iterations=0)
    if problem.p not in (1.0, 2.0) and dtype_name(problem.x) != "float64":
        # |delta|^p and r^p span p times the decades of the inputs: float32 underflows
        # for large p and small eps, so these p are solved in float64.
        eta, info = solve_power(problem.float64(), method)
        return eta.astype(problem.x.dtype), info
    return solve_power(problem, method)


def _without_info(
    solve: Callable[_Params, tuple[ep.Tensor, SolveInfo]],
) -> Callable[_Params, ep.Tensor]:
    """``solve`` returning only ``eta``."""

    def solve_eta(*args: _Params.args, **kwargs: _Params.kwargs) -> ep.Tensor:
        """:func:`solve_eta_with_info` without the info: the CAR scale ``eta`` of shape
        ``(N,)`` on EagerPy tensors, without input checks; the hot path inside attacks."""
        return solve(*args, **kwargs)[0]

    return solve_eta


solve_eta = _without_info(solve_eta_with_info)


def _check_representable(eta: ep.Tensor, problem: RescalingProblem) -> None:
    """ValueError where ``eta`` (in the output dtype) overflows, or lies below the smallest
    normal number although the answer is not 0 (``eps > 0`` and a reachable norm > 0)."""
    tiny, largest = dtype_limits(eta)
    flat = eta.reshape((-1,))
    # one test (one sync) for the usual case: every eta finite and normal or 0
    if not ep.logical_or(flat >= largest, flat < tiny).any().item():
        return
    wrong = ep.isinf(flat)
    if wrong.any().item():
        advice = "delta is too small for eps and the room to the bounds; scale delta up"
    else:
        wrong = ep.logical_and(flat < tiny, problem.eps > 0)
        if not wrong.any().item():
            return
        reachable = reachable_norm_unchecked(
            problem.x, problem.delta, p=problem.p, lo=problem.lo, hi=problem.hi
        )
        wrong = ep.logical_and(wrong, reachable > 0)
        if not wrong.any().item():
            return
        advice = "delta is too large for eps; scale delta down"
    n_wrong = int(wrong.astype(problem.x.dtype).sum().item())
    raise ValueError(
        f"eta does not fit {dtype_name(eta)} (range {tiny:g} .. {largest:g}) for "
        f"{n_wrong} sample(s): {advice} or pass float64 inputs"
    )
