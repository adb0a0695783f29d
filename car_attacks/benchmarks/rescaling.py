"""Benchmark of clipping-aware rescaling: every method of :func:`solve_eta` against the paper.

Times ``newton``, ``sort``, accuracy-matched ``bisection`` and ``naive`` (through the
validation-free core :func:`car_attacks.core.rescaling.solve_eta`), ``newton`` through the public
API (``newton-api``, i.e. with input validation), an independent re-implementation of
Rauber & Bethge's L2 sort algorithm (``paper-sort``) and foolbox's vendored copy of their
code (``foolbox-vendored``) on the same inputs, for CIFAR- and ImageNet-sized batches,
float32 and float64, p in {1, 2, inf} and the PyTorch and NumPy EagerPy backends.

Per row it reports the median time of ``repeats`` calls (after ``warmup`` calls), the ratio
to ``newton``, the achieved relative norm error ``|| clip(x + eta delta) - x ||_p / eps - 1``
(max over the batch, computed in float64), bisection steps / Newton iterations where known,
and the peak extra memory of one call in units of ``x.nbytes``.

Use :func:`run_benchmark` from code, :func:`main` from the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import eagerpy as ep
import numpy as np
import numpy.typing as npt
import torch

from .memory import measure_peak_bytes
from .paper_car import paper_l2_rescaling_numpy, paper_l2_rescaling_torch

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Row",
    "TargetResult",
    "achieved_rel_errors",
    "add_arguments",
    "evaluate_targets",
    "format_table",
    "main",
    "make_inputs",
    "run_benchmark",
    "run_from_args",
    "time_calls",
]

F64 = npt.NDArray[np.float64]

SIZES: dict[str, tuple[int, ...]] = {"cifar": (128, 3, 32, 32), "imagenet": (16, 3, 224, 224)}
QUICK_SIZES: dict[str, tuple[int, ...]] = {"cifar": (8, 3, 8, 8), "imagenet": (2, 3, 16, 16)}
SOLVER_METHODS = ("newton", "sort", "bisection", "naive")
NEWTON_API = "newton-api"
PAPER = "paper-sort"
VENDORED = "foolbox-vendored"
EXACT_METHODS = frozenset({"newton", NEWTON_API, "sort", PAPER, VENDORED})
ITERATIVE_METHODS = frozenset({"newton", "bisection"})
BISECTION_RTOLS = (1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 1e-9, 1e-10, 1e-12)
"""Candidate ``bisection_rtol`` values, loosest first; the first meeting the accuracy wins."""

TARGET_PAPER_SPEEDUP = 3.0
TARGET_BISECTION_SPEEDUP = 10.0
TARGET_NEWTON_MEMORY = 4.0
LO, HI = 0.0, 1.0


@dataclass
class BenchConfig:
    """What to run. Defaults are the full benchmark of the issue."""

    sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(SIZES))
    dtypes: tuple[str, ...] = ("float32", "float64")
    ps: tuple[float, ...] = (1.0, 2.0, math.inf)
    backends: tuple[str, ...] = ("torch", "numpy")
    repeats: int = 5
    warmup: int = 1
    target_rel_err: float = 1e-6
    bisection_max_steps: int = 100
    seed: int = 0
    clip_fraction: float = 0.1
    measure_memory: bool = True
    progress: bool = True
    quick: bool = False
    threads: int | None = None
    """``torch.set_num_threads`` before the run; ``None`` keeps PyTorch's default."""
    clock: str = "wall"
    """``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``)."""


@dataclass
class Row:
    """One timed (backend, size, dtype, p, method) combination."""

    backend: str
    size: str
    shape: list[int]
    dtype: str
    p: str
    method: str
    eps: float
    median_ms: float
    min_ms: float
    times_ms: list[float]
    max_rel_err: float
    ratio_vs_newton: float | None = None
    steps: int | None = None
    steps_source: str | None = None
    bisection_rtol: float | None = None
    fallback_samples: int | None = None
    peak_extra_bytes: int | None = None
    peak_extra_mem: float | None = None


