"""The report's tables, as plain text cells shared by the HTML and Markdown renderers."""

from __future__ import annotations

from dataclasses import dataclass

from .certified import lowest_empirical
from .document import AttackSummary, Report
from .formatting import NORM_NAME, eps_str, fmt, pct
from .summary import SHORT_RATIO
from .worst_case import WorstCase

__all__ = ["Table", "report_tables"]


@dataclass(frozen=True, kw_only=True)
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


def _clean_table(report: Report) -> Table:
    c = report.clean
    return Table(
        caption="Clean accuracy",
        header=["model", "data set", "samples", "correct", "clean accuracy"],
        rows=[
            [
                report.config.model.name,
                report.config.data.name,
                str(c.evaluated),
                str(c.correct),
                pct(c.accuracy),
            ]
        ],
    )


def _robust_table(a: AttackSummary, certified: bool) -> Table:
    """Robust accuracy per method and eps; certified models add the violation counts."""
    header = ["method", "class"] + [eps_str(e) for e in a.eps]
    rows = [[m.label, m.cls] + [pct(v) for v in m.robust_accuracy] for m in a.methods]
    if certified:
        header.append("certificate violations")
        for row, m in zip(rows, a.methods, strict=True):
            c = m.certificate
            row.append("n/a" if c is None else f"{c.total_violations} / {c.total_checked}")
    return Table(
        caption=f"Robust accuracy, {a.id} (eps in {NORM_NAME[a.norm]})", header=header, rows=rows
    )


def _certified_table(a: AttackSummary) -> Table:
    rows = []
    certified = a.certified_robust_accuracy or [None for _ in a.eps]
    for j, e in enumerate(a.eps):
        cert = certified[j]
        low, by = lowest_empirical(a, j)
        gap = None if cert is None or low is None else 100 * (low - cert)
        rows.append([eps_str(e), pct(cert), pct(low), by or "n/a", fmt(gap, "+.1f")])
    return Table(
        caption=f"Certified vs empirical robust accuracy, {a.id} (eps in {NORM_NAME[a.norm]}; "
        "gap = lowest empirical - certified, in percentage points)",
        header=["eps", "certified", "lowest empirical", "lowest by", "gap"],
        rows=rows,
    )


def _found_table(a: AttackSummary) -> Table:
    rows = []
    for m in a.methods:
        f = m.found_norm
        stats = [None] * 4 if f is None else [f.median, f.mean, f.min, f.max]
        rows.append(
            [m.label, pct(None if f is None else f.adversarial_share)]
            + [fmt(v, ".4g") for v in stats]
        )
    return Table(
        caption=f"{NORM_NAME[a.norm]} norm of the adversarial perturbation found, {a.id} "
        "(correctly classified samples where the attack found one)",
        header=["method", "adversarial found", "median", "mean", "min", "max"],
        rows=rows,
    )


def _ratio_table(a: AttackSummary) -> Table:
    rows = []
    for m in a.methods:
        r = m.effective_ratio
        rows.append(
            [m.label]
            + [
                f"{fmt(r.mean[j], '.4f')} / {fmt(r.min[j], '.4f')} / {pct(r.short_share[j])}"
                for j in range(len(a.eps))
            ]
        )
    return Table(
        caption=f"Effective {NORM_NAME[a.norm]} norm / eps, {a.id} (correctly classified samples; "
        f"'short' = ratio < {SHORT_RATIO})",
        header=["method"] + [f"eps {e:.3g}: mean / min / short" for e in a.eps],
        rows=rows,
    )


def _method_name(key: str | None) -> str:
    """``attack (variant)`` for our methods' keys ``attack/variant``; a peer's id as is."""
    if key is None:
        return "n/a"
    attack, _, variant = key.partition("/")
    return f"{attack} ({variant})" if variant else key


def _worst_case_table(w: WorstCase) -> Table:
    rows = [
        [eps_str(e), pct(w.robust_accuracy[j]), _method_name(w.strongest_method[j])]
        + [pct(w.strongest_robust_accuracy[j])]
        for j, e in enumerate(w.eps)
    ]
    return Table(
        caption=f"Worst case over all {NORM_NAME[w.norm]} attacks ({', '.join(w.attacks)}; "
        f"{len(w.methods)} methods): a sample is robust only if no method fooled it within eps; "
        f"median smallest norm {fmt(w.median_smallest_norm, '.4g')}, "
        f"fooled {pct(w.fooled_share)} of the correctly classified samples",
        header=["eps", "worst-case robust accuracy", "strongest single method", "its robust acc."],
        rows=rows,
    )


def _runtime_table(report: Report) -> Table:
    rows = []
    for a in report.attacks:
        car = next((m for m in a.methods if m.variant == "car"), None)
        for m in a.methods:
            rel = (
                f"{m.time_s / car.time_s:.2f}"
                if car and car.time_s and m.time_s is not None
                else "n/a"
            )
            rows.append(
                [
                    a.id,
                    m.label,
                    fmt(m.time_s, ".2f"),
                    fmt(m.rescaling_s, ".3f"),
                    fmt(m.model_s, ".2f"),
                    fmt(m.other_s, ".2f"),
                    fmt(m.cpu_s, ".2f"),
                    fmt(m.ms_per_sample_eps, ".1f"),
                    fmt(m.queries_per_sample_eps, ".1f"),
                    rel,
                ]
            )
    return Table(
        caption="Runtime per attack and variant (wall s = rescaling/projection + model forward "
        "+ other: backward passes and the attack's own arithmetic; n/a: not recorded, as for "
        "peers' rescaling and older runs)",
        header=[
            "attack",
            "method",
            "wall s",
            "rescaling s",
            "model forward s",
            "other s",
            "CPU s",
            "ms / sample / eps",
            "queries / sample / eps",
            "time / car",
        ],
        rows=rows,
    )


def _environment_table(report: Report) -> Table:
    env = report.environment
    dev = env.get("device", {})
    rows = [
        ["python", f"{env.get('python')} ({env.get('implementation')})"],
        ["platform", str(env.get("platform"))],
        ["cpu count", str(env.get("cpu_count"))],
        [
            "device",
            f"{dev.get('requested')} ({dev.get('name')}, torch threads {dev.get('torch_threads')})",
        ],
    ] + [[name, str(ver)] for name, ver in env.get("packages", {}).items()]
    run = report.run
    rows += [
        ["run status", f"{run.status} ({run.units_done}/{run.units_total} units)"],
        [
            "run wall time",
            f"{fmt(run.wall_time_s, '.1f')} s over {len(run.sessions)} session(s)",
        ],
        ["config hash", str(report.config_hash)[:16]],
    ]
    return Table(caption="Environment", header=["item", "value"], rows=rows)


def report_tables(report: Report) -> dict[str, Table]:
    """Every table of the report by name: ``clean``, per norm ``worst-case-NORM``, per
    attack ``robust-ID``, ``certified-ID`` (certified models) and ``norms-ID``, ``runtime``,
    ``environment``."""
    t = {"clean": _clean_table(report)}
    for w in report.worst_case:
        t[f"worst-case-{w.norm}"] = _worst_case_table(w)
    certified = report.certificate is not None
    for a in report.attacks:
        if certified:
            t[f"certified-{a.id}"] = _certified_table(a)
        t[f"robust-{a.id}"] = _robust_table(a, certified)
        t[f"norms-{a.id}"] = _found_table(a) if a.kind == "minimization" else _ratio_table(a)
    t["runtime"] = _runtime_table(report)
    t["environment"] = _environment_table(report)
    return t
