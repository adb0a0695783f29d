"""Fused hot paths of the exact L1 and L2 ball ∩ box projections, compiled with ``torch.compile``.

Eager, one Newton step of the L1 threshold (:mod:`~car_attacks.core.l1_threshold`) costs
several passes over ``a = |z - x0|`` and the room ``r``, which are themselves computed
first. Here one kernel reads ``(x0, z)`` once per step and returns per sample
``h(lam) = sum_i min((a_i - lam)_+, r_i)``, the counts ``#{a_i > lam}`` and
``#{a_i - r_i > lam}``, the next breakpoint ``min{a_i - r_i > lam}`` and ``max_i a_i``; one
more writes the projection ``clip(x0 + sign(w) min((a - lam)_+, r) s)`` (``s`` the
rescaling of rows whose rounding overshot ``eps``). The L2 projection gets its in-ball
check ``||clip(z) - x0||_2 <= eps`` and its output ``clip(x0 + eta (z - x0))`` fused.

The elementwise maths is that of the eager path (sums accumulated in float64 in another
order), so results agree to rounding. Same rules as :mod:`~car_attacks.core.fused`:
compiled when :func:`~car_attacks.core.fused.compile_enabled` (``CAR_ATTACKS_COMPILE``),
PyTorch float32/float64 tensors of at least :data:`~car_attacks.core.fused.FUSED_MIN_SIZE`
values per sample, float bounds, and no gradient needed (the eager path is
differentiable). On the CPU the whole projection is a C kernel wherever one builds
(:func:`~car_attacks.core.native_newton.project`): these kernels then serve the samples it
leaves, and CUDA tensors.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import torch

from . import fused
from .fused import _Kernel, _row_sum, as_dtype_float
from .l1_threshold import (
    EXACT_FLOAT32_COUNT,
    EagerProblem,
    NewtonState,
    Sums,
    initial_state,
    newton_step,
    solve_threshold,
)
from .tensors import Bound, clip_to_bounds, needs_grad


def _room(x0: torch.Tensor, w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``r_i``: distance to the box along ``w_i`` (as ``tensors.room_along``)."""
    return torch.where(w >= 0, hi - x0, x0 - lo).clamp_min(0.0)


def _l1_sums(
    x0: torch.Tensor,
    z: torch.Tensor,
    lam: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    count_dtype: torch.dtype,
) -> tuple[Sums, torch.Tensor]:
    """The sums at ``lam`` (counts in ``count_dtype``, exact) and ``max a``; ``a = |z - x0|``."""
    w = z - x0
    size = w.abs()
    room = _room(x0, w, lo, hi)
    t = size - lam
    start = size - room
    saturated = start > lam
    positive = (t > 0).sum(dim=1, keepdim=True, dtype=count_dtype)
    n_saturated = saturated.sum(dim=1, keepdim=True, dtype=count_dtype)
    sums = Sums(
        h=_row_sum(torch.minimum(t.clamp_min(0.0), room)),
        positive=positive,
        saturated=n_saturated,
        active=(positive - n_saturated).to(lam.dtype),
        following=torch.where(saturated, start, math.inf).amin(dim=1, keepdim=True),
    )
    return sums, size.amax(dim=1, keepdim=True)


def _l1_start(
    x0: torch.Tensor,
    z: torch.Tensor,
    eps_col: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    count_dtype: Any,
) -> tuple[torch.Tensor, ...]:
    """One pass at ``lam = 0``: the initial :class:`NewtonState` and the sums there."""
    sums, largest = _l1_sums(x0, z, torch.zeros_like(eps_col), lo, hi, count_dtype)
    state = initial_state(sums, largest, eps_col, torch)
    return (*state, sums.h, sums.positive, sums.saturated, sums.active, sums.following)


