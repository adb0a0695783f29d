"""The fused Newton solve (p = 1 or 2), the exact projections and the L-inf scale as C
kernels for CPU tensors, one sample at a time.

The compiled solve of :mod:`~car_attacks.core.fused_newton` makes each Newton iteration
one pass over the whole batch, so every pass streams ``x`` and ``delta`` from memory
(at CIFAR size 3 MB, past the core's caches). ``native/car_newton.c`` solves one sample
at a time instead: the pass at ``t = 0`` over its row, the powers ``dp`` and ``rp`` written
to a two-row buffer, then every iteration over that buffer while it sits in the L1/L2
cache. The iterates are those of :func:`~car_attacks.core.fused_newton.newton_power` (same
start, powers, stopping rules and iteration cap; float64 sums in another order, vectorised
with IEEE arithmetic), so results agree to the solvers' tolerances. Rows are split into
blocks on up to ``torch.get_num_threads()`` of PyTorch's own OpenMP threads (see
:data:`VALUES_PER_THREAD`; threads of the kernel's own where the compiler has no OpenMP).

The same library holds whole calls, each one pass over the inputs that also runs the
public function's checks, then work in cache, then the output (:func:`project`,
:func:`linf_eta`): the L2 projection (in-ball test, ``w = z - x0`` to a buffer, the Newton
solve above on it, ``clip(x0 + min(1, eta) w)``), the L1 projection (the safeguarded
Newton of :func:`~car_attacks.core.l1_threshold.newton_step` on ``|w|`` and the room, then
the soft threshold), the L-inf projection and the L-inf scale. A row whose closed form does
not apply (an unfinished solve, a float32 row that needs float64, ...) is left to the
caller's general path, so every row's result is that of the general path to rounding.

The C source is compiled on first use with the system's C compiler (``$CC``, else ``cc``;
``-O3 -march=native``, about a second), cached under ``$XDG_CACHE_HOME/car_attacks``
(``~/.cache/car_attacks``) by the hash of the source, the flags and the processor, and
loaded with ctypes. It is used whenever :data:`~car_attacks.core.fused.COMPILE_ENV` is not
``0`` (the compile is cheap, so ``auto`` uses it from the first call); its compile time
is counted as compile time (:func:`~car_attacks.core.fused.compile_seconds`,
``car_newton``). Where no compiler is found or compiling fails, one warning is issued and
the other solvers run, exact to the same tolerances.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import fused

if TYPE_CHECKING:
    from .fused_newton import NewtonRun

SOURCE = Path(__file__).with_name("native") / "car_newton.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-pthread", "-shared", "-fPIC")
"""C compiler flags: IEEE arithmetic (no ``-ffast-math``), vectorised reductions, the row
blocks on PyTorch's OpenMP threads (its ``libgomp.so.1``, already loaded, serves ours)."""
FLAGS_WITHOUT_OPENMP = tuple("-fopenmp-simd" if f == "-fopenmp" else f for f in FLAGS)
"""Where the compiler has no OpenMP runtime to link: threads of the kernel's own."""
VALUES_PER_THREAD = 1 << 16
"""A call uses one thread per this many values (at most ``torch.get_num_threads()``, at
most one per sample). The threads are PyTorch's own OpenMP threads (the kernel is built
with ``-fopenmp`` and so uses the ``libgomp.so.1`` PyTorch has loaded): threads of our own
competed with PyTorch's, which keep spinning after its parallel work, and made the L2
projection at CIFAR size 2x slower at 2 threads; sharing the pool, two threads take a
CIFAR-size call from 1.06 to 0.71 ms."""

_state: dict[str, Any] = {"failed": False, "library": None}


def available(x: torch.Tensor) -> bool:
    """Whether the kernel runs for ``x``: a CPU tensor, :data:`~car_attacks.core.fused.COMPILE_ENV`
    not ``0``, and the library built (on the first call) without failure."""
    if x.device.type != "cpu" or _state["failed"] or fused.compile_mode() == "0":
        return False
    return _library() is not None


