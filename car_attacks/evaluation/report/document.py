"""The typed report document: what ``report.json`` holds, one dataclass per part.

``to_json`` gives the stored structure (format ``car-attacks-report/1``); the renderers
(tables, figures, HTML, Markdown) read the same objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import AttackConfig, ExperimentConfig
from ..records import PEER
from .worst_case import WorstCase

__all__ = [
    "REPORT_FORMAT",
    "AttackSummary",
    "CertificateSummary",
    "CleanSummary",
    "FigureSpec",
    "FoundNormStats",
    "MethodSummary",
    "NormMeans",
    "RatioStats",
    "Report",
    "RunStatus",
    "SoundnessCounts",
    "UnitError",
    "figure_specs",
]

REPORT_FORMAT = "car-attacks-report/1"

PerEps = list[float | None]
"""One value per eps; ``None`` where no sample was evaluated."""


@dataclass(frozen=True, kw_only=True)
class RatioStats:
    """Per eps: effective / nominal eps over the correctly classified samples."""

    mean: PerEps
    min: PerEps
    median: PerEps
    max: PerEps
    short_share: PerEps
    """Share of ratios below :data:`SHORT_RATIO <.summary.SHORT_RATIO>`."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class NormMeans:
    """Per eps: mean effective L1, L2 and L-inf norm over the correctly classified samples."""

    l1: PerEps
    l2: PerEps
    linf: PerEps

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FoundNormStats:
    """Minimization attacks: the norm of the adversarial perturbation found."""

    adversarial_share: float | None
    median: float | None
    mean: float | None
    min: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SoundnessCounts:
    """Certified models: attack results checked against the certificate, and the gap
    (empirical - certified robust accuracy) per eps."""

    checked: list[int]
    violations: list[int]
    found_checked: int
    found_violations: int
    gap: PerEps

    @property
    def total_checked(self) -> int:
        return sum(self.checked) + self.found_checked

    @property
    def total_violations(self) -> int:
        return sum(self.violations) + self.found_violations

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class MethodSummary:
    """The numbers of one method (an attack with a rescaling variant, or a peer)."""

    key: str
    variant: str
    cls: str
    library: str
    kind: str
    samples: list[int]
    robust_accuracy: PerEps
    success_rate: PerEps
    effective_ratio: RatioStats
    found_norm: FoundNormStats | None
    mean_effective_norm: NormMeans
    time_s: float | None
    cpu_s: float | None
    ms_per_sample_eps: float | None
    queries_per_sample_eps: float | None
    certificate: SoundnessCounts | None
    rescaling_s: float | None = None
    """Wall time of the rescaling and projection work inside ``time_s`` (our attacks, runs
    that recorded it)."""
    model_s: float | None = None
    """Wall time of the model's forward passes inside ``time_s`` (runs that recorded it)."""
    compile_s: float = 0.0
    """Wall time compiling the fused kernels inside ``time_s`` (not in ``rescaling_s``)."""
    distribution: list[list[float]] = field(default_factory=list, compare=False)
    """For the plots, not stored: per eps the sorted ratios (fixed-eps attacks), or one
    list of the norms found (minimization attacks)."""

    @property
    def peer(self) -> bool:
        return self.variant == PEER

    @property
    def label(self) -> str:
        return self.key if self.peer else self.variant

    @property
    def other_s(self) -> float | None:
        """``time_s - rescaling_s - model_s - compile_s``: backward passes and the attack's
        own work."""
        if self.time_s is None or self.rescaling_s is None or self.model_s is None:
            return None
        return round(max(self.time_s - self.rescaling_s - self.model_s - self.compile_s, 0.0), 4)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "variant": self.variant,
            "peer": self.peer,
            "class": self.cls,
            "library": self.library,
            "kind": self.kind,
            "samples": self.samples,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "effective_ratio": self.effective_ratio.to_json(),
            "found_norm": None if self.found_norm is None else self.found_norm.to_json(),
            "mean_effective_norm": self.mean_effective_norm.to_json(),
            "time_s": self.time_s,
            "cpu_s": self.cpu_s,
            "ms_per_sample_eps": self.ms_per_sample_eps,
            "queries_per_sample_eps": self.queries_per_sample_eps,
            "certificate": None if self.certificate is None else self.certificate.to_json(),
            "rescaling_s": self.rescaling_s,
            "model_forward_s": self.model_s,
            "compile_s": self.compile_s,
            "other_s": self.other_s,
        }