@dataclass
class TargetResult:
    """A target of the issue, checked against the rows."""

    name: str
    threshold: float
    passed: bool | None
    worst: float | None
    per_backend: dict[str, bool | None]
    values: list[dict[str, Any]]

    def summary(self) -> str:
        """One line: ``PASS``/``FAIL``/``N/A``, the target and the measured values."""
        verdict = {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]
        parts = []
        for backend in self.per_backend:
            vals = ", ".join(
                f"{v['size']}/{v['dtype']}/p={v['p']} {v['value']:.2f}"
                for v in self.values
                if v["backend"] == backend
            )
            flag = {True: "pass", False: "FAIL", None: "n/a"}[self.per_backend[backend]]
            parts.append(f"{backend} [{flag}]: {vals}")
        return f"{verdict}  {self.name}: " + "; ".join(parts)


@dataclass
class BenchResult:
    """Rows, targets, environment and configuration of one benchmark run."""

    rows: list[Row]
    targets: list[TargetResult]
    environment: dict[str, Any]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``p`` as a string so ``inf`` stays valid JSON)."""
        return {
            "environment": self.environment,
            "config": self.config,
            "rows": [asdict(r) for r in self.rows],
            "targets": [asdict(t) | {"summary": t.summary()} for t in self.targets],
        }


# ---------------------------------------------------------------------------------------
# inputs and accuracy


def p_label(p: float) -> str:
    """``"1"``, ``"2"``, ``"inf"``, ``"1.5"``."""
    return "inf" if math.isinf(p) else f"{p:g}"


def _lp(v: F64, p: float) -> F64:
    """Per-sample Lp norm of ``v`` of shape ``(N, n)``, float64."""
    a = np.abs(v)
    if math.isinf(p):
        return np.asarray(a.max(axis=1), dtype=np.float64)
    if p == 1:
        return np.asarray(a.sum(axis=1), dtype=np.float64)
    if p == 2:
        return np.asarray(np.sqrt(np.square(a).sum(axis=1)), dtype=np.float64)
    return np.asarray((a**p).sum(axis=1) ** (1.0 / p), dtype=np.float64)


def make_inputs(shape: Sequence[int], seed: int, clip_fraction: float = 0.1) -> tuple[F64, F64]:
    """``x`` uniform in [0, 1] with ``clip_fraction`` of coordinates exactly 0 or 1, and
    a Gaussian ``delta``; both float64 with a fixed seed."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(LO, HI, size=tuple(shape))
    at_bound = rng.random(size=x.shape) < clip_fraction
    x[at_bound] = rng.integers(0, 2, size=int(at_bound.sum())).astype(np.float64)
    delta = rng.standard_normal(size=x.shape)
    return x, delta


def choose_eps(x: F64, delta: F64, p: float) -> float:
    """An eps at which clipping matters: 8/255 for Linf, else half the smallest reachable
    norm in the batch (so naive rescaling undershoots). Exactly representable in float32."""
    if math.isinf(p):
        eps = 8.0 / 255.0
    else:
        n = x.shape[0]
        space = np.where(delta >= 0, HI - x, x - LO) * (delta != 0)
        eps = 0.5 * float(_lp(space.reshape(n, -1), p).min())
    return float(np.float32(eps))


def achieved_rel_errors(x: F64, delta: F64, eta: F64, eps: float, p: float) -> F64:
    """``| ||clip(x + eta delta, 0, 1) - x||_p - eps | / eps`` per sample, in float64."""
    n = x.shape[0]
    e = np.asarray(eta, dtype=np.float64).reshape((n,) + (1,) * (x.ndim - 1))
    x64 = np.asarray(x, dtype=np.float64)
    moved = np.clip(x64 + e * np.asarray(delta, dtype=np.float64), LO, HI) - x64
    return np.asarray(np.abs(_lp(moved.reshape(n, -1), p) - eps) / eps, dtype=np.float64)


def _to_numpy(t: Any) -> F64:
    """Anything tensor-like as a flat float64 NumPy array."""
    if isinstance(t, ep.Tensor):
        t = t.raw
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------------------------
# the functions under test


def _solve_eta() -> Callable[..., Any]:
    from car_attacks.core.rescaling import solve_eta

    return solve_eta


def _public_api() -> Callable[..., Any]:
    from car_attacks.core.rescaling import clipping_aware_rescaling

    return clipping_aware_rescaling


_STEP_KEYS = (
    "steps",
    "bisection_steps",
    "iterations",
    "newton_iterations",
    "n_steps",
    "n_iter",
    "n_iterations",
    "num_steps",
    "num_iterations",
    "iters",
)