def eligible(x: Any, delta: Any, lo: Any, hi: Any) -> bool:
    """The inputs the kernel takes (:func:`~car_attacks.core.fused.kernel_inputs`, any
    number of values per sample, at least one) where it runs (:func:`available`)."""
    if not fused.kernel_inputs(x, delta, lo, hi) or delta.device != x.device:
        return False
    return x.numel() >= x.shape[0] and available(x)


def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built and loaded on first use), or ``None`` after a failure."""
    if _state["library"] is None and not _state["failed"]:
        try:
            _state["library"] = _load(_build())
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            _state["failed"] = True
            warnings.warn(
                f"could not build the C kernels ({type(exc).__name__}: {exc}); the CAR "
                "solvers and the projections run without them (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
    library: ctypes.CDLL | None = _state["library"]
    return library


def _compiler() -> str:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name
    raise RuntimeError("no C compiler found (set CC)")


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "car_attacks"


def _processor() -> str:
    """The processor's model (``-march=native`` code is specific to it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> Path:
    """Compile :data:`SOURCE` to a shared library in the cache (once per source, flags,
    compiler and processor; written atomically, so concurrent processes are safe): with
    :data:`FLAGS`, else with :data:`FLAGS_WITHOUT_OPENMP`."""
    compiler = _compiler()
    try:
        return _build_with(compiler, FLAGS)
    except RuntimeError as exc:
        try:
            return _build_with(compiler, FLAGS_WITHOUT_OPENMP)
        except RuntimeError:
            raise exc from None


