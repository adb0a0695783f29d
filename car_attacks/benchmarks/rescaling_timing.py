"""Benchmark of clipping-aware rescaling: every method of :func:`solve_eta` against the paper.

Times the methods of :mod:`~car_attacks.benchmarks.rescaling_methods` (``newton``, ``sort``,
accuracy-matched ``bisection``, ``naive``, ``newton-api``, ``paper-sort``,
``foolbox-vendored``) on the same inputs, for CIFAR- and ImageNet-sized batches, float32 and
float64, p in {1, 2, inf} and the PyTorch and NumPy EagerPy backends.

Per row it reports the median time of ``repeats`` calls (after ``warmup`` calls), the ratio
to ``newton``, the achieved relative norm error ``|| clip(x + eta delta) - x ||_p / eps - 1``
(max over the batch, computed in float64), bisection steps / Newton iterations, and the
peak extra memory of one call in units of ``x.nbytes``.

Use :func:`run_benchmark` from code, :func:`main` from the command line.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import eagerpy as ep
import foolbox
import numpy as np
import torch
from tqdm.auto import tqdm

from car_attacks.core import fused, rescaling, solvers

from .memory import measure_peak_bytes
from .rescaling_cases import (
    QUICK_SIZES,
    SIZES,
    BenchConfig,
    Case,
    achieved_rel_errors,
    choose_eps,
    make_case,
    make_inputs,
    p_label,
    to_numpy,
)
from .rescaling_methods import (
    ITERATIVE_METHODS,
    ONE_PASS,
    PROJECT,
    SOLVER_METHODS,
    match_bisection,
    method_call,
    methods_for,
    reference_calls,
    solve,
)
from .rescaling_results import BenchResult, Environment, Row, evaluate_targets, fill_ratios, report

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time. ``cpu``: CPU time of this process (all its threads); with one
torch thread it is insensitive to other processes competing for the cores."""


