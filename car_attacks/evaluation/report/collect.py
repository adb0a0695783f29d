"""Gathering the stored unit records of a run into per-sample tables, one per method."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ExperimentConfig
from ..records import AttackRecord, Certificate, CleanRecord, MethodRecord, UnitRecord

__all__ = ["CleanSamples", "MethodSamples", "SampleResult", "collect"]


@dataclass(frozen=True, kw_only=True)
class SampleResult:
    """One sample's result: fooled (or adversarial found) and the perturbation's norms."""

    success: bool
    l1: float
    l2: float
    linf: float

    def norm(self, name: str) -> float:
        """The norm named ``l1``, ``l2`` or ``linf``."""
        return {"l1": self.l1, "l2": self.l2, "linf": self.linf}[name]


@dataclass(kw_only=True)
class MethodSamples:
    """Everything stored for one method, by eps index and sample index."""

    method: MethodRecord
    samples: list[dict[int, SampleResult]]
    """Per eps of the attack's grid: sample index -> result."""
    violations: list[dict[int, bool]]
    """Certified models, per eps: sample index -> the result beats the certificate."""
    found: dict[int, SampleResult] = field(default_factory=dict)
    """Minimization attacks: sample index -> the perturbation found (before shrinking)."""
    found_violations: dict[int, bool] = field(default_factory=dict)
    time_s: float = 0.0
    cpu_s: float = 0.0
    queries: float = 0.0
    sample_eps: int = 0
    """(sample, eps) pairs that the time and queries cover."""
    units: int = 0
    rescaling_s: float | None = None
    model_s: float | None = None
    """Sums over the units; ``None`` unless every unit recorded them (older run
    directories and peers do not record ``rescaling_s``)."""
    compile_s: float = 0.0
    """Kernel compilation inside ``time_s`` (units that compiled), summed."""

    def add(self, rec: AttackRecord, eps_grid: tuple[float, ...]) -> None:
        """Take in one unit's results."""
        first = self.units == 0
        self.units += 1
        self.rescaling_s = _sum_if_known(self.rescaling_s, rec.rescaling_s, first)
        self.model_s = _sum_if_known(self.model_s, rec.model_s, first)
        self.compile_s += rec.compile_s or 0.0
        self.time_s += rec.time_s
        self.cpu_s += rec.cpu_s
        self.queries += rec.queries
        self.sample_eps += len(rec.indices) * len(rec.eps)
        f = rec.found
        if f is not None:
            for k, i in enumerate(rec.indices):
                self.found[i] = SampleResult(
                    success=f.adversarial[k], l1=f.l1[k], l2=f.l2[k], linf=f.linf[k]
                )
                if f.violation is not None:
                    self.found_violations[i] = f.violation[k]
        for j, e in enumerate(rec.eps):
            if e not in eps_grid:
                continue
            pos = eps_grid.index(e)
            for k, i in enumerate(rec.indices):
                self.samples[pos][i] = SampleResult(
                    success=rec.success[j][k],
                    l1=rec.l1[j][k],
                    l2=rec.l2[j][k],
                    linf=rec.linf[j][k],
                )
                if rec.violation is not None:
                    self.violations[pos][i] = bool(rec.violation[j][k])


def _sum_if_known(total: float | None, value: float | None, first: bool) -> float | None:
    """``total + value``, or ``value`` for the first unit; ``None`` once a unit lacks it."""
    if value is None or (total is None and not first):
        return None
    return value if total is None else total + value


@dataclass(kw_only=True)
class CleanSamples:
    """The clean units: per sample index correct or not, and certified radii if any."""

    correct: dict[int, bool] = field(default_factory=dict)
    radius: dict[int, float] = field(default_factory=dict)
    certificate: Certificate | None = None
    """The last batch's certificate (Lipschitz bound and input size are the model's)."""

    def add(self, rec: CleanRecord) -> None:
        for i, c in zip(rec.indices, rec.correct, strict=True):
            self.correct[i] = c
        if rec.certificate is not None:
            self.certificate = rec.certificate
            for i, r in zip(rec.indices, rec.certificate.radius, strict=True):
                self.radius[i] = float(r)


def collect(
    config: ExperimentConfig, methods: list[MethodRecord], records: list[UnitRecord]
) -> tuple[CleanSamples, dict[str, MethodSamples]]:
    """The clean results and, per planned method key, its results (others are ignored)."""
    clean = CleanSamples()
    by_key = {
        m.key: MethodSamples(
            method=m,
            samples=[{} for _ in config.attack(m.attack).eps],
            violations=[{} for _ in config.attack(m.attack).eps],
        )
        for m in methods
    }
    for rec in records:
        if isinstance(rec, CleanRecord):
            clean.add(rec)
        elif rec.method in by_key:
            by_key[rec.method].add(rec, config.attack(by_key[rec.method].method.attack).eps)
    return clean, by_key