def _steps_from_info(info: Any) -> int | None:
    """Extract a step/iteration count from whatever ``solve_eta`` reports."""
    if info is None:
        return None
    if isinstance(info, int | np.integer):
        return int(info)
    for key in _STEP_KEYS:
        value = info.get(key) if isinstance(info, Mapping) else getattr(info, key, None)
        if value is None:
            continue
        if isinstance(value, ep.Tensor | torch.Tensor | np.ndarray):
            return int(_to_numpy(value).max())
        return int(value)
    return None


def _info_solver() -> Callable[..., Any] | None:
    """``solve_eta_with_info`` (returns ``(eta, info)``) if the module has it."""
    import car_attacks.core.rescaling as mod

    fn = getattr(mod, "solve_eta_with_info", None)
    return fn if callable(fn) else None


def _bisection_steps_from_rtol(rtol: float, max_steps: int) -> int:
    """Steps to shrink a bracket by ``rtol`` (used when ``solve_eta`` reports none)."""
    return min(max_steps, math.ceil(math.log2(1.0 / rtol)))


@dataclass
class _Case:
    """Native inputs of one (backend, size, dtype, p) and their float64 originals."""

    backend: str
    x: Any
    delta: Any
    eps: float
    eps_t: ep.Tensor
    p: float
    x64: F64
    d64: F64
    x_nbytes: int


def _make_case(backend: str, dtype: str, x64: F64, d64: F64, eps: float, p: float) -> _Case:
    xn = np.ascontiguousarray(x64.astype(dtype))
    dn = np.ascontiguousarray(d64.astype(dtype))
    epsn = np.full((x64.shape[0],), eps, dtype=dtype)
    if backend == "torch":
        x: Any = torch.from_numpy(xn)
        d: Any = torch.from_numpy(dn)
        eps_t: ep.Tensor = ep.astensor(torch.from_numpy(epsn))
    elif backend == "numpy":
        x, d, eps_t = xn, dn, ep.astensor(epsn)
    else:
        raise ValueError(f"unknown backend {backend!r} (torch, numpy)")
    # accuracy is judged on the inputs actually used (rounded to dtype), in float64
    return _Case(
        backend, x, d, eps, eps_t, p, xn.astype(np.float64), dn.astype(np.float64), xn.nbytes
    )


def _runner(case: _Case, method: str, rtol: float, max_steps: int) -> Callable[[], Any]:
    """A zero-argument call computing eta with ``method`` on ``case``."""
    if method == PAPER:
        if case.backend == "torch":
            return lambda: paper_l2_rescaling_torch(case.x, case.delta, case.eps, LO, HI)
        return lambda: paper_l2_rescaling_numpy(case.x, case.delta, case.eps, LO, HI)
    if method == VENDORED:
        from foolbox.external.clipping_aware_rescaling import l2_clipping_aware_rescaling

        return lambda: l2_clipping_aware_rescaling(case.x, case.delta, case.eps, LO, HI)
    if method == NEWTON_API:
        api = _public_api()
        return lambda: api(case.x, case.delta, case.eps, p=case.p, bounds=(LO, HI))
    solve = _solve_eta()
    xe, de = ep.astensor(case.x), ep.astensor(case.delta)
    return lambda: solve(
        xe,
        de,
        case.eps_t,
        p=case.p,
        lo=LO,
        hi=HI,
        method=method,
        bisection_rtol=rtol,
        bisection_max_steps=max_steps,
    )


def _solve_with_info(case: _Case, method: str, rtol: float, max_steps: int) -> tuple[F64, Any]:
    """eta (float64, shape (N,)) and the solve statistics, if the module reports them."""
    solver = _info_solver()
    if solver is None:
        return _to_numpy(_runner(case, method, rtol, max_steps)()), None
    eta, info = solver(
        ep.astensor(case.x),
        ep.astensor(case.delta),
        case.eps_t,
        p=case.p,
        lo=LO,
        hi=HI,
        method=method,
        bisection_rtol=rtol,
        bisection_max_steps=max_steps,
    )
    return _to_numpy(eta), info


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time. ``cpu``: CPU time of this process (all its threads); with one
torch thread it is insensitive to other processes competing for the cores."""


def time_calls(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    tick: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls of each function after ``warmup`` untimed calls.

    Round-robin: every round calls each function once, so load from other processes
    affects all of them alike and the ratios stay meaningful. ``tick`` runs after each round.
    """
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collection pauses inside the timed calls
    try:
        for round_ in range(warmup + repeats):
            for name, fn in fns.items():
                t0 = now()
                fn()
                if round_ >= warmup:
                    times[name].append((now() - t0) * 1e3)
            if tick is not None:
                tick()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _methods_for(p: float) -> list[str]:
    methods = list(SOLVER_METHODS) + [NEWTON_API]
    if p == 2:
        methods += [PAPER, VENDORED]
    return methods