def time_calls(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    tick: Callable[[], None] | None = None,
    clock: str = "wall",
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls of each function after ``warmup`` untimed calls.

    Round-robin: every round calls each function once, so load from other processes
    affects all of them alike and the ratios stay meaningful. Each timed call follows an
    untimed call of the same function, so every function is timed with its inputs in
    cache (as inside an attack, where the step has just written them), whatever ran
    before it in the round: otherwise a function that follows one reading the same
    tensors looks faster than one that follows a function flushing them. ``tick`` runs
    after each round. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock
    starts and before it stops, so asynchronous devices are timed to completion.
    """
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collection pauses inside the timed calls
    try:
        for round_ in range(warmup + repeats):
            for name, fn in fns.items():
                if round_ >= warmup:
                    fn()  # the same cache state for every function
                if sync is not None:
                    sync()
                t0 = now()
                fn()
                if sync is not None:
                    sync()
                if round_ >= warmup:
                    times[name].append((now() - t0) * 1e3)
            if tick is not None:
                tick()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _bench_case(
    case: Case, config: BenchConfig, tick: Callable[[], None] | None = None
) -> list[Row]:
    """Time all methods on one case (round-robin), then measure accuracy and memory."""
    methods = methods_for(case.p)
    max_steps = config.bisection_max_steps
    rtol = match_bisection(case, config.target_rel_err, max_steps)
    if tick is not None:
        tick()
    fns = {m: method_call(case, m, rtol, max_steps) for m in methods}
    references = reference_calls(case)
    sync = torch.cuda.synchronize if _is_cuda(config.device) else None
    times = time_calls(
        fns | references, config.repeats, config.warmup, tick, config.clock, sync=sync
    )
    one_pass_ms = statistics.median(times[ONE_PASS])
    project_ms = statistics.median(times[PROJECT]) if PROJECT in times else None
    rows = []
    for method in methods:
        steps: int | None = None
        fallback: int | None = None
        if method in SOLVER_METHODS:
            eta_ep, info = solve(case, method, rtol, max_steps)
            eta = to_numpy(eta_ep)
            if method in ITERATIVE_METHODS:
                steps = info.iterations
            if method == "newton":
                fallback = info.fallback_samples
        else:
            eta = to_numpy(fns[method]())
        err = float(achieved_rel_errors(case.x64, case.d64, eta, case.eps, case.p).max())
        peak: int | None = None
        if config.measure_memory:
            _, peak = measure_peak_bytes(fns[method], case.backend, config.device)
        rows.append(
            Row(
                backend=case.backend,
                size=case.size,
                shape=list(case.shape),
                dtype=case.dtype,
                p=p_label(case.p),
                method=method,
                eps=case.eps,
                median_ms=statistics.median(times[method]),
                min_ms=min(times[method]),
                times_ms=times[method],
                max_rel_err=err,
                steps=steps,
                bisection_rtol=rtol if method == "bisection" else None,
                fallback_samples=fallback,
                peak_extra_bytes=peak,
                peak_extra_mem=None if peak is None else peak / case.x_nbytes,
                one_pass_ms=one_pass_ms,
                project_ms=project_ms,
            )
        )
        if tick is not None:
            tick()
    return rows


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def _device_name(device: str) -> str:
    """``"cpu"``, or the device string with the GPU's name."""
    if _is_cuda(device):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def environment(load_before: float | None, device: str = "cpu") -> Environment:
    """Versions, CPU count, platform, load, device, and the hashes of the timed maths
    modules."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        eagerpy=ep.__version__,
        foolbox=foolbox.__version__,
        cpu_count=os.cpu_count(),
        cpu_affinity=affinity,
        torch_num_threads=torch.get_num_threads(),
        platform=platform.platform(),
        processor=platform.processor(),
        machine=platform.machine(),
        loadavg_1m=_loadavg(),
        rescaling_sha256=_source_sha256(rescaling.__file__),
        solvers_sha256=_source_sha256(solvers.__file__),
        loadavg_1m_before=load_before,
        compile_seconds=fused.compile_seconds(),
        device=_device_name(device),
    )


def _source_sha256(path: str | None) -> str | None:
    """SHA-256 of a module's source file, to tell which implementation was timed."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def _loadavg() -> float | None:
    """1-minute load average (other processes skew timings on a small machine)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available
        return None


def run_benchmark(config: BenchConfig | None = None) -> BenchResult:
    """Run every configured combination and evaluate the targets."""
    config = config or BenchConfig()
    load_before = _loadavg()
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rounds = config.warmup + config.repeats + 1  # + bisection matching
    total = len(config.sizes) * len(config.dtypes) * len(config.backends)
    total *= sum(rounds + len(methods_for(p)) for p in config.ps)
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
                        case = make_case(
                            backend=backend,
                            size=size,
                            dtype=dtype,
                            x64=x64,
                            d64=d64,
                            eps=eps,
                            p=p,
                            device=config.device,
                        )
                        rows.extend(_bench_case(case, config, bar.update))
        env = environment(load_before, config.device)
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
    fill_ratios(rows)
    return BenchResult(rows=rows, targets=evaluate_targets(rows), environment=env, config=config)


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
    ap.add_argument(
        "--device",
        default="cpu",
        help="torch device of the PyTorch cases, e.g. cuda (needs --backends torch and "
        "--clock wall; timings synchronise the device)",
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
    backends = _split(args.backends)
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"--device: not a torch device: {args.device!r} ({exc})") from None
    if device.type != "cpu":
        if "numpy" in backends:
            raise SystemExit(f"--device {args.device}: NumPy runs on the CPU; use --backends torch")
        if args.clock == "cpu":
            raise SystemExit(f"--device {args.device}: --clock cpu does not see device time")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available here")
    return BenchConfig(
        sizes={n: all_sizes[n] for n in names},
        dtypes=_split(args.dtypes),
        ps=tuple(float(p) for p in _split(args.ps)),
        backends=backends,
        repeats=args.repeats if args.repeats is not None else (2 if args.quick else 5),
        warmup=args.warmup,
        target_rel_err=args.target_rel_err,
        seed=args.seed,
        measure_memory=not args.no_memory,
        progress=not args.no_progress,
        quick=args.quick,
        threads=args.threads,
        clock=args.clock,
        device=args.device,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run, print the table and targets, write JSON. The fused
    kernels are compiled (``CAR_ATTACKS_COMPILE=1``) unless the environment says ``0``."""
    os.environ.setdefault(fused.COMPILE_ENV, "1")
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed options (see :func:`add_arguments`); print the report, write JSON.

    Returns the exit status: 1 if ``--fail-on-target`` and a target fails, else 0.
    """
    config = config_from_args(args)
    result = run_benchmark(config)
    print(report(result))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(f"\nwrote {out}")
    if args.fail_on_target and any(t.passed is False for t in result.targets):
        return 1
    return 0
