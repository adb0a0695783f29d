"""Computing the report's numbers from the typed records of a run directory.

Definitions
    * robust accuracy at eps: share of the samples that the model classifies
      correctly *and* the attack does not fool at eps;
    * success rate: share of the correctly classified samples that are fooled;
    * effective norm: the Lp norm (in the attack's norm) of ``clipped - x``, the
      perturbation the model actually saw; the *ratio* effective / nominal eps is
      summarised over the correctly classified samples (leaving out those where the
      attack returned the input itself, as APGD and foolbox's repeated noise attacks
      do when they fail). Rescaling that ignores clipping (``naive``) gives ratios
      below 1 where CAR gives exactly 1 (fixed-eps noise attacks); PGD may legitimately
      stop inside the ball; minimization attacks report the smallest perturbation they
      found (<= eps).
    * runtime: wall time of the attack calls, split into the rescaling/projection work
      (our attacks), the model's forward passes and the rest (backward passes and the
      attack's own arithmetic); queries: rows of input the model's forward saw during
      them, per sample and eps.
    * certified models: certified robust accuracy, the gap (empirical - certified) and
      the soundness counts, see :mod:`.certified`.
    * worst case per norm: robust accuracy when a sample counts as robust only if no
      method of any attack in that norm fooled it, see :mod:`.worst_case`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..config import AttackConfig, ExperimentConfig
from ..records import ErrorRecord, Manifest, UnitRecord, record_from_json
from .certified import certificate_summary, certified_accuracy
from .collect import CleanSamples, MethodSamples, SampleResult, collect
from .document import (
    AttackSummary,
    CleanSummary,
    FoundNormStats,
    MethodSummary,
    NormMeans,
    RatioStats,
    Report,
    RunStatus,
    SoundnessCounts,
    UnitError,
)
from .headline import headline
from .stats import finite, mean_or_none, quantile, share_or_none
from .worst_case import worst_cases

__all__ = ["SHORT_RATIO", "compute_report", "summarize"]

SHORT_RATIO = 0.999
"""A sample's perturbation counts as 'short' when effective / nominal eps < this."""

Ratios = dict[str, dict[str, list[list[float]]]]
"""Per attack id and method key: the per-sample ratios at each eps (or the norms found)."""


@dataclass(frozen=True, kw_only=True)
class _AtEps:
    """One method's numbers at one eps."""

    samples: int
    robust: float | None
    success_rate: float | None
    ratios: list[float]
    """Sorted effective / nominal eps of the correctly classified, perturbed samples."""
    mean_l1: float | None
    mean_l2: float | None
    mean_linf: float | None
    """Mean effective norms of the correctly classified samples."""


def _at_eps(slot: dict[int, SampleResult], correct: dict[int, bool], norm: str, e: float) -> _AtEps:
    idx = sorted(i for i in slot if i in correct)
    right = [i for i in idx if correct[i]]
    return _AtEps(
        samples=len(idx),
        robust=share_or_none(sum(correct[i] and not slot[i].success for i in idx), len(idx)),
        success_rate=share_or_none(sum(slot[i].success for i in right), len(right)),
        # attacks that fail return the input itself (zero perturbation): left out
        ratios=sorted(v / e for i in right if (v := slot[i].norm(norm)) > 0),
        mean_l1=mean_or_none([slot[i].l1 for i in right]),
        mean_l2=mean_or_none([slot[i].l2 for i in right]),
        mean_linf=mean_or_none([slot[i].linf for i in right]),
    )


def _ratio_stats(cols: list[_AtEps]) -> RatioStats:
    def each(stat: Callable[[list[float]], float]) -> list[float | None]:
        return [finite(stat(c.ratios)) if c.ratios else None for c in cols]

    return RatioStats(
        mean=[mean_or_none(c.ratios) for c in cols],
        min=each(lambda r: r[0]),
        median=each(lambda r: quantile(r, 0.5)),
        max=each(lambda r: r[-1]),
        short_share=each(lambda r: sum(v < SHORT_RATIO for v in r) / len(r)),
    )


def _found_norms(md: MethodSamples, correct: dict[int, bool], norm: str) -> list[float]:
    """Sorted norms of the adversarials found for correctly classified samples."""
    return sorted(v.norm(norm) for i, v in md.found.items() if correct.get(i) and v.success)


def _found_stats(md: MethodSamples, correct: dict[int, bool], norm: str) -> FoundNormStats:
    vals = _found_norms(md, correct, norm)
    base = sum(1 for i in md.found if correct.get(i))
    return FoundNormStats(
        adversarial_share=share_or_none(len(vals), base),
        median=finite(quantile(vals, 0.5)) if vals else None,
        mean=mean_or_none(vals),
        min=finite(vals[0]) if vals else None,
        max=finite(vals[-1]) if vals else None,
    )


