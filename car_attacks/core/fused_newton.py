"""Newton's method of the fused CAR solve (p = 1 or 2), several iterations per compiled call.

The iteration of :func:`~car_attacks.core.solvers.solve_power` (``"newton"``) on
``g(t) = sum_i min(t dp_i, rp_i) = E``: ``t <- t + (E - g)/S`` from ``t = 0``. At CIFAR
size a pass costs about as much as the work around it (Python, the guards of the compiled
function, small eager operations on the per-sample values, a host sync per iteration), so
one compiled call runs :data:`UNROLLED` iterations with the per-sample update between them
inside the graph, samples keeping their ``t`` once done (per-sample masks); one host sync
at the end tells whether every sample converged, and the rare rest go on one iteration per
call. The passes read ``dp`` and ``rp``, written out once (two arrays of ``x``'s size held
during the solve) instead of recomputing the room and the powers in every pass.

A sample is done when ``S`` repeats (``g`` linear there, so the last step hit
``g(t) = E``) or, once its own steps are below
:data:`~car_attacks.core.fused.NEXT_BREAKPOINT_STEP` relative, when its step lands before
the next breakpoint of ``g`` (the same ``t``, a pass fewer). Everything is per sample: a
sample takes the same iterates and the same number of passes in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import fused, native_newton, triton_newton
from .fused import FirstSums, _Kernel, _powers, _row_sum, as_dtype_float

UNROLLED = 4
"""Newton passes of the first compiled call (with the pass at ``t = 0``, five iterations:
what a CIFAR or ImageNet batch usually needs)."""


@dataclass(frozen=True, kw_only=True)
class NewtonRun:
    """The fused Newton solve of ``g(t) = E`` (p = 1 or 2), on ``(N, 1)`` tensors."""

    t: torch.Tensor
    active_sum: torch.Tensor
    """``S`` on the final segment."""
    iterations: int
    """The most iterations a sample of the batch took (the pass at ``t = 0`` counts)."""
    finished: bool
    """False where some sample had not converged after the iteration cap."""
    target: torch.Tensor
    """``E = eps^p``, 0 where unreachable."""
    reachable: torch.Tensor
    d_scale: torch.Tensor
    """``max |delta|`` per sample for p = 2 (1 where 0), ones for p = 1."""
    eta: torch.Tensor | None = None
    """``eta = t^(1/p) / d_scale`` ``(N,)`` where a kernel found that closed form to apply to
    every sample (finished, reachable, a slope on the final segment), else ``None``."""
    tiny: bool | None = None
    """Whether some p = 2 sample's ``eps^2`` is not a normal number (its solve must scale
    the room first: :attr:`~car_attacks.core.solvers.RescalingProblem.scaled`), where the
    kernel looked (the C kernel), else ``None``."""

    @classmethod
    def from_rows(
        cls,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        target: torch.Tensor,
        reachable: torch.Tensor,
        d_scale: torch.Tensor,
        count: torch.Tensor,
        done: torch.Tensor,
        eta: torch.Tensor | None = None,
        tiny: bool | None = None,
    ) -> NewtonRun:
        """The run of a kernel that solved each sample alone and wrote ``(N,)`` arrays
        (``reachable`` and ``done`` as integers, ``eta`` where it applies to every sample);
        the summary read with one host sync."""
        finished, iterations = torch.stack(
            [done.to(torch.int64).min(), count.to(torch.int64).max()]
        ).tolist()
        col = (t.shape[0], 1)
        return cls(
            t=t.reshape(col),
            active_sum=s.reshape(col),
            iterations=int(iterations),
            finished=bool(finished),
            target=target.reshape(col),
            reachable=reachable.reshape(col).bool(),
            d_scale=d_scale.reshape(col),
            eta=eta,
            tiny=tiny,
        )


def _nonzero_or_one(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))


def _steps(
    dp: torch.Tensor,
    rp: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    next_step: float,
    passes: int,
) -> tuple[torch.Tensor, ...]:
    """``passes`` Newton iterations on ``state = (t, s, previous, done, near, count)``
    (``(N, 1)`` each) over the powers ``dp``, ``rp`` (:func:`_materialized_powers`): a pass
    at ``t`` gives ``g`` and ``S`` (and, where ``near``, the next breakpoint), then the step.
    ``s`` is ``S`` on the segment of ``t`` (frozen once done), ``count`` the iterations each
    sample took."""
    t, s, previous, done, near, count = state
    for _ in range(passes):
        moved = t * dp
        active = rp - moved > 0
        g = _row_sum(torch.minimum(moved, rp))
        slope = _row_sum(torch.where(active, dp, 0.0))
        nearest = torch.where(active, rp / dp, float("inf")).amin(dim=1, keepdim=True)
        count = torch.where(done, count, count + 1)
        s = torch.where(done, s, slope)
        done = done | (slope == previous)
        step = ((target - g) / _nonzero_or_one(slope)).clamp_min(0.0)
        new = torch.where(done, t, t + step)
        done = done | (near & (new <= nearest))  # landed before the next breakpoint
        near = near | (step <= next_step * new)
        t, previous = new, slope
    return t, s, previous, done, near, count


def _summary(done: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[every sample done, the most iterations]`` (int64): read with one host sync."""
    return torch.stack([done.all().to(torch.int64), count.amax()])