@dataclass(frozen=True, kw_only=True)
class AttackSummary:
    """One configured attack and the methods evaluated with it."""

    config: AttackConfig
    certified_robust_accuracy: PerEps | None
    methods: list[MethodSummary]

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def norm(self) -> str:
        return self.config.norm

    @property
    def eps(self) -> tuple[float, ...]:
        return self.config.eps

    @property
    def kind(self) -> str | None:
        """``fixed`` or ``minimization``; ``None`` when no method was planned."""
        return self.methods[0].kind if self.methods else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "class": self.config.cls,
            "norm": self.norm,
            "eps": list(self.eps),
            "params": self.config.params,
            "kind": self.kind,
            "certified_robust_accuracy": self.certified_robust_accuracy,
            "methods": [m.to_json() for m in self.methods],
        }


@dataclass(frozen=True, kw_only=True)
class CleanSummary:
    accuracy: float | None
    correct: int
    evaluated: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class CertificateSummary:
    """Certified models: the Lipschitz bound, radius statistics and soundness totals."""

    norm: str
    """The norm of the certified radius (``l2``)."""
    lipschitz: float
    input_size: int
    samples: int
    radius_median: float | None
    radius_max: float | None
    results_checked: int
    violations: int
    violating_methods: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class UnitError:
    """A unit that failed and has no result."""

    key: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class RunStatus:
    """How far the run got, from the manifest and the stored results."""

    status: str
    created: str
    units_total: int
    units_done: int
    wall_time_s: float | None
    sessions: list[dict[str, Any]]
    """As stored in ``manifest.json`` (sorted keys)."""
    incomplete: list[str]
    errors: list[UnitError]

    @property
    def complete(self) -> bool:
        return self.units_total > 0 and self.units_done >= self.units_total

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "created": self.created,
            "units_total": self.units_total,
            "units_done": self.units_done,
            "complete": self.complete,
            "wall_time_s": self.wall_time_s,
            "sessions": self.sessions,
            "incomplete": self.incomplete,
            "errors": [e.to_json() for e in self.errors],
        }


@dataclass(frozen=True, kw_only=True)
class FigureSpec:
    """One figure of the report: its id, caption and file inside the run directory."""

    id: str
    title: str
    file: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def figure_specs(config: ExperimentConfig) -> list[FigureSpec]:
    """Per attack a robust-accuracy curve and a perturbation-size plot; one runtime chart."""
    figs = []
    for a in config.attacks:
        figs.append(
            FigureSpec(
                id=f"robust-{a.id}",
                title=f"Robust accuracy vs eps: {a.id}",
                file=f"figures/robust-{a.id}.png",
            )
        )
        figs.append(
            FigureSpec(
                id=f"norms-{a.id}",
                title=f"Perturbation size (effective norm / eps, or norm found): {a.id}",
                file=f"figures/norms-{a.id}.png",
            )
        )
    figs.append(
        FigureSpec(id="runtime", title="Runtime per attack and variant", file="figures/runtime.png")
    )
    return figs


@dataclass(frozen=True, kw_only=True)
class Report:
    """The whole report of a run directory."""

    config: ExperimentConfig
    config_hash: str | None
    config_yaml: str
    clean: CleanSummary
    certificate: CertificateSummary | None
    attacks: list[AttackSummary]
    run: RunStatus
    environment: dict[str, Any]
    headline: list[str] = field(default_factory=list)
    worst_case: list[WorstCase] = field(default_factory=list)
    """Per norm, the worst case over all attacks of that norm (:mod:`.worst_case`)."""

    @property
    def title(self) -> str:
        return f"car-attacks robustness report: {self.config.name}"

    @property
    def figures(self) -> list[FigureSpec]:
        return figure_specs(self.config)

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "format": REPORT_FORMAT,
            "title": self.title,
            "config_name": c.name,
            "config_hash": self.config_hash,
            "model": {"name": c.model.name, "weights": c.model.weights},
            "data": {
                "name": c.data.name,
                "split": c.data.split,
                "n": c.data.n,
                "start": c.data.start,
                "batch_size": c.data.batch_size,
            },
            "seed": c.seed,
            "device": c.device,
            "rescalings": list(c.rescalings),
            "clean": self.clean.to_json(),
            "certificate": None if self.certificate is None else self.certificate.to_json(),
            "attacks": [a.to_json() for a in self.attacks],
            "run": self.run.to_json(),
            "environment": self.environment,
            "config": c.to_dict(),
            "config_yaml": self.config_yaml,
            "figures": [f.to_json() for f in self.figures],
            "headline": self.headline,
            "worst_case": [w.to_json() for w in self.worst_case],
        }
