"""Fused hot paths of the CAR solve for PyTorch tensors, compiled with ``torch.compile``.

Eager tensor code spends one pass over memory per operation: one Newton iteration on
``g(t) = sum_i min(t dp_i, rp_i)`` (see :mod:`~car_attacks.core.solvers`) costs about ten.
Here each kernel is one plain PyTorch function that reads ``x`` and ``delta`` once and
returns per-sample sums; inductor (C++/OpenMP on CPU) fuses it into one loop. The
elementwise maths is exactly that of the eager solvers (the per-sample sums are accumulated
in float64 in another order; the pass at ``t = 0`` takes the powers of the unscaled
``|delta|`` in float64), so results agree to the solvers' tolerances. The public function
runs its input checks in the first pass of the solve (:func:`checked_first_pass`); the
Newton iterations after it are in :mod:`~car_attacks.core.fused_newton` (several per
compiled call, ending a pass early where the last step provably stays on one linear piece
of ``g``).

Kernels are compiled with dynamic shapes (no recompilation per batch size; inductor's
on-disk cache reuses the code across processes). Where compiling fails, one warning is
issued and the eager solvers run from then on (a kernel that failed mid-solve runs its
function eagerly once). When to compile is :data:`COMPILE_ENV`'s choice: ``1`` from the
first call, ``0`` never, ``auto`` (the default) by ski rental: the first calls of a process
would compile for 5-20 s on a 2-core CPU, more than a short run saves (measured in an
evaluation of 20 CIFAR images), so the eager solvers run until the process has solved
:data:`COMPILE_BREAK_EVEN_VALUES` values that the fused path would have taken, about what
a compile costs in eager time; from the next call on the kernels compile. A run then never
spends more than about twice the time of the better of "never" and "from the start" (the
ski-rental bound), and the switch depends on the sizes solved, not on clocks, so a script
gives the same numbers each time it runs (the two paths agree to the solvers'
tolerances, not bitwise; set ``0`` or ``1`` for bitwise equal calls within one process).
Problems below :data:`FUSED_MIN_SIZE` values per sample always run the eager solvers.

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware Normalization and
Rescaling", arXiv:2007.07677, 2020 (the equation); Newton on the concave piecewise-linear
``g`` as in :func:`~car_attacks.core.solvers.solve_power`.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

COMPILE_ENV = "CAR_ATTACKS_COMPILE"
"""Environment variable: ``1`` compiles the fused kernels from the first call, ``0`` never
(the eager solvers run), ``auto`` or unset: once :data:`COMPILE_BREAK_EVEN_VALUES` is
reached (see the module docstring)."""
COMPILE_MODES = ("0", "1", "auto")
"""The values :data:`COMPILE_ENV` may take."""
COMPILE_BREAK_EVEN_VALUES = 2**29
"""Values the ``auto`` mode lets :func:`fusable` decline before it compiles: ski rental.
A public call or projection asks :func:`fusable` about twice (checks, solve), the eager
solve costs about 30 ns per value more than the compiled one (one CPU thread, CIFAR and
ImageNet sizes, ``scripts/bench_rescaling.py``) and compiling about 5 s with a warm
on-disk cache, 10-20 s cold: ``2 x 10 s / 30 ns`` is about ``2**29``. (Calibrated when
Newton ran here; values the C kernels of :mod:`~car_attacks.core.native_newton` solve are
not counted, so on the CPU the break-even now buys only what those leave; it matters on
CUDA and where no C compiler builds them.)"""
FUSED_MIN_SIZE = 1024
"""Values per sample from which the fused path is used (below, the eager solvers are about
as fast; on CUDA too: L2 PGD on 10,000 Fashion-MNIST images of 784 values spent 0.25 s
rescaling fused against 0.14 s eager on an H200). Per sample, not per batch: a sample
takes the same path in any batch."""
FLOAT32_RANGE = 1e12
"""The float32 solves for p = 1 and 2 work on ``|delta|`` (p = 2: its square relative to the
largest), the room and ``eps`` unscaled: the public functions solve in float64 when a
sample's non-zero ``|delta|`` spans more than this factor, a non-zero ``eps`` is below its
inverse, the bounds are wider than it, or that span times the width exceeds 1e18 (see
:func:`~car_attacks.core.rescaling.needs_float64`)."""
NEXT_BREAKPOINT_STEP = 1e-2
"""Relative Newton step below which a sample also looks at the next breakpoint of ``g``
(found in every pass of :mod:`~car_attacks.core.fused_newton`): its steps then shrink
quadratically, so the next one usually lands before it and ends its solve a pass early."""


_state: dict[str, Any] = {"failed": False, "compile_s": {}, "declined_values": 0}


def compile_mode() -> str:
    """:data:`COMPILE_ENV`'s value (``auto`` where unset or empty); ``ValueError`` naming
    the variable and the value for anything else."""
    value = os.environ.get(COMPILE_ENV, "").strip().lower() or "auto"
    if value not in COMPILE_MODES:
        raise ValueError(f"{COMPILE_ENV} must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return value


def compile_enabled() -> bool:
    """Whether kernels are compiled: :data:`COMPILE_ENV` is ``1``, or ``auto`` past the
    break-even (:data:`COMPILE_BREAK_EVEN_VALUES`), and no compile has failed."""
    if _state["failed"]:
        return False
    mode = compile_mode()
    return mode == "1" or (
        mode == "auto" and _state["declined_values"] >= COMPILE_BREAK_EVEN_VALUES
    )


def compile_seconds() -> dict[str, float]:
    """Seconds the compiling calls of each kernel took in this process, by name: its first
    call, and any later call that compiled another graph (a new value of a flag argument,
    a new dtype), counted by dynamo's graph counter."""
    return dict(_state["compile_s"])