def _soundness(
    md: MethodSamples, robust: list[float | None], certified: list[float | None]
) -> SoundnessCounts:
    return SoundnessCounts(
        checked=[len(v) for v in md.violations],
        violations=[sum(v.values()) for v in md.violations],
        found_checked=len(md.found_violations),
        found_violations=sum(md.found_violations.values()),
        gap=[
            finite(r - c) if r is not None and c is not None else None
            for r, c in zip(robust, certified, strict=True)
        ],
    )


def _method_summary(
    md: MethodSamples,
    a: AttackConfig,
    clean: CleanSamples,
    certified: list[float | None] | None,
    incomplete: list[str],
    n: int,
) -> MethodSummary:
    """The numbers of one method; appends its missing (eps, samples) to ``incomplete``."""
    m = md.method
    cols = [_at_eps(md.samples[j], clean.correct, a.norm, e) for j, e in enumerate(a.eps)]
    for c, e in zip(cols, a.eps, strict=True):
        if c.samples < n:
            incomplete.append(f"{m.key} eps={e:g}: {c.samples}/{n} samples")
    robust = [c.robust for c in cols]
    minimization = m.kind == "minimization"
    se = md.sample_eps
    return MethodSummary(
        key=m.key,
        variant=m.variant,
        cls=m.cls,
        library=m.library,
        kind=m.kind,
        samples=[c.samples for c in cols],
        robust_accuracy=robust,
        success_rate=[c.success_rate for c in cols],
        effective_ratio=_ratio_stats(cols),
        found_norm=_found_stats(md, clean.correct, a.norm) if minimization else None,
        mean_effective_norm=NormMeans(
            l1=[c.mean_l1 for c in cols],
            l2=[c.mean_l2 for c in cols],
            linf=[c.mean_linf for c in cols],
        ),
        time_s=finite(md.time_s, 4),
        cpu_s=finite(md.cpu_s, 4),
        ms_per_sample_eps=finite(1e3 * md.time_s / se, 3) if se else None,
        queries_per_sample_eps=finite(md.queries / se, 2) if se else None,
        certificate=None if certified is None else _soundness(md, robust, certified),
        rescaling_s=finite(md.rescaling_s, 4),
        model_s=finite(md.model_s, 4),
        compile_s=round(md.compile_s, 4),
        distribution=(
            [_found_norms(md, clean.correct, a.norm)] if minimization else [c.ratios for c in cols]
        ),
    )


def _run_status(
    manifest: Manifest, done_keys: set[str], incomplete: list[str], errors: list[ErrorRecord]
) -> RunStatus:
    return RunStatus(
        status=manifest.status,
        created=manifest.created,
        units_total=manifest.units_total,
        units_done=len(done_keys),
        wall_time_s=manifest.wall_time_s,
        sessions=[dict(sorted(s.to_json().items())) for s in manifest.sessions],
        incomplete=sorted(set(incomplete)),
        errors=[UnitError(key=e.key, error=e.error) for e in errors if e.key not in done_keys],
    )


def summarize(
    config: ExperimentConfig,
    manifest: Manifest,
    records: list[UnitRecord],
    errors: list[ErrorRecord],
    *,
    config_text: str = "",
) -> Report:
    """The report of a run: its config, manifest, stored results and failed units."""
    clean, methods = collect(config, manifest.methods, records)
    incomplete: list[str] = []
    attacks = []
    for a in config.attacks:
        cert = clean.certificate
        certified = None if cert is None else certified_accuracy(clean, cert, a.norm, a.eps)
        summaries = [
            _method_summary(md, a, clean, certified, incomplete, config.data.n)
            for md in methods.values()
            if md.method.attack == a.id
        ]
        attacks.append(
            AttackSummary(config=a, certified_robust_accuracy=certified, methods=summaries)
        )
    n_correct = sum(clean.correct.values())
    report = Report(
        config=config,
        config_hash=manifest.config_hash,
        config_yaml=config_text,
        clean=CleanSummary(
            accuracy=share_or_none(n_correct, len(clean.correct)),
            correct=n_correct,
            evaluated=len(clean.correct),
        ),
        certificate=certificate_summary(clean, attacks),
        attacks=attacks,
        run=_run_status(manifest, {r.key for r in records}, incomplete, errors),
        environment=manifest.environment,
        worst_case=worst_cases(config, clean, methods),
    )
    return replace(report, headline=headline(report))


def compute_report(
    config: ExperimentConfig,
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
    errors: list[dict[str, Any]] | None = None,
    *,
    config_text: str = "",
) -> tuple[dict[str, Any], Ratios]:
    """``(report, ratios)`` from stored JSON: the report.json dict and, per attack and
    method, the per-sample effective / nominal ratios at each eps (for the plots)."""
    report = summarize(
        config,
        Manifest.from_json(manifest),
        [record_from_json(r) for r in records],
        [ErrorRecord.from_json(e) for e in errors or []],
        config_text=config_text,
    )
    ratios = {a.id: {m.key: m.distribution for m in a.methods} for a in report.attacks}
    return report.to_json(), ratios