def _match_bisection(case: _Case, config: BenchConfig) -> float:
    """The loosest ``bisection_rtol`` whose achieved error is <= the target (else the
    tightest candidate)."""
    for rtol in BISECTION_RTOLS:
        eta, _ = _solve_with_info(case, "bisection", rtol, config.bisection_max_steps)
        err = achieved_rel_errors(case.x64, case.d64, eta, case.eps, case.p).max()
        if err <= config.target_rel_err:
            return rtol
    return BISECTION_RTOLS[-1]


def _bench_case(
    case: _Case,
    config: BenchConfig,
    meta: dict[str, Any],
    tick: Callable[[], None] | None = None,
) -> list[Row]:
    """Time all methods on one case (round-robin), then measure accuracy and memory."""
    methods = _methods_for(case.p)
    rtol = _match_bisection(case, config) if "bisection" in methods else None
    if tick is not None:
        tick()
    max_steps = config.bisection_max_steps
    fns = {m: _runner(case, m, rtol or 1e-7, max_steps) for m in methods}
    times = time_calls(fns, config.repeats, config.warmup, tick, config.clock)
    rows = []
    for method in methods:
        steps: int | None = None
        source: str | None = None
        fallback: int | None = None
        if method in SOLVER_METHODS:
            eta, info = _solve_with_info(case, method, rtol or 1e-7, max_steps)
            if method in ITERATIVE_METHODS:
                steps = _steps_from_info(info)
                source = "reported" if steps is not None else None
            if method == "newton":
                fallback = getattr(info, "fallback_samples", None)
            if steps is None and method == "bisection" and rtol is not None:
                steps, source = _bisection_steps_from_rtol(rtol, max_steps), "rtol"
        else:
            eta = _to_numpy(fns[method]())
        err = float(achieved_rel_errors(case.x64, case.d64, eta, case.eps, case.p).max())
        peak: int | None = None
        if config.measure_memory:
            _, peak = measure_peak_bytes(fns[method], case.backend)
        rows.append(
            Row(
                **meta,
                method=method,
                eps=case.eps,
                median_ms=statistics.median(times[method]),
                min_ms=min(times[method]),
                times_ms=times[method],
                max_rel_err=err,
                steps=steps,
                steps_source=source,
                bisection_rtol=rtol if method == "bisection" else None,
                fallback_samples=fallback,
                peak_extra_bytes=peak,
                peak_extra_mem=None if peak is None else peak / case.x_nbytes,
            )
        )
        if tick is not None:
            tick()
    return rows


def environment() -> dict[str, Any]:
    """Versions, CPU count and platform."""
    import foolbox

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "eagerpy": ep.__version__,
        "foolbox": foolbox.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "loadavg_1m": _loadavg(),
        "rescaling_sha256": _source_sha256("car_attacks.core.rescaling"),
    }


def _source_sha256(module: str) -> str | None:
    """SHA-256 of a module's source file, to tell which implementation was timed."""
    import hashlib
    import importlib

    try:
        path = importlib.import_module(module).__file__
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (ImportError, OSError):
        return None


