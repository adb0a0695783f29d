"""The results of the rescaling benchmark: timed rows, the issue's targets, the table and JSON.

The JSON (:meth:`BenchResult.to_json`, written to ``bench_results/rescaling.json``) holds
``environment``, ``config``, ``rows`` and ``targets`` (each with a one-line ``summary``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .rescaling_cases import BenchConfig, p_label
from .rescaling_methods import NEWTON_API, PAPER

TARGET_PAPER_SPEEDUP = 3.0
TARGET_BISECTION_SPEEDUP = 10.0
TARGET_NEWTON_MEMORY = 4.0
TARGET_API_PAPER_SPEEDUP = 15.0
TARGET_API_OVERHEAD = 1.10
TARGET_NEWTON_PASSES = 12.0
"""Newton at ImageNet size within this many one-pass equivalents."""
TARGET_PROJECT_PASSES = 15.0
"""``project_lp_ball_box`` (p = 1, 2) within this many one-pass equivalents."""


@dataclass(kw_only=True)
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
    """Bisection steps or Newton iterations, as the solve reported them."""
    bisection_rtol: float | None = None
    fallback_samples: int | None = None
    peak_extra_bytes: int | None = None
    peak_extra_mem: float | None = None
    one_pass_ms: float | None = None
    """Median of the same case's one-pass reference ``clip(x + delta)``, timed alongside."""
    project_ms: float | None = None
    """Median of the same case's ``project_lp_ball_box``, timed alongside."""

    @property
    def passes(self) -> float | None:
        """``median_ms`` in one-pass equivalents."""
        return None if not self.one_pass_ms else self.median_ms / self.one_pass_ms


@dataclass(frozen=True, kw_only=True)
class TargetValue:
    """The measured value of a target for one (backend, size, dtype, p)."""

    backend: str
    size: str
    dtype: str
    p: str
    value: float


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """A target of the issue, checked against the measured values."""

    name: str
    threshold: float
    values: list[TargetValue]
    higher_is_better: bool

    def met_by(self, value: float) -> bool:
        """Whether ``value`` meets the threshold, compared as printed (two decimals):
        per-sample (N, 1) vectors add ~1e-4 x-sizes to the memory."""
        v = round(value, 2)
        return v >= self.threshold if self.higher_is_better else v <= self.threshold

    @property
    def worst(self) -> float | None:
        """The worst measured value (``None`` without values)."""
        nums = [v.value for v in self.values]
        return None if not nums else (min(nums) if self.higher_is_better else max(nums))

    @property
    def passed(self) -> bool | None:
        """Whether every value meets the threshold (``None`` without values)."""
        worst = self.worst
        return None if worst is None else self.met_by(worst)

    @property
    def per_backend(self) -> dict[str, bool | None]:
        """:attr:`passed` per backend."""
        per_backend: dict[str, bool | None] = {}
        for v in self.values:
            per_backend[v.backend] = per_backend.get(v.backend, True) and self.met_by(v.value)
        return per_backend

    def summary(self) -> str:
        """One line: ``PASS``/``FAIL``/``N/A``, the target and the measured values."""
        verdict = {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]
        parts = []
        for backend, passed in self.per_backend.items():
            vals = ", ".join(
                f"{v.size}/{v.dtype}/p={v.p} {v.value:.2f}"
                for v in self.values
                if v.backend == backend
            )
            flag = {True: "pass", False: "FAIL", None: "n/a"}[passed]
            parts.append(f"{backend} [{flag}]: {vals}")
        return f"{verdict}  {self.name}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The target, its verdicts, values and summary as a JSON-serialisable dict."""
        return {
            "name": self.name,
            "threshold": self.threshold,
            "passed": self.passed,
            "worst": self.worst,
            "per_backend": self.per_backend,
            "values": [asdict(v) for v in self.values],
            "summary": self.summary(),
        }


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Versions, CPUs and load of the machine that ran the benchmark."""

    python: str
    torch: str
    numpy: str
    eagerpy: str
    foolbox: str
    cpu_count: int | None
    cpu_affinity: int | None
    torch_num_threads: int
    platform: str
    processor: str
    machine: str
    loadavg_1m: float | None
    """1-minute load average after the run (other processes skew timings)."""
    rescaling_sha256: str | None
    """SHA-256 of :mod:`car_attacks.core.rescaling`, to tell which implementation was timed."""
    solvers_sha256: str | None
    """SHA-256 of :mod:`car_attacks.core.solvers`."""
    loadavg_1m_before: float | None
    compile_seconds: dict[str, float] = field(default_factory=dict)
    """First (compiling) call of each fused kernel, seconds (not in the timings)."""
    device: str = "cpu"
    """Device of the PyTorch cases, with the GPU's name on CUDA."""