def record_compile(name: str, seconds: float) -> None:
    """Add ``seconds`` of compiling kernel ``name`` to :func:`compile_seconds` (kept out of
    the rescaling time of evaluation reports: :mod:`~car_attacks.core.clock`)."""
    _state["compile_s"][name] = _state["compile_s"].get(name, 0.0) + seconds


def _compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (its ``unique_graphs`` statistic)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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
        start = time.perf_counter()  # before the counter: its first read imports dynamo
        graphs = _compiled_graphs()
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
        if first or _compiled_graphs() != graphs:
            record_compile(self.fn.__name__, time.perf_counter() - start)
        return out


def _room(x: torch.Tensor, delta: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``r_i``: distance to the box along ``delta_i`` (as ``tensors.room_along``)."""
    return torch.where(delta >= 0, hi - x, x - lo).clamp_min(0.0)


def _powers(
    x: torch.Tensor, delta: torch.Tensor, d_scale: torch.Tensor, lo: float, hi: float, square: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dp = (|delta| / d_scale)^p`` and ``rp = r^p [dp > 0]`` (p = 2 if ``square``, else 1
    with ``d_scale = 1``), elementwise."""
    room = _room(x, delta, lo, hi)
    if square:
        d = delta.abs() / d_scale
        dp = d * d
        return dp, room * room * (dp > 0)
    dp = delta.abs()
    return dp, room * (dp > 0)


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


def _violations(x: torch.Tensor, other: torch.Tensor, below: float, above: float) -> torch.Tensor:
    """Per row ``max_i max(below - x_i, x_i - above) + 0 other_i``, ``(N, 1)``: ``<= 0`` exactly
    where every value is finite and ``x`` inside ``[below, above]`` (an infinity of ``x`` gives
    inf; NaN, or an infinity of ``other`` times 0, gives NaN, which ``amax`` propagates)."""
    outside = torch.maximum(below - x, x - above)
    return (outside + other * 0.0).amax(dim=1, keepdim=True)


def _first_sums(
    x: torch.Tensor, delta: torch.Tensor, lo: float, hi: float, square: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Newton pass at ``t = 0`` and the scale of ``delta`` in one pass: the slope
    ``S(0) = sum_{r_i > 0} |delta_i|^p``, the largest value ``sum_i r_i^p [delta_i != 0]`` of
    ``g`` (both ``(N, 1)``, float64: the powers of the unscaled entries are taken in float64,
    whose range holds the squares of any float32) and ``max |delta|``, ``(N, 1)``."""
    size = delta.abs()
    d64 = size.to(torch.float64)
    r64 = torch.where(size > 0, _room(x, delta, lo, hi), 0.0).to(torch.float64)
    dp = d64 * d64 if square else d64
    rp = r64 * r64 if square else r64
    s0 = torch.where(rp > 0, dp, 0.0).sum(dim=1, keepdim=True)
    return s0, rp.sum(dim=1, keepdim=True), size.amax(dim=1, keepdim=True)


def _checked_first_sums(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    lo: float,
    hi: float,
    below: float,
    above: float,
    square: bool,
    span_factor: float,
    tiny_eps: float,
) -> tuple[torch.Tensor, ...]:
    """The public function's checks and the first Newton pass together, in one pass:
    ``[every value fine, some sample needs float64]`` (bool, ``(2,)``: :func:`_violations`
    with those of ``eps``, :func:`_eps_violations`; the test of
    :func:`~car_attacks.core.rescaling.needs_float64` for :func:`float64_thresholds`
    rounded to ``x``'s dtype), :func:`_first_sums` and the smallest non-zero ``|delta|`` per
    row (``(N, 1)``, inf where ``delta = 0``)."""
    s0, reach, largest = _first_sums(x, delta, lo, hi, square)
    size = delta.abs()
    smallest = torch.where(size > 0, size, float("inf")).amin(dim=1, keepdim=True)
    bad = torch.maximum(_violations(x, delta, below, above), _eps_violations(eps))
    # float32 products of float32 values: the same rounding wherever they are computed
    wide = ((eps > 0) & (eps < tiny_eps)) | (smallest < largest * span_factor)
    flags = torch.stack([(bad <= 0).all(), wide.any()])
    return flags, s0, reach, largest, smallest


def _eps_violations(eps: torch.Tensor) -> torch.Tensor:
    """``-eps + 0 eps``: ``<= 0`` exactly where ``eps`` is finite and ``>= 0`` (NaN for an
    infinity or NaN, which ``maximum`` propagates)."""
    return eps * 0.0 - eps


def _linf_pass(
    x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, lo: float, hi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_linf_reach` and :func:`_linf_fastest` at ``target = eps`` in one pass (the
    L-inf solve wherever ``eps`` is reachable)."""
    return _linf_reach(x, delta, lo, hi), _linf_fastest(x, delta, eps, lo, hi)


def _checked_linf_pass(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    lo: float,
    hi: float,
    below: float,
    above: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_violations` (with those of ``eps``: :func:`_eps_violations`) and
    :func:`_linf_pass` in one pass."""
    reach, fastest = _linf_pass(x, delta, eps, lo, hi)
    bad = torch.maximum(_violations(x, delta, below, above), _eps_violations(eps))
    return bad, reach, fastest


_INPUT_STATS = _Kernel(_input_stats)
_FIRST_SUMS = _Kernel(_first_sums)
_CHECKED_FIRST_SUMS = _Kernel(_checked_first_sums)
_LINF_PASS = _Kernel(_linf_pass)
_CHECKED_LINF_PASS = _Kernel(_checked_linf_pass)
_LINF_FASTEST = _Kernel(_linf_fastest)


def fusable(x: Any, delta: Any, lo: Any, hi: Any) -> bool:
    """Whether the fused path applies: the compiler is on (else the eager solvers run, with
    their smaller memory use), PyTorch float32/float64 tensors of at least
    :data:`FUSED_MIN_SIZE` values per sample and float bounds. Where only the compiler is
    off in the ``auto`` mode, the values of ``x`` count towards its break-even."""
    if not eligible(x, delta, lo, hi):
        return False
    if compile_enabled():
        return True
    if compile_mode() == "auto" and not _state["failed"]:
        _state["declined_values"] += int(x.numel())
    return False


def eligible(x: Any, delta: Any, lo: Any, hi: Any) -> bool:
    """:func:`fusable` but for the compiler: the types, dtypes, bounds and sizes it asks for."""
    return kernel_inputs(x, delta, lo, hi) and x.numel() // x.shape[0] >= FUSED_MIN_SIZE


def kernel_inputs(x: Any, delta: Any, lo: Any, hi: Any) -> bool:
    """What every fused kernel takes: PyTorch float32/float64 tensors of one dtype with at
    least one sample, and float bounds."""
    return (
        isinstance(x, torch.Tensor)
        and isinstance(delta, torch.Tensor)
        and isinstance(lo, float)
        and isinstance(hi, float)
        and x.dtype in (torch.float32, torch.float64)
        and delta.dtype == x.dtype
        and x.ndim >= 1
        and x.shape[0] >= 1
    )


def float64_thresholds(width: float) -> tuple[float, float]:
    """For bounds ``width`` apart (at most :data:`FLOAT32_RANGE`), the factor below
    ``max |delta|`` under which a non-zero ``|delta_i|`` sends a float32 solve to float64,
    and the ``eps`` under which a non-zero one does."""
    return max(1 / FLOAT32_RANGE, width / FLOAT32_RANGE**1.5), 1 / FLOAT32_RANGE


@dataclass(frozen=True, kw_only=True)
class CheckLimits:
    """The limits of the public function's checks, rounded to the inputs' dtype: ``x``
    inside ``[below, above]``, and the float32 range test of :func:`float64_thresholds`
    (a non-zero ``|delta_i|`` below ``max |delta| * span_factor``, or a non-zero ``eps``
    below ``tiny_eps``, sends a float32 solve to float64)."""

    below: float
    above: float
    span_factor: float
    tiny_eps: float

    @classmethod
    def of(
        cls, like: torch.Tensor, lo: float, hi: float, below: float, above: float
    ) -> CheckLimits:
        """The limits for bounds ``(lo, hi)`` and the box ``[below, above]`` ``x`` must be in."""
        span_factor, tiny_eps = float64_thresholds(hi - lo)
        return cls(
            below=as_dtype_float(below, like),
            above=as_dtype_float(above, like),
            span_factor=as_dtype_float(span_factor, like),
            tiny_eps=as_dtype_float(tiny_eps, like),
        )


NO_CHECKS = CheckLimits(below=-math.inf, above=math.inf, span_factor=0.0, tiny_eps=0.0)
"""Limits that nothing fails."""


def float64_needed(like: torch.Tensor, width: float, found: bool) -> bool:
    """Whether a p = 1 or 2 solve of ``like``'s dtype runs in float64: float32 inputs with
    bounds wider than :data:`FLOAT32_RANGE`, or where the checks ``found`` a sample outside
    the float32 range (:class:`CheckLimits`)."""
    return like.dtype != torch.float64 and (width > FLOAT32_RANGE or found)


def as_dtype_float(value: float, like: torch.Tensor) -> float:
    """``value`` rounded to ``like``'s dtype, as eager PyTorch rounds a Python scalar operand."""
    return _rounded(value, like.dtype)


@functools.lru_cache(maxsize=256)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """:func:`as_dtype_float`, cached (the bounds repeat from call to call)."""
    return float(torch.tensor(value, dtype=dtype))


@dataclass(frozen=True, kw_only=True)
class Span:
    """Per-row ``max |v|`` and smallest non-zero ``|v|`` (inf where ``v = 0``), ``(N,)``."""

    largest: torch.Tensor
    smallest: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class FirstSums:
    """The Newton pass at ``t = 0`` (see :func:`_first_sums`), ``(N, 1)`` each."""

    slope: torch.Tensor
    """``S(0) = sum_{r_i > 0} |delta_i|^p``, float64, of the unscaled ``|delta|``."""
    reach: torch.Tensor
    """``sum_i r_i^p [delta_i != 0]``, float64."""
    largest: torch.Tensor
    """``max |delta|``, in ``delta``'s dtype."""


@dataclass(frozen=True, kw_only=True)
class LinfPass:
    """The L-inf pass at ``target = eps`` (see :func:`_linf_pass`), ``(N, 1)`` each."""

    reach: torch.Tensor
    """``max{r_i : delta_i != 0}``."""
    fastest: torch.Tensor
    """``max{|delta_i| : r_i >= eps}``."""


FirstPass = FirstSums | LinfPass
"""The first pass of a solve, where the input checks ran it."""


@dataclass(frozen=True, kw_only=True)
class InputStats:
    """What one fused pass over ``x`` and ``other`` found (see :func:`input_stats` and
    :func:`checked_first_pass`)."""

    clean: bool
    """Every value finite and ``x`` inside ``[below, above]``."""
    span: Span | None
    """Of ``other``, or of ``other - x`` (``difference``); ``None`` after the L-inf pass."""
    first: FirstPass | None = None
    """The first pass of the solve (:func:`checked_first_pass`)."""
    wide: bool | None = None
    """Whether the p = 1 or 2 solve needs float64
    (:func:`~car_attacks.core.rescaling.needs_float64`), where :func:`checked_first_pass`
    found it."""


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


def _no_violation(violations: torch.Tensor) -> bool:
    """Whether :func:`_violations` found every value fine (NaN compares False)."""
    return bool((violations <= 0).all())


def checked_first_pass(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    below: float,
    above: float,
) -> InputStats:
    """The input checks of :func:`~car_attacks.core.rescaling.clipping_aware_rescaling` and
    the first pass of its solve in one fused pass over ``x`` and ``delta``: for p = 1 or 2
    the Newton pass at ``t = 0`` (:class:`FirstSums`, with the span of ``delta``), for
    p = inf the closed form at ``eps`` (:class:`LinfPass`). ``eps`` has shape ``(N,)`` and
    ``x``'s dtype; it is checked too (finite, ``>= 0``)."""
    n = x.shape[0]
    xf, df = x.detach().reshape(n, -1), delta.detach().reshape(n, -1)
    limits = CheckLimits.of(x, lo, hi, below, above)
    width = hi - lo
    lo, hi = as_dtype_float(lo, x), as_dtype_float(hi, x)
    eps_col = eps.detach().reshape(n, 1)
    if p == math.inf:
        bad, reach, fastest = _CHECKED_LINF_PASS(
            xf, df, eps_col, lo, hi, limits.below, limits.above
        )
        return InputStats(
            clean=_no_violation(bad), span=None, first=LinfPass(reach=reach, fastest=fastest)
        )
    flags, slope, reach, largest, smallest = _CHECKED_FIRST_SUMS(
        xf,
        df,
        eps_col,
        lo,
        hi,
        limits.below,
        limits.above,
        p == 2,
        limits.span_factor,
        limits.tiny_eps,
    )
    clean, wide = flags.tolist()  # one host sync
    return InputStats(
        clean=clean,
        span=Span(largest=largest[:, 0], smallest=smallest[:, 0]),
        first=FirstSums(slope=slope, reach=reach, largest=largest),
        wide=float64_needed(x, width, wide),
    )


def linf_eta_fused(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    lo: float,
    hi: float,
    first: LinfPass | None = None,
) -> torch.Tensor:
    """Exact L-inf scale ``e / max{|delta_i| : r_i >= e}``, ``e = min(eps, max r)``, ``(N,)``
    (as :func:`~car_attacks.core.solvers.linf_eta`): one fused pass at ``e = eps`` (or none:
    ``first``, from the input checks), a second where some ``eps`` exceeds ``max r``."""
    n = x.shape[0]
    xf, df = x.detach().reshape(n, -1), delta.detach().reshape(n, -1)
    lo, hi = as_dtype_float(lo, x), as_dtype_float(hi, x)
    eps_col = eps.detach().reshape(n, 1)
    if first is None:
        reach, fastest = _LINF_PASS(xf, df, eps_col, lo, hi)
    else:
        reach, fastest = first.reach, first.fastest
    target = torch.minimum(eps_col, reach)
    if bool((eps_col > reach).any()):  # those samples saturate at the largest room
        fastest = torch.where(eps_col > reach, _LINF_FASTEST(xf, df, target, lo, hi), fastest)
    return torch.where(fastest > 0, target / fastest, 0.0)[:, 0]  # x / 0 is not used