def _loadavg() -> float | None:
    """1-minute load average (other processes skew timings on a small machine)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available
        return None


def run_benchmark(config: BenchConfig | None = None) -> BenchResult:
    """Run every configured combination and evaluate the targets."""
    from tqdm.auto import tqdm

    config = config or BenchConfig()
    load_before = _loadavg()
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rounds = config.warmup + config.repeats + 1  # + bisection matching
    total = len(config.sizes) * len(config.dtypes) * len(config.backends)
    total *= sum(rounds + len(_methods_for(p)) for p in config.ps)
    rows: list[Row] = []
    bar = tqdm(total=total, file=sys.stderr, disable=not config.progress, unit="step")
    try:
        for size, shape in config.sizes.items():
            x64, d64 = make_inputs(shape, config.seed, config.clip_fraction)
            for p in config.ps:
                eps = choose_eps(x64, d64, p)
                for dtype in config.dtypes:
                    for backend in config.backends:
                        bar.set_description(f"{backend} {size} {dtype} p={p_label(p)}")
                        case = _make_case(backend, dtype, x64, d64, eps, p)
                        meta = {
                            "backend": backend,
                            "size": size,
                            "shape": list(shape),
                            "dtype": dtype,
                            "p": p_label(p),
                        }
                        rows.extend(_bench_case(case, config, meta, bar.update))
        env = environment() | {"loadavg_1m_before": load_before}
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
    _fill_ratios(rows)
    return BenchResult(
        rows=rows, targets=evaluate_targets(rows), environment=env, config=_config_json(config)
    )


def _config_json(config: BenchConfig) -> dict[str, Any]:
    d = asdict(config)
    d["ps"] = [p_label(p) for p in config.ps]
    d["sizes"] = {k: list(v) for k, v in config.sizes.items()}
    return d


def _key(r: Row) -> tuple[str, str, str, str]:
    return (r.backend, r.size, r.dtype, r.p)


def _fill_ratios(rows: list[Row]) -> None:
    newton = {_key(r): r.median_ms for r in rows if r.method == "newton"}
    for r in rows:
        base = newton.get(_key(r))
        r.ratio_vs_newton = None if not base else r.median_ms / base


# ---------------------------------------------------------------------------------------
# targets and output


def _speedup_target(rows: list[Row], other: str, threshold: float, name: str) -> TargetResult:
    newton = {_key(r): r for r in rows if r.method == "newton" and r.p == "2"}
    values = [
        {
            "backend": r.backend,
            "size": r.size,
            "dtype": r.dtype,
            "p": r.p,
            "value": r.median_ms / newton[_key(r)].median_ms,
        }
        for r in rows
        if r.method == other and _key(r) in newton
    ]
    return _target(name, threshold, values, higher_is_better=True)


def _target(
    name: str, threshold: float, values: list[dict[str, Any]], higher_is_better: bool
) -> TargetResult:
    def ok(v: float) -> bool:
        # compared as printed (two decimals): per-sample (N, 1) vectors add ~1e-4 x-sizes
        v = round(v, 2)
        return v >= threshold if higher_is_better else v <= threshold

    per_backend: dict[str, bool | None] = {}
    for v in values:
        per_backend[v["backend"]] = per_backend.get(v["backend"], True) and ok(v["value"])
    nums = [v["value"] for v in values]
    worst = None if not nums else (min(nums) if higher_is_better else max(nums))
    passed = None if worst is None else ok(worst)
    return TargetResult(name, threshold, passed, worst, per_backend, values)


def evaluate_targets(rows: list[Row]) -> list[TargetResult]:
    """The issue's targets: newton >= 3x paper-sort and >= 10x accuracy-matched bisection
    (L2, every size), newton peak extra memory <= 4 x-sizes (every p)."""
    mem_values = [
        {
            "backend": r.backend,
            "size": r.size,
            "dtype": r.dtype,
            "p": r.p,
            "value": r.peak_extra_mem,
        }
        for r in rows
        if r.method == "newton" and r.peak_extra_mem is not None
    ]
    return [
        _speedup_target(
            rows,
            PAPER,
            TARGET_PAPER_SPEEDUP,
            f"newton >= {TARGET_PAPER_SPEEDUP:g}x faster than paper-sort (L2)",
        ),
        _speedup_target(
            rows,
            "bisection",
            TARGET_BISECTION_SPEEDUP,
            f"newton >= {TARGET_BISECTION_SPEEDUP:g}x faster than accuracy-matched bisection (L2)",
        ),
        _target(
            f"newton peak extra memory <= {TARGET_NEWTON_MEMORY:g} x-sizes (all p)",
            TARGET_NEWTON_MEMORY,
            mem_values,
            higher_is_better=False,
        ),
    ]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of the rows."""
    header = [
        "backend",
        "size",
        "dtype",
        "p",
        "method",
        "median ms",
        "x newton",
        "max rel err",
        "steps",
        "peak mem (x)",
    ]
    body = [
        [
            r.backend,
            r.size,
            r.dtype,
            r.p,
            r.method,
            _fmt(r.median_ms, ".2f"),
            _fmt(r.ratio_vs_newton, ".2f"),
            _fmt(r.max_rel_err, ".1e"),
            "-" if r.steps is None else str(r.steps) + ("*" if r.steps_source == "rtol" else ""),
            _fmt(r.peak_extra_mem, ".2f"),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = set(range(5, len(header)))

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(b) for b in body)])


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser with the benchmark's options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``ap`` (e.g. a ``car-attacks bench`` subparser)."""
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats (smoke test)")
    ap.add_argument(
        "--out", type=Path, default=Path("bench_results/rescaling.json"), help="JSON output path"
    )
    ap.add_argument("--backends", default="torch,numpy", help="comma list of torch,numpy")
    ap.add_argument("--dtypes", default="float32,float64", help="comma list")
    ap.add_argument("--ps", default="1,2,inf", help="comma list of norm orders")
    ap.add_argument("--sizes", default=None, help="comma list of cifar,imagenet (default both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--target-rel-err",
        type=float,
        default=1e-6,
        help="accuracy bisection must reach (relative norm error)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: PyTorch's default)"
    )
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter (default); cpu: process_time, robust to other load "
        "when combined with --threads 1",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--fail-on-target", action="store_true", help="exit 1 if a target fails")


