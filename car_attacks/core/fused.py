"""Fused hot paths of the CAR solve for PyTorch tensors, compiled with ``torch.compile``.

Eager tensor code spends one pass over memory per operation: one Newton iteration on
``g(t) = sum_i min(t dp_i, rp_i)`` (see :mod:`~car_attacks.core.solvers`) costs about ten.
Here each kernel is one plain PyTorch function that reads ``x`` and ``delta`` once and
returns per-sample sums; inductor (C++/OpenMP on CPU) fuses it into one loop. The
elementwise maths is exactly that of the eager solvers (the per-sample sums are accumulated
in float64 in another order), so results agree to the solvers' tolerances.

Kernels are compiled on first use with dynamic shapes (no recompilation per batch size;
inductor's on-disk cache reuses the code across processes). Where compiling fails, one
warning is issued and the eager solvers run from then on (a kernel that failed mid-solve
runs its function eagerly once). Compilation is opt-in: ``CAR_ATTACKS_COMPILE=1`` turns it
on (the first calls of a process compile for 10-20 s on a 2-core CPU, which pays off only
in long runs on large inputs; measured in an evaluation run of 20 CIFAR images, compiling
cost more than the eager solve it saved); problems below :data:`FUSED_MIN_SIZE` values per
sample always run the eager solvers.

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware Normalization and
Rescaling", arXiv:2007.07677, 2020 (the equation); Newton on the concave piecewise-linear
``g`` as in :func:`~car_attacks.core.solvers.solve_power`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

COMPILE_ENV = "CAR_ATTACKS_COMPILE"
"""Environment variable: ``0`` runs the fused kernels eagerly (no compiler)."""
FUSED_MIN_SIZE = 1024
"""Values per sample from which the fused path is used (below, the eager solvers are about
as fast). Per sample, not per batch: a sample takes the same path in any batch."""

_state: dict[str, Any] = {"failed": False, "compile_s": {}}


def compile_enabled() -> bool:
    """Whether kernels are compiled (not disabled by :data:`COMPILE_ENV`, no failure yet)."""
    return os.environ.get(COMPILE_ENV, "0") == "1" and not _state["failed"]


def compile_seconds() -> dict[str, float]:
    """Seconds the first (compiling) call of each kernel took in this process, by name."""
    return dict(_state["compile_s"])


class _Kernel:
    """A PyTorch function compiled on its first call (dynamic shapes); eager where the
    compiler is off or failed (one warning per process)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        # contiguous, detached (never a view): views and strides would be guarded on and
        # recompile the kernel
        args = tuple(a.contiguous().detach() if isinstance(a, torch.Tensor) else a for a in args)
        if not compile_enabled():
            return self.fn(*args)
        first = self.compiled is None
        start = time.perf_counter()
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=True)
            out = self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
            _state["failed"] = True
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {exc}); the CAR solvers run "
                "eagerly (same results, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args)
        if first:
            _state["compile_s"][self.fn.__name__] = time.perf_counter() - start
        return out