def _l1_step(
    x0: torch.Tensor,
    z: torch.Tensor,
    eps_col: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    count_dtype: Any,
    *state: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One pass at ``state.lam`` and the Newton step: the next state, ``done`` and ``h``
    at ``state.lam`` and whether every row is done."""
    current = NewtonState(*state)
    sums, _ = _l1_sums(x0, z, current.lam, lo, hi, count_dtype)
    new, done, _ = newton_step(current, sums, eps_col, sums.following, torch)
    return (*new, done, sums.h, done.all())


def _l1_known_step(eps_col: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`_l1_step` with the sums at ``state.lam`` known (the last five ``values``)."""
    current = NewtonState(*values[:-5])
    sums = Sums(*values[-5:])
    new, done, _ = newton_step(current, sums, eps_col, sums.following, torch)
    return (*new, done, sums.h, done.all())


def _l1_output(
    x0: torch.Tensor,
    z: torch.Tensor,
    lam: torch.Tensor,
    scale: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> torch.Tensor:
    """``clip(x0 + sign(w) min((|w| - lam)_+, r) scale)``, ``w = z - x0`` (the clip only
    undoes the rounding of ``x0 + r``)."""
    w = z - x0
    magnitude = torch.minimum((w.abs() - lam).clamp_min(0.0), _room(x0, w, lo, hi)) * scale
    return (x0 + w.sign() * magnitude).clamp(lo, hi)


def _l2_clipped_square(
    x0: torch.Tensor, z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """``||clip(z) - x0||_2^2`` per row ``(N, 1)``, squares in float64 (float32 inputs:
    no square leaves float64's range)."""
    v = (z.clamp(lo, hi) - x0).to(torch.float64)
    return (v * v).sum(dim=1, keepdim=True)


def _l2_output(
    x0: torch.Tensor,
    z: torch.Tensor,
    eta: torch.Tensor,
    inside: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> torch.Tensor:
    """``clip(z)`` on the rows ``inside`` the ball, else ``clip(x0 + eta (z - x0))``."""
    return torch.where(inside, z.clamp(lo, hi), (x0 + eta * (z - x0)).clamp(lo, hi))


_L1_START = _Kernel(_l1_start)
_L1_STEP = _Kernel(_l1_step)
_L1_KNOWN_STEP = _Kernel(_l1_known_step)
_L1_OUTPUT = _Kernel(_l1_output)
_L2_CLIPPED_SQUARE = _Kernel(_l2_clipped_square)
_L2_OUTPUT = _Kernel(_l2_output)


def fusable_projection(x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound) -> bool:
    """Whether the fused projection applies (:func:`~car_attacks.core.fused.fusable`, and
    no gradient is needed through ``x0``, ``z`` or ``eps``)."""
    return (
        isinstance(x0, ep.PyTorchTensor)
        and isinstance(z, ep.PyTorchTensor)
        and fused.fusable(x0.raw, z.raw, lo, hi)
        and not needs_grad(x0, z, eps)
    )


class FusedProblem:
    """:class:`~car_attacks.core.l1_threshold.ThresholdProblem` of ``a = |z - x0|`` and the
    room: each Newton step one fused pass over ``x0`` and ``z`` (both ``(N, n)``)."""

    def __init__(
        self, x0: torch.Tensor, z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> None:
        self.x0, self.z, self.lo, self.hi = x0, z, lo, hi
        exact = x0.dtype == torch.float64 or self.n < EXACT_FLOAT32_COUNT
        self.count_dtype = x0.dtype if exact else torch.float64

    @property
    def n(self) -> int:
        return int(self.x0.shape[1])

    def start(self, eps_col: ep.Tensor) -> tuple[NewtonState, Sums]:
        out = _L1_START(self.x0, self.z, eps_col.raw, self.lo, self.hi, self.count_dtype)
        wrapped = [ep.astensor(t) for t in out]
        return NewtonState(*wrapped[:-5]), Sums(*wrapped[-5:])

    def step(
        self, state: NewtonState, eps_col: ep.Tensor, sums: Sums | None
    ) -> tuple[NewtonState, ep.Tensor, ep.Tensor, ep.Tensor]:
        raw_state = [t.raw for t in state]
        if sums is None:
            out = _L1_STEP(
                self.x0, self.z, eps_col.raw, self.lo, self.hi, self.count_dtype, *raw_state
            )
        else:
            known = [sums.h, sums.positive, sums.saturated, sums.active, sums.following]
            out = _L1_KNOWN_STEP(eps_col.raw, *raw_state, *[t.raw for t in known])
        wrapped = [ep.astensor(t) for t in out]
        new, (done, h, finished) = NewtonState(*wrapped[:-3]), wrapped[-3:]
        return new, done, h, finished

    def subsample(self, stride: int) -> EagerProblem:
        return _eager_problem(self.x0[:, ::stride], self.z[:, ::stride], self.lo, self.hi)

    def parts(self) -> tuple[ep.Tensor, ep.Tensor]:
        return _eager_problem(self.x0, self.z, self.lo, self.hi).parts()


def _eager_problem(
    x0: torch.Tensor, z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> EagerProblem:
    """The eager problem of ``(x0, z)`` (``a`` and ``r`` computed as the kernels do)."""
    w = z - x0
    return EagerProblem(ep.astensor(w.abs()), ep.astensor(_room(x0, w, lo, hi)))


def _flat(
    x0: ep.Tensor, z: ep.Tensor, lo: Bound, hi: Bound
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x0`` and ``z`` as ``(N, n)`` and the bounds as 0-d tensors of their dtype (tensors,
    not floats: a compiled kernel then never bakes a bound in as a constant)."""
    n = x0.shape[0]
    assert isinstance(lo, float) and isinstance(hi, float)  # fusable_projection checked
    raw = x0.raw
    return (
        raw.detach().reshape(n, -1),
        z.raw.detach().reshape(n, -1),
        torch.tensor(as_dtype_float(lo, raw), dtype=raw.dtype, device=raw.device),
        torch.tensor(as_dtype_float(hi, raw), dtype=raw.dtype, device=raw.device),
    )


def project_l1_fused(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound
) -> ep.Tensor:
    """:func:`~car_attacks.core.projection.project_l1` with fused passes (see the module)."""
    xf, zf, lo_, hi_ = _flat(x0, z, lo, hi)
    problem = FusedProblem(xf, zf, lo_, hi_)
    eps_col = eps.reshape((-1, 1))
    state, first = problem.start(eps_col)
    inside = state.done  # h(0) <= eps: the ball holds clip(z)
    if inside.all().item():
        return clip_to_bounds(z, lo, hi)
    outcome = solve_threshold(problem, eps_col, state, first)
    lam = ep.where(inside, 0.0, outcome.lam)
    # the rows whose norm rounding pushed past eps are shrunk back onto the ball
    total = outcome.h
    over = total > eps_col
    scale = ep.where(over, eps_col / ep.where(over, total, 1.0), 1.0)
    out = _L1_OUTPUT(xf, zf, lam.raw, scale.raw, lo_, hi_)
    return ep.astensor(out.reshape(x0.shape))


def l2_inside(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, lo: Bound, hi: Bound
) -> ep.Tensor | None:
    """``||clip(z) - x0||_2 <= eps`` per sample ``(N,)`` in one pass (float32 inputs), else
    ``None``."""
    if x0.raw.dtype != torch.float32:
        return None
    xf, zf, lo_, hi_ = _flat(x0, z, lo, hi)
    square = _L2_CLIPPED_SQUARE(xf, zf, lo_, hi_)[:, 0]
    e = eps.raw.to(torch.float64)
    return ep.astensor(square <= e * e)


def l2_output(
    x0: ep.Tensor, z: ep.Tensor, eta: ep.Tensor, inside: ep.Tensor, lo: Bound, hi: Bound
) -> ep.Tensor:
    """``clip(z)`` where ``inside``, else ``clip(x0 + eta (z - x0))``, in one pass."""
    xf, zf, lo_, hi_ = _flat(x0, z, lo, hi)
    n = xf.shape[0]
    out = _L2_OUTPUT(xf, zf, eta.raw.reshape(n, 1), inside.raw.reshape(n, 1), lo_, hi_)
    return ep.astensor(out.reshape(x0.shape))
