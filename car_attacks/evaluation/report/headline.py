"""The report's prose: the headline findings and the notes on how to read the report."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from .certified import lowest_empirical
from .document import AttackSummary, MethodSummary, Report
from .formatting import NORM_NAME, eps_str, fmt, pct
from .worst_case import WorstCase

__all__ = ["HOW_TO_READ", "HOW_TO_READ_CERTIFIED", "headline"]

HOW_TO_READ = (
    "Each attack is run three ways that differ only in how perturbations are rescaled after "
    "clipping to the valid input range: <b>car</b> (exact clipping-aware rescaling), "
    "<b>bisection</b> (the iterative baseline, same target) and <b>naive</b> "
    "(eps / ||delta||, what attack libraries do; clipping then shrinks the perturbation). "
    "Peers (dashed lines) are other libraries' attacks on the same model, data and eps grid; "
    "identical curves overlap (car is the thickest line, drawn below the others). "
    "<b>Robust accuracy</b> is the share of samples that are classified correctly and not "
    "fooled at that eps: lower means a stronger attack. The <b>perturbation size</b> plots show, "
    "for fixed-eps attacks, the norm of the perturbation the model actually saw divided by the "
    "nominal eps (1: the attack used its full budget; below 1: budget lost to clipping, as with "
    "naive rescaling, or a point inside the ball, as when PGD stops at its first adversarial "
    "iterate), and for minimization attacks (Boundary, HopSkipJump) the norm of the smallest "
    "adversarial perturbation found (lower is better). <b>Runtime</b> is the wall time (and "
    "process CPU time, less sensitive to other load on the machine) of the attack calls; "
    "queries count images passed through the model. The runtime table splits the wall time into "
    "the <b>rescaling/projection</b> work (what car, bisection and naive do differently), the "
    "model's forward passes and the rest (backward passes, the attack's own arithmetic)."
)
"""The note at the top of every report (HTML; ``<b>`` marks emphasis)."""

HOW_TO_READ_CERTIFIED = (
    "This model is <b>certified</b>: its Lipschitz bound L turns each sample's logit margin "
    "into a radius r = margin / (sqrt(2) L) within which no L2 perturbation can change its "
    "prediction (r also bounds L1 perturbations, and r / sqrt(n) L∞ ones for n input "
    "components). <b>Certified robust accuracy</b> (black stars) is the share of samples "
    "classified correctly with r >= eps: no attack can push robust accuracy below it. The "
    "shaded <b>gap</b> up to the strongest attack is what attacks leave unexplored. The "
    "<b>certificate violations</b> column counts attack results that change the prediction "
    "from inside the certified ball; it must be 0."
)
"""The second note of a certified model's report."""


def _certificate_lines(report: Report) -> list[str]:
    cert = report.certificate
    if cert is None:
        return []
    lines = [
        f"Certified model: Lipschitz bound {cert.lipschitz:.4g}, median certified L2 radius "
        f"{fmt(cert.radius_median, '.3g')} (margin / (sqrt(2) L))."
    ]
    for a in report.attacks:
        certified = a.certified_robust_accuracy or [None for _ in a.eps]
        parts = [
            f"eps {eps_str(e)}: {pct(certified[j])} / {pct(lowest_empirical(a, j)[0])}"
            for j, e in enumerate(a.eps)
        ]
        lines.append(
            f"{a.id} ({NORM_NAME[a.norm]}): certified / lowest empirical robust accuracy "
            + ", ".join(parts)
            + "."
        )
    if cert.violations:
        lines.append(
            f"SOUNDNESS VIOLATED: {cert.violations} of {cert.results_checked} attack "
            "results change the prediction from inside the certified radius ("
            + ", ".join(cert.violating_methods)
            + "): the certificate or an attack's norm bookkeeping is wrong."
        )
    else:
        lines.append(
            f"Soundness: none of the {cert.results_checked} attack results checked changes "
            "the prediction from inside its sample's certified radius."
        )
    return lines


def _worst_case_line(w: WorstCase) -> str:
    """The headline number of one norm: worst-case robust accuracy at its largest eps."""
    j = len(w.eps) - 1
    return (
        f"Worst case over all {len(w.methods)} {NORM_NAME[w.norm]} methods "
        f"({', '.join(w.attacks)}), eps={eps_str(w.eps[j])}: robust accuracy "
        f"{pct(w.robust_accuracy[j])} (strongest single method {w.strongest_method[j] or 'n/a'}"
        f" {pct(w.strongest_robust_accuracy[j])}); median smallest {NORM_NAME[w.norm]} "
        f"norm that fools a sample {fmt(w.median_smallest_norm, '.3g')}."
    )