def _split(s: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in s.split(",") if t.strip())


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`BenchConfig` from parsed command-line options."""
    all_sizes = QUICK_SIZES if args.quick else SIZES
    names = _split(args.sizes) if args.sizes else tuple(all_sizes)
    unknown = [n for n in names if n not in all_sizes]
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}; choose from {list(all_sizes)}")
    return BenchConfig(
        sizes={n: all_sizes[n] for n in names},
        dtypes=_split(args.dtypes),
        ps=tuple(float(p) for p in _split(args.ps)),
        backends=_split(args.backends),
        repeats=args.repeats if args.repeats is not None else (2 if args.quick else 5),
        warmup=args.warmup,
        target_rel_err=args.target_rel_err,
        seed=args.seed,
        measure_memory=not args.no_memory,
        progress=not args.no_progress,
        quick=args.quick,
        threads=args.threads,
        clock=args.clock,
    )


def report(result: BenchResult, quick: bool = False) -> str:
    """The table, the notes and one summary line per target."""
    lines = [format_table(result.rows), ""]
    lines.append(
        "steps: bisection steps (* = derived from rtol) / newton iterations if reported;"
        " peak mem in units of x.nbytes (torch: op outputs via dispatch mode; numpy:"
        " tracemalloc)"
    )
    by_rtol: dict[float, list[str]] = {}
    for r in result.rows:
        if r.method == "bisection" and r.bisection_rtol is not None:
            by_rtol.setdefault(r.bisection_rtol, []).append(f"{r.backend}/{r.size}/{r.dtype}/{r.p}")
    if by_rtol:
        lines.append(
            f"bisection_rtol matched to max rel err <= {result.config['target_rel_err']:g}: "
            + "; ".join(f"{t:g} ({len(v)} configs: {', '.join(v)})" for t, v in by_rtol.items())
            if len(by_rtol) > 1
            else f"bisection_rtol matched to max rel err <= {result.config['target_rel_err']:g}: "
            f"{next(iter(by_rtol)):g} in all {len(next(iter(by_rtol.values())))} configs"
        )
    env = result.environment
    lines.append(
        f"load average (1 min) before/after: {_fmt(env.get('loadavg_1m_before'), '.2f')}/"
        f"{_fmt(env.get('loadavg_1m'), '.2f')} on {env.get('cpu_count')} CPUs, torch threads "
        f"{env.get('torch_num_threads')}, clock {result.config.get('clock')}"
        " (wall-clock timings are unreliable when the load exceeds the CPUs)"
    )
    if quick:
        lines.append("quick mode: reduced sizes and repeats; targets are not meaningful")
    lines.append("")
    lines.extend("TARGET " + t.summary() for t in result.targets)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run, print the table and targets, write JSON."""
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed options (see :func:`add_arguments`); print the report, write JSON.

    Returns the exit status: 1 if ``--fail-on-target`` and a target fails, else 0.
    """
    config = config_from_args(args)
    result = run_benchmark(config)
    print(report(result, quick=config.quick))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(f"\nwrote {out}")
    if args.fail_on_target and any(t.passed is False for t in result.targets):
        return 1
    return 0