def _room(x: torch.Tensor, delta: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``r_i``: distance to the box along ``delta_i`` (as ``tensors.room_along``)."""
    return torch.where(delta >= 0, hi - x, x - lo).clamp_min(0.0)


def _row_max_abs(v: torch.Tensor) -> torch.Tensor:
    """``max_i |v_i|`` per row, ``(N, 1)``."""
    return v.abs().amax(dim=1, keepdim=True)


def _power_sums(
    x: torch.Tensor,
    delta: torch.Tensor,
    t: torch.Tensor,
    d_scale: torch.Tensor,
    lo: float,
    hi: float,
    square: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass: ``g(t) = sum min(t dp, rp)``, the slope ``S(t) = sum_{t dp < rp} dp`` and
    ``sum rp`` with ``dp = (|delta| / d_scale)^p``, ``rp = r^p [dp > 0]``, p = 2 if ``square``."""
    d = delta.abs() / d_scale
    room = _room(x, delta, lo, hi)
    dp = d * d if square else d
    rp = (room * room if square else room) * (dp > 0)
    moved = t * dp
    g = _row_sum(torch.minimum(moved, rp))
    s = _row_sum(torch.where(rp - moved > 0, dp, 0.0))
    return g, s, _row_sum(rp)


def _row_sum(v: torch.Tensor) -> torch.Tensor:
    """Per-row sum ``(N, 1)`` accumulated in float64 (a fused loop adds sequentially, which
    in float32 loses about ``sqrt(n)`` ulps; eager PyTorch sums pairwise), in ``v``'s dtype."""
    return v.sum(dim=1, keepdim=True, dtype=torch.float64).to(v.dtype)


def _linf_reach(x: torch.Tensor, delta: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``max{r_i : delta_i != 0}`` per row, ``(N, 1)``."""
    return (_room(x, delta, lo, hi) * (delta != 0)).amax(dim=1, keepdim=True)


def _linf_fastest(
    x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor, lo: float, hi: float
) -> torch.Tensor:
    """``max{|delta_i| : r_i >= target}`` per row, ``(N, 1)``."""
    keep = _room(x, delta, lo, hi) >= target
    return torch.where(keep, delta.abs(), 0.0).amax(dim=1, keepdim=True)


def _input_stats(
    x: torch.Tensor, other: torch.Tensor, below: float, above: float, difference: bool
) -> tuple[torch.Tensor, ...]:
    """One pass of the input checks: the number of non-finite values of ``x`` and ``other``,
    of values of ``x`` outside ``[below, above]``, and per row the largest and the smallest
    non-zero ``|v|`` (inf where all are 0) of ``v = other`` (or ``other - x``: ``difference``)."""
    bad = (~(torch.isfinite(x) & torch.isfinite(other))).sum()
    outside = ((x < below) | (x > above)).sum()
    size = (other - x).abs() if difference else other.abs()
    smallest = torch.where(size > 0, size, float("inf")).amin(dim=1)
    return bad, outside, size.amax(dim=1), smallest


_INPUT_STATS = _Kernel(_input_stats)
_ROW_MAX_ABS = _Kernel(_row_max_abs)
_POWER_SUMS = _Kernel(_power_sums)
_LINF_REACH = _Kernel(_linf_reach)
_LINF_FASTEST = _Kernel(_linf_fastest)


def fusable(x: Any, delta: Any, lo: Any, hi: Any) -> bool:
    """Whether the fused path applies: the compiler is on (else the eager solvers run, with
    their smaller memory use), PyTorch float32/float64 tensors of at least
    :data:`FUSED_MIN_SIZE` values per sample and float bounds."""
    return (
        compile_enabled()
        and isinstance(x, torch.Tensor)
        and isinstance(delta, torch.Tensor)
        and isinstance(lo, float)
        and isinstance(hi, float)
        and x.dtype in (torch.float32, torch.float64)
        and delta.dtype == x.dtype
        and x.ndim >= 1
        and x.shape[0] >= 1
        and x.numel() // x.shape[0] >= FUSED_MIN_SIZE
    )


def as_dtype_float(value: float, like: torch.Tensor) -> float:
    """``value`` rounded to ``like``'s dtype, as eager PyTorch rounds a Python scalar operand."""
    return float(torch.tensor(value, dtype=like.dtype))


@dataclass(frozen=True, kw_only=True)
class Span:
    """Per-row ``max |v|`` and smallest non-zero ``|v|`` (inf where ``v = 0``), ``(N,)``."""

    largest: torch.Tensor
    smallest: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class InputStats:
    """What one fused pass over ``x`` and ``other`` found (see :func:`input_stats`)."""

    clean: bool
    """Every value finite and ``x`` inside ``[below, above]``."""
    span: Span
    """Of ``other``, or of ``other - x`` (``difference``)."""


def input_stats(
    x: torch.Tensor, other: torch.Tensor, below: float, above: float, *, difference: bool
) -> InputStats:
    """The input checks of a public function in one fused pass (``x`` and ``other`` of the
    same shape and dtype)."""
    n = x.shape[0]
    bad, outside, largest, smallest = _INPUT_STATS(
        x.detach().reshape(n, -1),
        other.detach().reshape(n, -1),
        as_dtype_float(below, x),
        as_dtype_float(above, x),
        difference,
    )
    return InputStats(
        clean=int(bad) == 0 and int(outside) == 0,
        span=Span(largest=largest, smallest=smallest),
    )


@dataclass(frozen=True, kw_only=True)
class NewtonRun:
    """The fused Newton solve of ``g(t) = E`` (p = 1 or 2), on ``(N, 1)`` tensors."""

    t: torch.Tensor
    active_sum: torch.Tensor
    """``S`` on the final segment."""
    iterations: int
    finished: bool
    """False where some sample had not converged after the iteration cap."""
    target: torch.Tensor
    """``E = eps^p``, 0 where unreachable."""
    reachable: torch.Tensor
    d_scale: torch.Tensor
    """``max |delta|`` per sample for p = 2 (1 where 0), ones for p = 1."""


def _nonzero_or_one(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))


def newton_power(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
    delta_max: torch.Tensor | None = None,
) -> NewtonRun:
    """Newton from ``t = 0`` on ``g(t) = sum_i min(t dp_i, rp_i) = E``: ``t <- t + (E - g)/S``,
    stopping per sample when ``S`` repeats (``g`` linear there, so ``g(t) = E`` exactly).

    The same iterates as :func:`~car_attacks.core.solvers.solve_power` (``"newton"``), each
    iteration one fused pass over ``x`` and ``delta`` (plus one for ``max |delta|`` if p = 2,
    unless the input checks found it: ``delta_max`` of shape ``(N,)``).
    """
    n = x.shape[0]
    xf, df = x.detach().reshape(n, -1), delta.detach().reshape(n, -1)
    lo, hi = as_dtype_float(lo, x), as_dtype_float(hi, x)
    square = p == 2
    if square:
        largest = _ROW_MAX_ABS(df) if delta_max is None else delta_max.reshape(n, 1)
        d_scale = _nonzero_or_one(largest)
    else:
        d_scale = torch.ones((n, 1), dtype=x.dtype, device=x.device)
    eps_col = eps.detach().reshape(n, 1)
    t = torch.zeros_like(eps_col)
    g, s, reach = _POWER_SUMS(xf, df, t, d_scale, lo, hi, square)
    reachable = (eps_col * eps_col if square else eps_col) <= reach
    e = torch.where(reachable, eps_col, 0.0)
    target = e * e if square else e
    done = torch.zeros_like(reachable)
    previous = torch.full_like(t, -1.0)
    finished = False
    for iteration in range(1, max_iter + 1):
        if iteration > 1:
            g, s, _ = _POWER_SUMS(xf, df, t, d_scale, lo, hi, square)
        done = done | (s == previous)
        finished = bool(done.all())
        if finished:
            break
        step = ((target - g) / _nonzero_or_one(s)).clamp_min(0.0)
        t = torch.where(done, t, t + step)
        previous = s
    return NewtonRun(
        t=t,
        active_sum=s,
        iterations=iteration,
        finished=finished,
        target=target,
        reachable=reachable,
        d_scale=d_scale,
    )


def linf_eta_fused(
    x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, *, lo: float, hi: float
) -> torch.Tensor:
    """Exact L-inf scale ``e / max{|delta_i| : r_i >= e}``, ``e = min(eps, max r)``, ``(N,)``;
    two fused passes (as :func:`~car_attacks.core.solvers.linf_eta`)."""
    n = x.shape[0]
    xf, df = x.reshape(n, -1), delta.reshape(n, -1)
    lo, hi = as_dtype_float(lo, x), as_dtype_float(hi, x)
    target = torch.minimum(eps.reshape(n, 1), _LINF_REACH(xf, df, lo, hi))
    fastest = _LINF_FASTEST(xf, df, target, lo, hi)
    return torch.where(fastest > 0, target / _nonzero_or_one(fastest), 0.0)[:, 0]