def _robust_line(a: AttackSummary) -> str:
    j = len(a.eps) - 1
    parts = [f"{m.label} {pct(m.robust_accuracy[j])}" for m in a.methods]
    return (
        f"{a.id} ({NORM_NAME[a.norm]}, eps={eps_str(a.eps[j])}): robust accuracy "
        + ", ".join(parts)
        + "."
    )


def _found_line(a: AttackSummary) -> str:
    parts = [
        f"{m.label} {fmt(None if m.found_norm is None else m.found_norm.median, '.3g')}"
        for m in a.methods
    ]
    return (
        f"{a.id}: median {NORM_NAME[a.norm]} norm of the adversarial perturbation "
        "found: " + ", ".join(parts) + "."
    )


def _mean_of_present(vals: list[float | None]) -> float | None:
    present = [v for v in vals if v is not None]
    return sum(present) / len(present) if present else None


def _naive_shortfall_line(a: AttackSummary) -> str | None:
    """How much of eps naive rescaling's perturbations keep after clipping, if visibly less."""
    by = {m.variant: m for m in a.methods if not m.peer}
    if "naive" not in by or a.kind != "fixed":
        return None
    naive = _mean_of_present(by["naive"].effective_ratio.mean)
    if naive is None or naive >= 0.995:
        return None
    others = []
    for v in ("car", "bisection"):
        mean = _mean_of_present(by[v].effective_ratio.mean) if v in by else None
        if mean is not None:
            others.append(f"{v} {100 * mean:.1f}%")
    return (
        f"{a.id}: naive rescaling's perturbations reach on average "
        f"{100 * naive:.1f}% of the nominal eps after clipping"
        + (f" ({', '.join(others)})." if others else ".")
    )


def _variant_totals(
    report: Report, seconds: Callable[[MethodSummary], float | None]
) -> dict[str, float]:
    """Per rescaling variant, ``seconds`` summed over its methods; a variant where some
    method has no value (not recorded) is left out."""
    totals: dict[str, float] = defaultdict(float)
    missing: set[str] = set()
    for a in report.attacks:
        for m in a.methods:
            if m.peer:
                continue
            v = seconds(m)
            if v is None:
                missing.add(m.variant)
            else:
                totals[m.variant] += v
    return {k: v for k, v in totals.items() if k not in missing}


def _variants_line(title: str, totals: dict[str, float], digits: int) -> str | None:
    """``title: car X s, bisection Y s, naive Z s (bisection / car = r).``"""
    if not (totals.get("car") and "bisection" in totals):
        return None
    return (
        f"{title}: car {totals['car']:.{digits}f} s, bisection {totals['bisection']:.{digits}f} s"
        + (f", naive {totals['naive']:.{digits}f} s" if "naive" in totals else "")
        + f" (bisection / car = {totals['bisection'] / totals['car']:.2f})."
    )


def _time_lines(report: Report) -> list[str]:
    """Total attack time per variant, and the part of it spent rescaling and projecting
    (the comparison of the methods themselves, without the model's time)."""
    lines = [
        _variants_line("Total attack time", _variant_totals(report, lambda m: m.time_s), 1),
        _variants_line(
            "Rescaling/projection time", _variant_totals(report, lambda m: m.rescaling_s), 3
        ),
    ]
    forward = _variant_totals(report, lambda m: m.model_s)
    if lines[1] is not None and forward:
        lines.append(
            "Model forward time (the rest of the attack time is backward passes and the "
            "attacks' own arithmetic): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in forward.items())
            + "."
        )
    compiling = sum(m.compile_s for a in report.attacks for m in a.methods)
    if compiling > 0:
        lines.append(
            f"Compiling the fused kernels (CAR_ATTACKS_COMPILE) took {compiling:.1f} s, "
            "counted in the total attack time of the units that compiled, not in the "
            "rescaling/projection time."
        )
    return [line for line in lines if line is not None]


def headline(report: Report) -> list[str]:
    """The summary lines at the top of the report."""
    c = report.clean
    lines = [
        f"Clean accuracy of {report.config.model.name} on {c.evaluated} samples of "
        f"{report.config.data.name}: {pct(c.accuracy)} ({c.correct}/{c.evaluated})."
    ]
    lines += [_worst_case_line(w) for w in report.worst_case if w.eps]
    lines += _certificate_lines(report)
    lines += [_robust_line(a) for a in report.attacks]
    lines += [_found_line(a) for a in report.attacks if a.kind == "minimization"]
    lines += [s for a in report.attacks if (s := _naive_shortfall_line(a)) is not None]
    lines += _time_lines(report)
    run = report.run
    if not run.complete:
        lines.append(
            f"INCOMPLETE RUN: {run.units_done} of {run.units_total} units done; "
            "rerun `car-attacks run` with the same config and --out to finish."
        )
    if run.errors:
        lines.append(f"{len(run.errors)} unit(s) failed; see 'Run' below.")
    return lines
