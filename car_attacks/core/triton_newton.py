"""The fused Newton solve (p = 1 or 2) as one Triton kernel per call, for CUDA tensors.

On a GPU the compiled solve of :mod:`~car_attacks.core.fused_newton` is bound by latency,
not memory: a call launches ~190 small kernels and syncs with the host several times, so
it takes ~1.5 ms at CIFAR and at ImageNet size alike while one pass over the data takes
~30 µs (``scripts/profile_cuda.py``). Here one program per sample runs the whole solve
of ``g(t) = sum_i min(t dp_i, rp_i) = E`` in a single launch: the pass at ``t = 0``
(``S(0)``, the largest value of ``g`` and ``max |delta|``, in float64), the start, and
Newton's iterations ``t <- t + (E - g)/S`` until ``S`` repeats or the step lands before the
next breakpoint, each pass recomputing the room and the powers from ``x`` and ``delta``
(the row stays in the GPU's L2 cache). The iterates are those of
:func:`~car_attacks.core.fused_newton.newton_power` (same start, same stopping rules, same
per-sample iteration cap; the float64 sums in another order), so results agree to the
solvers' tolerances; the host reads one summary at the end.

Used for CUDA tensors where Triton imports and the compiler is on
(:func:`~car_attacks.core.fused.compile_enabled`); the first launch of each dtype and p
compiles the kernel, which is counted as compile time
(:func:`~car_attacks.core.fused.compile_seconds`, ``newton_rows``), not as rescaling time.
Where the kernel fails, one warning is issued and the compiled solve runs from then on.
Tested on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import torch

from . import fused

if TYPE_CHECKING:
    from .fused_newton import NewtonRun

BLOCK = 1024
"""Values of a row one program handles per step of its loops."""
NUM_WARPS = 8

_state: dict[str, Any] = {"failed": False, "kernel": None, "compiled": set()}


def available(x: torch.Tensor) -> bool:
    """Whether the kernel runs for ``x``: a CUDA tensor, Triton importable, the compiler
    on and no earlier failure."""
    if not x.is_cuda or _state["failed"] or not fused.compile_enabled():
        return False
    return _kernel() is not None


def _kernel() -> Any:
    """The jitted kernel (built on first use), or ``None`` where Triton is missing."""
    if _state["kernel"] is None:
        try:
            _state["kernel"] = _build()
        except ImportError:
            _state["failed"] = True
            return None
    return _state["kernel"]


def _build() -> Any:
    """Jit the kernel (imports Triton; :data:`TRITON_INTERPRET` is read here, so tests can
    build an interpreted one)."""
    import triton

    from . import triton_kernels

    return triton.jit(triton_kernels.newton_rows)


def newton_power(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
) -> NewtonRun | None:
    """:func:`~car_attacks.core.fused_newton.newton_power` in one kernel launch (see the
    module): ``x`` and ``delta`` ``(N, n)``, ``eps`` ``(N, 1)``, all of one float dtype on
    one device. Returns a :class:`~car_attacks.core.fused_newton.NewtonRun`, or ``None``
    where the kernel failed (after one warning; the caller then solves otherwise)."""
    from .fused_newton import NewtonRun

    kernel = _kernel()
    if kernel is None:
        return None
    n = x.shape[0]
    xf, df = x.detach().contiguous(), delta.detach().contiguous()
    dtype, device = x.dtype, x.device
    params = torch.tensor([lo, hi, fused.NEXT_BREAKPOINT_STEP], dtype=dtype, device=device)
    eps_flat = eps.detach().reshape(n).contiguous()
    t, s, target, scale = (torch.empty(n, dtype=dtype, device=device) for _ in range(4))
    reach_ok, done = (torch.empty(n, dtype=torch.int8, device=device) for _ in range(2))
    count = torch.empty(n, dtype=torch.int32, device=device)
    signature = (dtype, p == 2)  # Triton compiles the kernel once for each
    start = time.perf_counter()
    try:
        kernel[(n,)](  # one program per sample
            xf,
            df,
            eps_flat,
            params,
            t,
            s,
            target,
            reach_ok,
            scale,
            count,
            done,
            xf.shape[1],
            max_iter,
            SQUARE=p == 2,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    except Exception as exc:  # noqa: BLE001 - any Triton failure: solve otherwise
        _state["failed"] = True
        warnings.warn(
            f"the Triton Newton kernel failed ({type(exc).__name__}: {exc}); the compiled "
            "solve runs instead (same results, slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    if signature not in _state["compiled"]:  # the launch compiled it: compile time
        _state["compiled"].add(signature)
        fused.record_compile("newton_rows", time.perf_counter() - start)
    return NewtonRun.from_rows(
        t=t, s=s, target=target, reachable=reach_ok, d_scale=scale, count=count, done=done
    )