def _build_with(compiler: str, flags: tuple[str, ...]) -> Path:
    """:func:`_build` with ``flags``; RuntimeError naming the command where it fails."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), compiler.encode(), _processor().encode()])
    ).hexdigest()[:16]
    target = _cache_dir() / f"car_newton-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        cmd = [*compiler.split(), *flags, "-o", tmp, str(SOURCE), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)
        fused.record_compile("car_newton", time.perf_counter() - start)  # (not a cache hit)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(path: Path) -> ctypes.CDLL:
    """Load the library and declare its entry points (the Newton solve, the projections,
    the L-inf scale), each in float32 and float64."""
    library = ctypes.CDLL(str(path))
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, scalar in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        rows = [pointer] * 3 + [i64, i64]  # x (or x0), delta (or z), eps; rows, columns
        settings = [scalar] * 3 + [i32, i32] + [scalar] * 4  # bounds, step, flags, checks
        signatures = {
            "car_newton": rows + settings + [pointer] * 9 + [i32],
            "car_project": rows + settings + [pointer] * 2 + [i32],
            "car_linf_eta": rows + [scalar] * 4 + [pointer] * 2 + [i32],
        }
        if suffix == "f64":  # p other than 1 and 2: in double only
            general = [scalar] * 4 + [i32] + [scalar] * 2  # bounds, p, step, cap, checks
            signatures["car_newton_general"] = rows + general + [pointer] * 3 + [i32]
        for name, argtypes in signatures.items():
            fn = getattr(library, f"{name}_{suffix}")
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
    return library


def _threads(n: int, m: int) -> int:
    """Threads for ``n`` rows of ``m`` values (see :data:`VALUES_PER_THREAD`)."""
    return max(1, min(torch.get_num_threads(), n, (n * m) // VALUES_PER_THREAD))


CHECK_FAILED, WIDE, INSIDE, LEFT, CLOSED, TINY_EPS = 1, 2, 4, 8, 16, 32
"""The kernels' flags per row (as in ``native/car_newton.c``): a check failed, the float32
solve needs float64, ``clip(z)`` is in the ball (projections), the row is left to the
caller (projections: its output not written), the closed form ``eta`` of the finished
Newton solve applies (Newton), ``eps^2`` is not a normal number (Newton, p = 2)."""


def _run(
    name: str,
    x: torch.Tensor,
    other: torch.Tensor,
    eps: torch.Tensor,
    settings: tuple[float, ...],
    outputs: tuple[torch.Tensor, ...],
) -> bool:
    """Call the entry point ``name`` (its ``_f32`` or ``_f64`` variant by ``x``'s dtype) on
    the rows of ``x`` and ``other`` ``(N, n)`` and ``eps`` ``(N,)`` with the scalar
    ``settings``, writing ``outputs``; False where the library is not built or the kernel
    could not allocate its row buffers (the caller then solves otherwise)."""
    library = _library()
    if library is None:
        return False
    n, m = x.shape[0], x.shape[1]
    xf, of = x.detach().contiguous(), other.detach().contiguous()
    eps_flat = eps.detach().reshape(n).to(x.dtype).contiguous()  # (the kernel reads x's type)
    fn = getattr(library, f"{name}_{'f32' if x.dtype == torch.float32 else 'f64'}")
    pointers = (t.data_ptr() for t in outputs)
    status = fn(xf.data_ptr(), of.data_ptr(), eps_flat.data_ptr(), n, m, *settings, *pointers,
                _threads(n, m))  # fmt: skip
    return status == 0


@dataclass(frozen=True, kw_only=True)
class CheckedRun:
    """What :func:`checked_newton_power` found: the solve, and what the checks said."""

    run: NewtonRun
    clean: bool
    """Every value finite, ``x`` inside ``[below, above]``, ``eps`` finite and ``>= 0``."""
    wide: bool
    """Some sample's float32 solve needs float64."""


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
    """:func:`~car_attacks.core.fused_newton.newton_power` by the C kernel (see the module):
    ``x`` and ``delta`` ``(N, n)``, ``eps`` ``(N, 1)``, all of one float dtype on the CPU.
    ``None`` where the kernel could not run (the caller then solves otherwise)."""
    checked = checked_newton_power(
        x, delta, eps, p=p, lo=lo, hi=hi, max_iter=max_iter, checks=fused.NO_CHECKS
    )
    return None if checked is None else checked.run


def checked_newton_power(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
    checks: fused.CheckLimits,
) -> CheckedRun | None:
    """:func:`newton_power` with the public function's ``checks`` in its first pass (the
    solve is garbage where they fail: look at :attr:`CheckedRun.clean` first)."""
    from .fused_newton import NewtonRun

    n, dtype = x.shape[0], x.dtype
    t, s, target, scale, eta = (torch.empty(n, dtype=dtype) for _ in range(5))
    reach_ok, done, flags = (torch.empty(n, dtype=torch.int8) for _ in range(3))
    count = torch.empty(n, dtype=torch.int32)
    limits = (checks.below, checks.above, checks.span_factor, checks.tiny_eps)
    settings = (lo, hi, fused.NEXT_BREAKPOINT_STEP, int(p == 2), max_iter, *limits)
    outputs = (t, s, target, reach_ok, scale, count, done, eta, flags)
    if not _run("car_newton", x, delta, eps, settings, outputs):
        return None
    row_flags = flags.numpy()
    found = int(np.bitwise_or.reduce(row_flags))
    closed = bool(np.bitwise_and.reduce(row_flags) & CLOSED)
    run = NewtonRun.from_rows(
        t=t,
        s=s,
        target=target,
        reachable=reach_ok,
        d_scale=scale,
        count=count,
        done=done,
        eta=eta if closed else None,
        tiny=bool(found & TINY_EPS),
    )
    return CheckedRun(run=run, clean=not found & CHECK_FAILED, wide=bool(found & WIDE))


@dataclass(frozen=True, kw_only=True)
class Projected:
    """What :func:`project` found: the projection, and what the caller still has to do."""

    out: torch.Tensor
    """``(N, n)``; the rows in :attr:`left` are not written."""
    clean: bool
    """Every check passed (see :func:`checked_newton_power`)."""
    left: torch.Tensor | None
    """Indices ``(k,)`` of the rows to project otherwise: a check failed, the solve did not
    finish or its closed form does not apply, or the row needs float64; ``None`` where
    there are none."""


def project(
    x0: torch.Tensor,
    z: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
    checks: fused.CheckLimits,
) -> Projected | None:
    """The exact projection of ``z`` onto ``{v : ||v - x0||_p <= eps} ∩ [lo, hi]`` for p = 1,
    2 or inf by the C kernel, one sample at a time (the checks in its first pass, then the
    L1 threshold search or the L2 Newton solve in cache, then the output): ``x0`` and ``z``
    ``(N, n)``, ``eps`` ``(N,)``, one float dtype on the CPU, the bounds rounded to it.
    ``max_iter`` caps the Newton steps. ``None`` where the kernel could not run."""
    n, m = x0.shape[0], x0.shape[1]
    out = torch.empty((n, m), dtype=x0.dtype)
    flags = torch.empty(n, dtype=torch.int8)
    norm = 0 if math.isinf(p) else int(p)
    limits = (checks.below, checks.above, checks.span_factor, checks.tiny_eps)
    settings = (lo, hi, fused.NEXT_BREAKPOINT_STEP, norm, max_iter, *limits)
    if not _run("car_project", x0, z, eps, settings, (out, flags)):
        return None
    found = int(np.bitwise_or.reduce(flags.numpy()))
    left = None
    if found & (CHECK_FAILED | LEFT):
        left = torch.nonzero(flags & (CHECK_FAILED | LEFT))[:, 0]
    return Projected(out=out, clean=not found & CHECK_FAILED, left=left)


@dataclass(frozen=True, kw_only=True)
class LinfScale:
    """What :func:`linf_eta` found."""

    eta: torch.Tensor
    """``(N,)``; garbage where a check failed."""
    clean: bool
    """Every check passed (see :func:`checked_newton_power`)."""


def linf_eta(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    lo: float,
    hi: float,
    checks: fused.CheckLimits,
) -> LinfScale | None:
    """The exact L-inf scale ``e / max{|delta_i| : r_i >= e}``, ``e = min(eps, max r)``
    (:func:`~car_attacks.core.solvers.linf_eta`) by the C kernel, the checks in the same
    pass: ``x`` and ``delta`` ``(N, n)``, ``eps`` ``(N,)``, one float dtype on the CPU, the
    bounds rounded to it. ``None`` where the kernel could not run."""
    n = x.shape[0]
    eta = torch.empty(n, dtype=x.dtype)
    flags = torch.empty(n, dtype=torch.int8)
    settings = (lo, hi, checks.below, checks.above)
    if not _run("car_linf_eta", x, delta, eps, settings, (eta, flags)):
        return None
    return LinfScale(eta=eta, clean=not bool(flags.any()))


@dataclass(frozen=True, kw_only=True)
class GeneralScale:
    """What :func:`general_eta` found."""

    eta: torch.Tensor
    """``(N,)`` float64."""
    iterations: int
    """The most Newton iterations a sample took (the pass at ``t = 0`` counts)."""


def general_eta(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    *,
    p: float,
    lo: float,
    hi: float,
    max_iter: int,
) -> GeneralScale | None:
    """``eta`` for a finite p other than 1 and 2 by the C kernel, in float64 as
    :class:`~car_attacks.core.solvers.RescalingProblem`'s general solve (``x`` and ``delta``
    ``(N, n)``, ``eps`` ``(N,)``, all float64 on the CPU): the scaled powers
    ``(|delta| / d_scale)^p`` and ``(r / r_scale)^p`` (capped so that none overflows) in a
    row buffer, Newton over them, ``eta = t^(1/p) r_scale / d_scale``. ``None`` where the
    kernel could not run or its closed form does not apply to every sample (unfinished,
    unreachable, no slope left; the general path then solves)."""
    n = x.shape[0]
    eta = torch.empty(n, dtype=torch.float64)
    count = torch.empty(n, dtype=torch.int32)
    flags = torch.empty(n, dtype=torch.int8)
    settings = (lo, hi, p, fused.NEXT_BREAKPOINT_STEP, max_iter, -math.inf, math.inf)
    if not _run("car_newton_general", x, delta, eps, settings, (eta, count, flags)):
        return None
    row_flags = flags.numpy()
    failed = np.bitwise_or.reduce(row_flags) & CHECK_FAILED
    if failed or not np.bitwise_and.reduce(row_flags) & CLOSED:
        return None
    return GeneralScale(eta=eta, iterations=int(count.max()))