def _newton_start(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    slope0: torch.Tensor,
    reach: torch.Tensor,
    largest: torch.Tensor,
    square: bool,
    next_step: float,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the pass at ``t = 0`` (:func:`~car_attacks.core.fused._first_sums`) the first
    step (eager, on ``(N, 1)`` tensors): the state of :func:`_steps`, ``target``,
    ``reachable`` and ``d_scale``."""
    if square:
        d_scale = _nonzero_or_one(largest)
        slope0 = slope0 / d_scale.to(torch.float64).square()
    else:
        d_scale = torch.ones_like(largest)
    reachable = (eps * eps if square else eps) <= reach.to(eps.dtype)
    e = torch.where(reachable, eps, 0.0)
    target = e * e if square else e
    s = slope0.to(eps.dtype)
    step = (target / _nonzero_or_one(s)).clamp_min(0.0)  # g(0) = 0
    done = torch.zeros_like(reachable)
    count = torch.ones_like(eps, dtype=torch.int64)
    state = (step, s, s, done, step <= next_step * step, count)
    return state, target, reachable, d_scale


def _materialized_powers(
    x: torch.Tensor, delta: torch.Tensor, d_scale: torch.Tensor, lo: float, hi: float, square: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dp`` and ``rp`` (:func:`~car_attacks.core.fused._powers`) written out once: the
    passes then read two arrays instead of recomputing the room and the powers, which made
    them about twice as fast on CPU (CIFAR and ImageNet size, torch 2.14)."""
    return _powers(x, delta, d_scale, lo, hi, square)


def _newton_passes(passes: int | None, name: str) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The function to compile of ``passes`` Newton iterations (:func:`_steps`; ``None``:
    :data:`UNROLLED`, read when it runs) and the summary, named ``name`` (the key of its
    compile time)."""

    def run(
        dp: torch.Tensor,
        rp: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        previous: torch.Tensor,
        done: torch.Tensor,
        near: torch.Tensor,
        count: torch.Tensor,
        target: torch.Tensor,
        next_step: float,
    ) -> tuple[torch.Tensor, ...]:
        state = (t, s, previous, done, near, count)
        out = _steps(dp, rp, state, target, next_step, UNROLLED if passes is None else passes)
        return (*out, _summary(out[3], out[5]))

    run.__name__ = run.__qualname__ = name
    return run


_POWERS = _Kernel(_materialized_powers)
_NEWTON_FIRST = _Kernel(_newton_passes(None, "_newton_first"))
"""The first :data:`UNROLLED` iterations."""
_NEWTON_MORE = _Kernel(_newton_passes(1, "_newton_more"))
"""One more iteration, for the rare sample that needs it."""


def newton_power(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
    first: FirstSums | None = None,
) -> NewtonRun:
    """Newton from ``t = 0`` on ``g(t) = sum_i min(t dp_i, rp_i) = E`` (see the module), at
    most ``max_iter`` iterations per sample (the pass at ``t = 0`` counts: it also finds
    ``max |delta|``, the scale of p = 2, or comes from the input checks, ``first``).

    The same iterates as :func:`~car_attacks.core.solvers.solve_power` (``"newton"``). On
    CUDA the solve is one Triton kernel (:mod:`~car_attacks.core.triton_newton`), on the
    CPU a C kernel (:mod:`~car_attacks.core.native_newton`), where they run; both redo the
    pass at ``t = 0`` rather than take ``first``."""
    n = x.shape[0]
    xf, df = x.detach().reshape(n, -1), delta.detach().reshape(n, -1)
    lo, hi = as_dtype_float(lo, x), as_dtype_float(hi, x)
    for kernel in (triton_newton, native_newton):  # CUDA / CPU: one sample at a time
        if kernel.available(x):
            eps_col = eps.detach().reshape(n, 1)
            run = kernel.newton_power(xf, df, eps_col, p=p, lo=lo, hi=hi, max_iter=max_iter)
            if run is not None:
                return run
    square, next_step = p == 2, fused.NEXT_BREAKPOINT_STEP
    if first is None:
        slope0, reach, largest = fused._FIRST_SUMS(xf, df, lo, hi, square)
    else:
        slope0, reach, largest = first.slope, first.reach, first.largest
    eps_col = eps.detach().reshape(n, 1)
    state, target, reachable, d_scale = _newton_start(
        xf, df, eps_col, slope0, reach, largest, square, next_step
    )
    dp, rp = _POWERS(xf, df, d_scale, lo, hi, square)
    *state, summary = _NEWTON_FIRST(dp, rp, *state, target, next_step)
    finished, iterations = summary.tolist()
    while not finished and iterations < max_iter:
        *state, summary = _NEWTON_MORE(dp, rp, *state, target, next_step)
        finished, iterations = summary.tolist()
    t, s = state[0], state[1]
    return NewtonRun(
        t=t,
        active_sum=s,
        iterations=int(iterations),
        finished=bool(finished) and iterations <= max_iter,
        target=target,
        reachable=reachable,
        d_scale=d_scale,
    )