@dataclass(kw_only=True)
class BenchResult:
    """Rows, targets, environment and configuration of one benchmark run."""

    rows: list[Row]
    targets: list[TargetResult]
    environment: Environment
    config: BenchConfig

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``p`` as a string so ``inf`` stays valid JSON)."""
        config = asdict(self.config)
        config["ps"] = [p_label(p) for p in self.config.ps]
        config["sizes"] = {k: list(v) for k, v in self.config.sizes.items()}
        return {
            "environment": asdict(self.environment),
            "config": config,
            "rows": [asdict(r) for r in self.rows],
            "targets": [t.to_json() for t in self.targets],
        }


def _key(r: Row) -> tuple[str, str, str, str]:
    return (r.backend, r.size, r.dtype, r.p)


def fill_ratios(rows: list[Row]) -> None:
    """Set each row's ``ratio_vs_newton``: its median time over Newton's on the same case."""
    newton = {_key(r): r.median_ms for r in rows if r.method == "newton"}
    for r in rows:
        base = newton.get(_key(r))
        r.ratio_vs_newton = None if not base else r.median_ms / base


def _value(r: Row, value: float) -> TargetValue:
    return TargetValue(backend=r.backend, size=r.size, dtype=r.dtype, p=r.p, value=value)


def _speedup_target(rows: list[Row], other: str, threshold: float, name: str) -> TargetResult:
    newton = {_key(r): r for r in rows if r.method == "newton" and r.p == "2"}
    values = [
        _value(r, r.median_ms / newton[_key(r)].median_ms)
        for r in rows
        if r.method == other and _key(r) in newton
    ]
    return TargetResult(name=name, threshold=threshold, values=values, higher_is_better=True)


def _api_targets(rows: list[Row]) -> list[TargetResult]:
    """The public API against the paper, bisection and the core solve; Newton and the
    projection in one-pass equivalents."""
    core = {_key(r): r for r in rows if r.method == "newton"}
    api = [r for r in rows if r.method == NEWTON_API and _key(r) in core]
    sort_or_paper = {_key(r): r for r in rows if r.method == (PAPER if r.p == "2" else "sort")}
    bisection = {_key(r): r for r in rows if r.method == "bisection"}
    proj = [r for r in core.values() if r.p in ("1", "2") and r.project_ms and r.one_pass_ms]

    def speedup(others: dict[tuple[str, str, str, str], Row]) -> list[TargetValue]:
        return [
            _value(r, others[_key(r)].median_ms / r.median_ms) for r in api if _key(r) in others
        ]

    return [
        TargetResult(
            name=f"newton-api >= {TARGET_API_PAPER_SPEEDUP:g}x faster than the sort "
            "(L2: the paper's)",
            threshold=TARGET_API_PAPER_SPEEDUP,
            values=speedup(sort_or_paper),
            higher_is_better=True,
        ),
        TargetResult(
            name=f"newton-api >= {TARGET_BISECTION_SPEEDUP:g}x faster than bisection",
            threshold=TARGET_BISECTION_SPEEDUP,
            values=speedup(bisection),
            higher_is_better=True,
        ),
        TargetResult(
            name=f"newton-api <= {TARGET_API_OVERHEAD:g} x the core newton solve",
            threshold=TARGET_API_OVERHEAD,
            values=[_value(r, r.median_ms / core[_key(r)].median_ms) for r in api],
            higher_is_better=False,
        ),
        TargetResult(
            name=f"newton within {TARGET_NEWTON_PASSES:g} one-pass equivalents (ImageNet)",
            threshold=TARGET_NEWTON_PASSES,
            values=[
                _value(r, r.passes)
                for r in core.values()
                if r.size == "imagenet" and r.passes is not None
            ],
            higher_is_better=False,
        ),
        TargetResult(
            name=f"project_lp_ball_box (p = 1, 2) within {TARGET_PROJECT_PASSES:g} one-pass "
            "equivalents",
            threshold=TARGET_PROJECT_PASSES,
            values=[_value(r, r.project_ms / r.one_pass_ms) for r in proj],  # type: ignore[operator]
            higher_is_better=False,
        ),
    ]


def evaluate_targets(rows: list[Row]) -> list[TargetResult]:
    """The issue's targets: newton >= 3x paper-sort and >= 10x accuracy-matched bisection
    (L2, every size), newton peak extra memory <= 4 x-sizes (every p)."""
    mem_values = [
        _value(r, r.peak_extra_mem)
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
        TargetResult(
            name=f"newton peak extra memory <= {TARGET_NEWTON_MEMORY:g} x-sizes (all p)",
            threshold=TARGET_NEWTON_MEMORY,
            values=mem_values,
            higher_is_better=False,
        ),
        *_api_targets(rows),
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
        "passes",
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
            _fmt(r.passes, ".1f"),
            _fmt(r.max_rel_err, ".1e"),
            "-" if r.steps is None else str(r.steps),
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


def _bisection_rtols_line(result: BenchResult) -> str | None:
    """Which ``bisection_rtol`` met the accuracy target, and in which configurations."""
    by_rtol: dict[float, list[str]] = {}
    for r in result.rows:
        if r.method == "bisection" and r.bisection_rtol is not None:
            by_rtol.setdefault(r.bisection_rtol, []).append(f"{r.backend}/{r.size}/{r.dtype}/{r.p}")
    if not by_rtol:
        return None
    head = f"bisection_rtol matched to max rel err <= {result.config.target_rel_err:g}: "
    if len(by_rtol) > 1:
        return head + "; ".join(
            f"{t:g} ({len(v)} configs: {', '.join(v)})" for t, v in by_rtol.items()
        )
    ((rtol, configs),) = by_rtol.items()
    return head + f"{rtol:g} in all {len(configs)} configs"


def report(result: BenchResult) -> str:
    """The table, the notes and one summary line per target."""
    lines = [format_table(result.rows), ""]
    lines.append(
        "steps: bisection steps / newton iterations; peak mem in units of x.nbytes"
        " (torch on CPU: op outputs via dispatch mode; CUDA: the allocator's peak; numpy:"
        " tracemalloc); passes: median over the"
        " one-pass clip(x + delta) timed alongside"
    )
    compiled = result.environment.compile_seconds
    if compiled:
        lines.append(
            "compile (first call, not timed above): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(compiled.items()))
        )
    rtols = _bisection_rtols_line(result)
    if rtols is not None:
        lines.append(rtols)
    env = result.environment
    lines.append(
        f"load average (1 min) before/after: {_fmt(env.loadavg_1m_before, '.2f')}/"
        f"{_fmt(env.loadavg_1m, '.2f')} on {env.cpu_count} CPUs, torch threads "
        f"{env.torch_num_threads}, clock {result.config.clock}, device {env.device}"
        " (wall-clock timings are unreliable when the load exceeds the CPUs)"
    )
    if result.config.quick:
        lines.append("quick mode: reduced sizes and repeats; targets are not meaningful")
    lines.append("")
    lines.extend("TARGET " + t.summary() for t in result.targets)
    return "\n".join(lines)
