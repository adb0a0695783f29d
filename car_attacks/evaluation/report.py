"""The robustness report of a run directory: report.json, report.md, report.html.

Everything is computed from the stored files (manifest, config, results), so
``car-attacks report DIR`` rebuilds the same report.json at any time, also for
a run that is still incomplete (missing points are ``null`` and flagged).

Definitions
    * robust accuracy at eps: share of the samples that the model classifies
      correctly *and* the attack does not fool at eps;
    * success rate: share of the correctly classified samples that are fooled;
    * effective norm: the Lp norm (in the attack's norm) of ``clipped - x``, the
      perturbation the model actually saw; the *ratio* effective / nominal eps is
      summarised over the correctly classified samples (leaving out those where the
      attack returned the input itself, as APGD and foolbox's repeated noise attacks
      do when they fail). Rescaling that ignores
      clipping (``naive``) gives ratios below 1 where CAR gives exactly 1
      (fixed-eps noise attacks); PGD may legitimately stop inside the ball;
      minimization attacks report the smallest perturbation they found (<= eps).
    * runtime: wall time of the attack calls; queries: rows of input the model's
      forward saw during them, per sample and eps.
    * certified models (``ModelSpec.certified``, e.g. BCOP networks): certified robust
      accuracy at eps is the share of samples classified correctly whose certified
      radius is ``>= eps`` -- a lower bound on the robust accuracy under *any* attack.
      The L2 radius ``r = margin / (sqrt(2) L)`` certifies the L1 ball of radius ``r``
      (``||d||_2 <= ||d||_1``) and the L-inf ball of radius ``r / sqrt(n)`` for ``n``
      input components. The *gap* is empirical minus certified robust accuracy; the
      *soundness column* counts attack results that change the prediction from inside
      the certified L2 ball (:func:`car_attacks.soundness.check_soundness`): any count
      above zero means the certificate or the attack's norm bookkeeping is wrong.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ExperimentConfig, parse_config
from .storage import RunStore, atomic_write_bytes, atomic_write_text, unit_key

__all__ = ["REPORT_FORMAT", "build_report", "compute_report", "expected_figures"]

REPORT_FORMAT = "car-attacks-report/1"
SHORT_RATIO = 0.999
"""A sample's perturbation counts as 'short' when effective / nominal eps < this."""

# drawn thick-to-thin so that identical curves stay visible on top of each other
_VARIANT_STYLE: dict[str, dict[str, Any]] = {
    "car": {"color": "#1f77b4", "marker": "o", "linewidth": 4.0, "markersize": 10, "zorder": 2},
    "bisection": {
        "color": "#ff7f0e",
        "marker": "s",
        "linewidth": 2.2,
        "markersize": 6,
        "zorder": 3,
    },
    "naive": {"color": "#d62728", "marker": "^", "linewidth": 1.2, "markersize": 5, "zorder": 4},
}
_PEER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
_P_NAME = {"l1": "L1", "l2": "L2", "linf": "L∞"}


# --------------------------------------------------------------------------- numbers


@dataclass
class _MethodData:
    key: str
    attack: str
    variant: str
    cls: str
    kind: str
    library: str
    # per eps index: sample index -> (success, l1, l2, linf)
    samples: list[dict[int, tuple[bool, float, float, float]]] = field(default_factory=list)
    time_s: float = 0.0
    cpu_s: float = 0.0
    queries: float = 0.0
    sample_eps: int = 0  # (sample, eps) pairs the time and queries cover
    units: int = 0
    # minimization attacks: sample index -> (adversarial, l1, l2, linf) of what was found
    found: dict[int, tuple[bool, float, float, float]] = field(default_factory=dict)
    # certified models, per eps index: sample index -> result beats the certificate
    violations: list[dict[int, bool]] = field(default_factory=list)
    found_violations: dict[int, bool] = field(default_factory=dict)


def _finite(v: float | None, digits: int = 6) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), digits)


def _quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def certified_lp_radius(radius: float, norm: str, input_size: int) -> float:
    """The Lp radius certified by an L2 radius: ``r`` for L1 and L2, ``r / sqrt(n)`` for
    L-inf (``||d||_2 <= ||d||_1`` and ``||d||_2 <= sqrt(n) ||d||_inf``)."""
    return radius / math.sqrt(input_size) if norm == "linf" else radius


def _load(run_dir: Path) -> tuple[ExperimentConfig, dict[str, Any], str, RunStore]:
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    config = parse_config(yaml.safe_load(config_text), default_name=manifest["config_name"])
    source = run_dir / "config.source.yaml"
    shown = source.read_text(encoding="utf-8") if source.is_file() else config_text
    return config, manifest, shown, store


def compute_report(
    config: ExperimentConfig,
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
    errors: list[dict[str, Any]] | None = None,
    *,
    config_text: str = "",
) -> tuple[dict[str, Any], dict[str, dict[str, list[list[float]]]]]:
    """``(report, ratios)``: the JSON report and, per attack and method, the per-sample
    effective / nominal ratios at each eps (for the distribution plots)."""
    n = config.data.n
    clean: dict[int, bool] = {}
    labels: dict[int, int] = {}
    methods: dict[str, _MethodData] = {}
    for m in manifest.get("methods", []):
        methods[m["key"]] = _MethodData(
            m["key"], m["attack"], m["variant"], m["cls"], m["kind"], m.get("library", "")
        )
        methods[m["key"]].samples = [{} for _ in config.attack(m["attack"]).eps]
        methods[m["key"]].violations = [{} for _ in config.attack(m["attack"]).eps]
    radius: dict[int, float] = {}
    certificate: dict[str, Any] | None = None
    done_keys = set()
    for rec in records:
        done_keys.add(unit_key(rec["method"], rec["batch"], rec["eps"]))
        if rec["method"] == "clean":
            for i, c, lab in zip(rec["indices"], rec["correct"], rec["labels"], strict=True):
                clean[int(i)] = bool(c)
                labels[int(i)] = int(lab)
            if "radius" in rec:
                certificate = {
                    "norm": "l2",
                    "lipschitz": float(rec["lipschitz"]),
                    "input_size": int(rec["input_size"]),
                }
                for i, r in zip(rec["indices"], rec["radius"], strict=True):
                    radius[int(i)] = float(r)
            continue
        md = methods.get(rec["method"])
        if md is None:
            continue
        eps_grid = list(config.attack(md.attack).eps)
        md.time_s += float(rec.get("time_s", 0.0))
        md.cpu_s += float(rec.get("cpu_s", 0.0))
        md.queries += float(rec.get("queries", 0.0))
        md.sample_eps += len(rec["indices"]) * len(rec["eps"])
        md.units += 1
        f = rec.get("found")
        if isinstance(f, dict):
            for k, i in enumerate(rec["indices"]):
                md.found[int(i)] = (
                    bool(f["adversarial"][k]),
                    float(f["l1"][k]),
                    float(f["l2"][k]),
                    float(f["linf"][k]),
                )
                if "violation" in f:
                    md.found_violations[int(i)] = bool(f["violation"][k])
        for j, e in enumerate(rec["eps"]):
            if e not in eps_grid:
                continue
            slot = md.samples[eps_grid.index(e)]
            for k, i in enumerate(rec["indices"]):
                slot[int(i)] = (
                    bool(rec["success"][j][k]),
                    float(rec["l1"][j][k]),
                    float(rec["l2"][j][k]),
                    float(rec["linf"][j][k]),
                )
                if "violation" in rec:
                    md.violations[eps_grid.index(e)][int(i)] = bool(rec["violation"][j][k])

    n_clean = len(clean)
    n_correct = sum(clean.values())
    attacks_out: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, list[list[float]]]] = {}
    incomplete: list[str] = []
    for a in config.attacks:
        norm_pos = {"l1": 1, "l2": 2, "linf": 3}[a.norm]
        entries = []
        ratios[a.id] = {}
        certified = (
            _certified_accuracy(clean, radius, a.norm, a.eps, certificate["input_size"])
            if certificate is not None
            else None
        )
        for md in (m for m in methods.values() if m.attack == a.id):
            robust, success_rate, counts = [], [], []
            ratio_stats: dict[str, list[float | None]] = {
                k: [] for k in ("mean", "min", "median", "max", "short_share")
            }
            mean_norms: dict[str, list[float | None]] = {"l1": [], "l2": [], "linf": []}
            per_eps_ratios: list[list[float]] = []
            for j, e in enumerate(a.eps):
                slot = md.samples[j]
                idx = sorted(i for i in slot if i in clean)
                counts.append(len(idx))
                if len(idx) < n:
                    incomplete.append(f"{md.key} eps={e:g}: {len(idx)}/{n} samples")
                if idx:
                    robust.append(_finite(sum(clean[i] and not slot[i][0] for i in idx) / len(idx)))
                else:
                    robust.append(None)
                correct = [i for i in idx if clean[i]]
                success_rate.append(
                    _finite(sum(slot[i][0] for i in correct) / len(correct)) if correct else None
                )
                # attacks that fail return the input itself (zero perturbation): left out
                r = sorted(slot[i][norm_pos] / e for i in correct if slot[i][norm_pos] > 0)
                per_eps_ratios.append(r)
                ratio_stats["mean"].append(_finite(sum(r) / len(r)) if r else None)
                ratio_stats["min"].append(_finite(r[0]) if r else None)
                ratio_stats["median"].append(_finite(_quantile(r, 0.5)) if r else None)
                ratio_stats["max"].append(_finite(r[-1]) if r else None)
                ratio_stats["short_share"].append(
                    _finite(sum(v < SHORT_RATIO for v in r) / len(r)) if r else None
                )
                for name, pos in (("l1", 1), ("l2", 2), ("linf", 3)):
                    vals = [slot[i][pos] for i in correct]
                    mean_norms[name].append(_finite(sum(vals) / len(vals)) if vals else None)
            ratios[a.id][md.key] = per_eps_ratios
            found_vals = sorted(v[norm_pos] for i, v in md.found.items() if clean.get(i) and v[0])
            n_found_base = sum(1 for i in md.found if clean.get(i))
            found_stats = (
                {
                    "adversarial_share": _finite(len(found_vals) / n_found_base)
                    if n_found_base
                    else None,
                    "median": _finite(_quantile(found_vals, 0.5)) if found_vals else None,
                    "mean": _finite(sum(found_vals) / len(found_vals)) if found_vals else None,
                    "min": _finite(found_vals[0]) if found_vals else None,
                    "max": _finite(found_vals[-1]) if found_vals else None,
                }
                if md.kind == "minimization"
                else None
            )
            if md.kind == "minimization":
                ratios[a.id][md.key] = [found_vals]
            se = md.sample_eps
            soundness = (
                {
                    "checked": [len(v) for v in md.violations],
                    "violations": [sum(v.values()) for v in md.violations],
                    "found_checked": len(md.found_violations),
                    "found_violations": sum(md.found_violations.values()),
                    "gap": [
                        _finite(r - c) if r is not None and c is not None else None
                        for r, c in zip(robust, certified, strict=True)
                    ],
                }
                if certified is not None
                else None
            )
            entries.append(
                {
                    "key": md.key,
                    "label": md.variant if md.variant != "peer" else md.key,
                    "variant": md.variant,
                    "peer": md.variant == "peer",
                    "class": md.cls,
                    "library": md.library,
                    "kind": md.kind,
                    "samples": counts,
                    "robust_accuracy": robust,
                    "success_rate": success_rate,
                    "effective_ratio": ratio_stats,
                    "found_norm": found_stats,
                    "mean_effective_norm": mean_norms,
                    "time_s": _finite(md.time_s, 4),
                    "cpu_s": _finite(md.cpu_s, 4),
                    "ms_per_sample_eps": _finite(1e3 * md.time_s / se, 3) if se else None,
                    "queries_per_sample_eps": _finite(md.queries / se, 2) if se else None,
                    "certificate": soundness,
                }
            )
        attacks_out.append(
            {
                "id": a.id,
                "class": a.cls,
                "norm": a.norm,
                "eps": list(a.eps),
                "params": a.params,
                "kind": next((m["kind"] for m in entries), None),
                "certified_robust_accuracy": certified,
                "methods": entries,
            }
        )

    units_total = int(manifest.get("units_total", 0))
    open_errors = [e for e in (errors or []) if e.get("key") not in done_keys]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": f"car-attacks robustness report: {config.name}",
        "config_name": config.name,
        "config_hash": manifest.get("config_hash"),
        "model": {"name": config.model.name, "weights": config.model.weights},
        "data": {
            "name": config.data.name,
            "split": config.data.split,
            "n": n,
            "start": config.data.start,
            "batch_size": config.data.batch_size,
        },
        "seed": config.seed,
        "device": config.device,
        "rescalings": list(config.rescalings),
        "clean": {
            "accuracy": _finite(n_correct / n_clean) if n_clean else None,
            "correct": n_correct,
            "evaluated": n_clean,
        },
        "certificate": _certificate_summary(certificate, radius, attacks_out),
        "attacks": attacks_out,
        "run": {
            "status": manifest.get("status"),
            "created": manifest.get("created"),
            "units_total": units_total,
            "units_done": len(done_keys),
            "complete": units_total > 0 and len(done_keys) >= units_total,
            "wall_time_s": manifest.get("wall_time_s"),
            "sessions": manifest.get("sessions", []),
            "incomplete": sorted(set(incomplete)),
            "errors": [{"key": e.get("key"), "error": e.get("error")} for e in open_errors],
        },
        "environment": manifest.get("environment", {}),
        "config": config.to_dict(),
        "config_yaml": config_text,
        "figures": expected_figures(config),
    }
    report["headline"] = _headline(report)
    return report, ratios


def _certified_accuracy(
    clean: dict[int, bool],
    radius: dict[int, float],
    norm: str,
    eps: tuple[float, ...],
    input_size: int,
) -> list[float | None]:
    """Per eps: share of the evaluated samples that are correct with radius >= eps."""
    idx = [i for i in clean if i in radius]
    if not idx:
        return [None for _ in eps]
    return [
        _finite(
            sum(clean[i] and certified_lp_radius(radius[i], norm, input_size) >= e for i in idx)
            / len(idx)
        )
        for e in eps
    ]


def _certificate_summary(
    certificate: dict[str, Any] | None, radius: dict[int, float], attacks: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Lipschitz bound, radius statistics and the soundness totals over every attack."""
    if certificate is None:
        return None
    vals = sorted(radius.values())
    checked = violations = 0
    offenders = []
    for a in attacks:
        for m in a["methods"]:
            c = m["certificate"]
            n_bad = sum(c["violations"]) + c["found_violations"]
            checked += sum(c["checked"]) + c["found_checked"]
            violations += n_bad
            if n_bad:
                offenders.append(f"{a['id']}:{m['key']}")
    return dict(
        certificate,
        samples=len(vals),
        radius_median=_finite(_quantile(vals, 0.5)) if vals else None,
        radius_max=_finite(vals[-1]) if vals else None,
        results_checked=checked,
        violations=violations,
        violating_methods=offenders,
    )


def expected_figures(config: ExperimentConfig) -> list[dict[str, str]]:
    """The figures of a report: per attack a robust-accuracy curve and an effective-norm
    distribution, and one runtime chart."""
    figs = []
    for a in config.attacks:
        figs.append(
            {
                "id": f"robust-{a.id}",
                "title": f"Robust accuracy vs eps: {a.id}",
                "file": f"figures/robust-{a.id}.png",
            }
        )
        figs.append(
            {
                "id": f"norms-{a.id}",
                "title": f"Perturbation size (effective norm / eps, or norm found): {a.id}",
                "file": f"figures/norms-{a.id}.png",
            }
        )
    figs.append(
        {"id": "runtime", "title": "Runtime per attack and variant", "file": "figures/runtime.png"}
    )
    return figs


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _eps_str(e: float) -> str:
    """``0.03137 (8/255)`` for multiples of 1/255 below 1, else ``0.03137``."""
    num = e * 255
    if e < 1 and round(num) >= 1 and abs(num - round(num)) < 1e-6:
        return f"{e:.4g} ({round(num)}/255)"
    return f"{e:.4g}"


def _lowest_empirical(a: dict[str, Any], j: int) -> tuple[float | None, str]:
    """The lowest robust accuracy any method of attack ``a`` reached at eps index ``j``."""
    vals = [(m["robust_accuracy"][j], m["key"]) for m in a["methods"]]
    present = [(v, k) for v, k in vals if v is not None]
    return min(present, key=lambda t: t[0]) if present else (None, "")


def _certificate_headline(report: dict[str, Any]) -> list[str]:
    cert = report.get("certificate")
    if not cert:
        return []
    lines = [
        f"Certified model: Lipschitz bound {cert['lipschitz']:.4g}, median certified L2 radius "
        f"{_fmt(cert['radius_median'], '.3g')} (margin / (sqrt(2) L))."
    ]
    for a in report["attacks"]:
        parts = []
        for j, e in enumerate(a["eps"]):
            low, _ = _lowest_empirical(a, j)
            parts.append(
                f"eps {_eps_str(e)}: {_pct(a['certified_robust_accuracy'][j])} / {_pct(low)}"
            )
        lines.append(
            f"{a['id']} ({_P_NAME[a['norm']]}): certified / lowest empirical robust accuracy "
            + ", ".join(parts)
            + "."
        )
    if cert["violations"]:
        lines.append(
            f"SOUNDNESS VIOLATED: {cert['violations']} of {cert['results_checked']} attack "
            "results change the prediction from inside the certified radius ("
            + ", ".join(cert["violating_methods"])
            + "): the certificate or an attack's norm bookkeeping is wrong."
        )
    else:
        lines.append(
            f"Soundness: none of the {cert['results_checked']} attack results checked changes "
            "the prediction from inside its sample's certified radius."
        )
    return lines


def _headline(report: dict[str, Any]) -> list[str]:
    lines = []
    c = report["clean"]
    lines.append(
        f"Clean accuracy of {report['model']['name']} on {c['evaluated']} samples of "
        f"{report['data']['name']}: {_pct(c['accuracy'])} ({c['correct']}/{c['evaluated']})."
    )
    lines += _certificate_headline(report)
    for a in report["attacks"]:
        j = len(a["eps"]) - 1
        parts = [f"{m['label']} {_pct(m['robust_accuracy'][j])}" for m in a["methods"]]
        lines.append(
            f"{a['id']} ({_P_NAME[a['norm']]}, eps={_eps_str(a['eps'][j])}): robust accuracy "
            + ", ".join(parts)
            + "."
        )
    for a in report["attacks"]:
        if a["kind"] == "minimization":
            parts = [
                f"{m['label']} {_fmt((m['found_norm'] or {}).get('median'), '.3g')}"
                for m in a["methods"]
            ]
            lines.append(
                f"{a['id']}: median {_P_NAME[a['norm']]} norm of the adversarial perturbation "
                "found: " + ", ".join(parts) + "."
            )
    for a in report["attacks"]:
        by = {m["variant"]: m for m in a["methods"] if not m["peer"]}
        if "naive" not in by or a["kind"] != "fixed":
            continue
        means = [v for v in by["naive"]["effective_ratio"]["mean"] if v is not None]
        if not means:
            continue
        naive = sum(means) / len(means)
        others = []
        for v in ("car", "bisection"):
            if v in by:
                vals = [x for x in by[v]["effective_ratio"]["mean"] if x is not None]
                if vals:
                    others.append(f"{v} {100 * sum(vals) / len(vals):.1f}%")
        if naive < 0.995:
            lines.append(
                f"{a['id']}: naive rescaling's perturbations reach on average "
                f"{100 * naive:.1f}% of the nominal eps after clipping"
                + (f" ({', '.join(others)})." if others else ".")
            )
    totals: dict[str, float] = defaultdict(float)
    for a in report["attacks"]:
        for m in a["methods"]:
            if not m["peer"] and m["time_s"] is not None:
                totals[m["variant"]] += m["time_s"]
    if totals.get("car") and totals.get("bisection"):
        lines.append(
            f"Total attack time: car {totals['car']:.1f} s, bisection {totals['bisection']:.1f} s"
            + (f", naive {totals['naive']:.1f} s" if "naive" in totals else "")
            + f" (bisection / car = {totals['bisection'] / totals['car']:.2f})."
        )
    run = report["run"]
    if not run["complete"]:
        lines.append(
            f"INCOMPLETE RUN: {run['units_done']} of {run['units_total']} units done; "
            "rerun `car-attacks run` with the same config and --out to finish."
        )
    if run["errors"]:
        lines.append(f"{len(run['errors'])} unit(s) failed; see 'Run' below.")
    return lines


# --------------------------------------------------------------------------- figures


def _method_style(m: dict[str, Any], peer_index: int) -> dict[str, Any]:
    if not m["peer"]:
        return dict(_VARIANT_STYLE.get(m["variant"], {}), linestyle="-")
    return {
        "color": _PEER_COLORS[peer_index % len(_PEER_COLORS)],
        "marker": "D",
        "linestyle": "--",
        "linewidth": 1.4,
        "markersize": 5,
        "zorder": 5,  # dashed, on top: the variants stay visible through the gaps
    }


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _robust_figure(a: dict[str, Any], clean_acc: float | None) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    eps = a["eps"]
    peer_i = 0
    for m in a["methods"]:
        style = _method_style(m, peer_i)
        peer_i += int(m["peer"])
        ys = [math.nan if v is None else 100 * v for v in m["robust_accuracy"]]
        ax.plot(eps, ys, label=m["label"], **style)
    certified = a.get("certified_robust_accuracy")
    if certified is not None:
        cs = [math.nan if v is None else 100 * v for v in certified]
        lows = [_lowest_empirical(a, j)[0] for j in range(len(eps))]
        ls = [math.nan if v is None else 100 * v for v in lows]
        ax.plot(
            eps,
            cs,
            color="black",
            marker="*",
            linewidth=2,
            markersize=9,
            zorder=6,
            label="certified (lower bound)",
        )
        ax.fill_between(eps, cs, ls, color="0.6", alpha=0.25, zorder=1, label="gap")
    if clean_acc is not None:
        ax.axhline(100 * clean_acc, color="0.5", linestyle=":", linewidth=1, label="clean")
    ax.set_xlabel(f"eps ({_P_NAME[a['norm']]} norm, model input units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    if len(eps) > 1 and eps[-1] / eps[0] > 20:
        ax.set_xscale("log")
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:.3g}" for e in eps])
    ax.set_title(f"{a['id']}: {a['class']} ({a['kind']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _found_figure(a: dict[str, Any], found: dict[str, list[list[float]]]) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    rng = np.random.default_rng(0)
    peer_i = 0
    labels = []
    for mi, m in enumerate(a["methods"]):
        style = _method_style(m, peer_i)
        peer_i += int(m["peer"])
        labels.append(m["label"])
        vals = (found.get(m["key"]) or [[]])[0]
        if not vals:
            continue
        bp = ax.boxplot(
            [vals],
            positions=[mi],
            widths=0.6,
            whis=(0, 100),
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        for box in bp["boxes"]:
            box.set_facecolor(style["color"])
            box.set_alpha(0.35)
        ax.scatter(
            mi + rng.uniform(-0.18, 0.18, size=len(vals)),
            vals,
            s=9,
            color=style["color"],
            alpha=0.8,
            zorder=3,
        )
    for e in a["eps"]:
        ax.axhline(e, color="0.4", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"eps {e:.3g}",
            (1.0, e),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            ha="right",
            va="bottom",
            color="0.3",
        )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel(f"{_P_NAME[a['norm']]} norm of the adversarial found")
    ax.set_title(
        f"{a['id']}: size of the smallest adversarial perturbation found (lower is better)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _norms_figure(a: dict[str, Any], ratios: dict[str, list[list[float]]]) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    if a["kind"] == "minimization":
        return _found_figure(a, ratios)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    methods = a["methods"]
    k = max(1, len(methods))
    width = 0.8 / k
    rng = np.random.default_rng(0)
    peer_i = 0
    handles = []
    for mi, m in enumerate(methods):
        style = _method_style(m, peer_i)
        peer_i += int(m["peer"])
        data = ratios.get(m["key"], [])
        positions = [j + (mi - (k - 1) / 2) * width for j in range(len(a["eps"]))]
        present = [(p, d) for p, d in zip(positions, data, strict=False) if d]
        if not present:
            continue
        bp = ax.boxplot(
            [d for _, d in present],
            positions=[p for p, _ in present],
            widths=width * 0.85,
            whis=(0, 100),
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        for box in bp["boxes"]:
            box.set_facecolor(style["color"])
            box.set_alpha(0.35)
        for p, d in present:
            jitter = rng.uniform(-width * 0.3, width * 0.3, size=len(d))
            ax.scatter(p + jitter, d, s=9, color=style["color"], alpha=0.8, zorder=3)
        handles.append(
            plt.Line2D([], [], color=style["color"], marker="s", linestyle="", label=m["label"])
        )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.9), max(hi, 1.04))
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xticks(range(len(a["eps"])))
    ax.set_xticklabels([f"{e:.3g}" for e in a["eps"]])
    ax.set_xlabel("nominal eps")
    ax.set_ylabel(f"effective {_P_NAME[a['norm']]} norm / eps")
    ax.set_title(f"{a['id']}: perturbation the model saw, relative to eps", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    return _png(fig)


def _runtime_figure(report: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    rows = []
    for a in report["attacks"]:
        peer_i = 0
        for m in a["methods"]:
            style = _method_style(m, peer_i)
            peer_i += int(m["peer"])
            rows.append((f"{a['id']} / {m['label']}", m["ms_per_sample_eps"], style["color"]))
    height = max(3.0, 0.22 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height), layout="constrained")
    ys = list(range(len(rows)))[::-1]
    vals = [r[1] if r[1] is not None else 0.0 for r in rows]
    ax.barh(ys, vals, color=[r[2] for r in rows], alpha=0.85)
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    positive = [v for v in vals if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_xscale("log")
    ax.set_xlabel("wall time per sample and eps (ms)")
    ax.set_title("Runtime per attack and variant", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _figures(
    report: dict[str, Any], ratios: dict[str, dict[str, list[list[float]]]]
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    out: dict[str, bytes] = {}
    for a in report["attacks"]:
        out[f"robust-{a['id']}"] = _robust_figure(a, report["clean"]["accuracy"])
        out[f"norms-{a['id']}"] = _norms_figure(a, ratios.get(a["id"], {}))
    out["runtime"] = _runtime_figure(report)
    return out


# --------------------------------------------------------------------------- tables


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _certified_table(a: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for j, e in enumerate(a["eps"]):
        cert = a["certified_robust_accuracy"][j]
        low, by = _lowest_empirical(a, j)
        gap = None if cert is None or low is None else 100 * (low - cert)
        rows.append([_eps_str(e), _pct(cert), _pct(low), by or "n/a", _fmt(gap, "+.1f")])
    return (
        f"Certified vs empirical robust accuracy, {a['id']} (eps in {_P_NAME[a['norm']]}; "
        "gap = lowest empirical - certified, in percentage points)",
        ["eps", "certified", "lowest empirical", "lowest by", "gap"],
        rows,
    )


def _tables(report: dict[str, Any]) -> dict[str, Any]:
    """Every table of the report as (caption, header, rows) -- shared by HTML and Markdown."""
    t: dict[str, Any] = {}
    c = report["clean"]
    t["clean"] = (
        "Clean accuracy",
        ["model", "data set", "samples", "correct", "clean accuracy"],
        [
            [
                report["model"]["name"],
                report["data"]["name"],
                str(c["evaluated"]),
                str(c["correct"]),
                _pct(c["accuracy"]),
            ]
        ],
    )
    for a in report["attacks"]:
        header = ["method", "class"] + [_eps_str(e) for e in a["eps"]]
        rows = [
            [m["label"], m["class"]] + [_pct(v) for v in m["robust_accuracy"]] for m in a["methods"]
        ]
        if report.get("certificate"):
            header.append("certificate violations")
            for row, m in zip(rows, a["methods"], strict=True):
                c = m["certificate"]
                bad = sum(c["violations"]) + c["found_violations"]
                row.append(f"{bad} / {sum(c['checked']) + c['found_checked']}")
            t[f"certified-{a['id']}"] = _certified_table(a)
        t[f"robust-{a['id']}"] = (
            f"Robust accuracy, {a['id']} (eps in {_P_NAME[a['norm']]})",
            header,
            rows,
        )
        if a["kind"] == "minimization":
            header = ["method", "adversarial found", "median", "mean", "min", "max"]
            rows = []
            for m in a["methods"]:
                f = m["found_norm"] or {}
                rows.append(
                    [m["label"], _pct(f.get("adversarial_share"))]
                    + [_fmt(f.get(k), ".4g") for k in ("median", "mean", "min", "max")]
                )
            t[f"norms-{a['id']}"] = (
                f"{_P_NAME[a['norm']]} norm of the adversarial perturbation found, {a['id']} "
                "(correctly classified samples where the attack found one)",
                header,
                rows,
            )
            continue
        header = ["method"] + [f"eps {e:.3g}: mean / min / short" for e in a["eps"]]
        rows = []
        for m in a["methods"]:
            r = m["effective_ratio"]
            rows.append(
                [m["label"]]
                + [
                    f"{_fmt(r['mean'][j], '.4f')} / {_fmt(r['min'][j], '.4f')} / "
                    f"{_pct(r['short_share'][j])}"
                    for j in range(len(a["eps"]))
                ]
            )
        t[f"norms-{a['id']}"] = (
            f"Effective {_P_NAME[a['norm']]} norm / eps, {a['id']} (correctly classified samples; "
            f"'short' = ratio < {SHORT_RATIO})",
            header,
            rows,
        )
    rows = []
    for a in report["attacks"]:
        car = next((m for m in a["methods"] if m["variant"] == "car"), None)
        for m in a["methods"]:
            rel = (
                f"{m['time_s'] / car['time_s']:.2f}"
                if car and car["time_s"] and m["time_s"] is not None
                else "n/a"
            )
            rows.append(
                [
                    a["id"],
                    m["label"],
                    _fmt(m["time_s"], ".2f"),
                    _fmt(m["cpu_s"], ".2f"),
                    _fmt(m["ms_per_sample_eps"], ".1f"),
                    _fmt(m["queries_per_sample_eps"], ".1f"),
                    rel,
                ]
            )
    t["runtime"] = (
        "Runtime per attack and variant",
        [
            "attack",
            "method",
            "wall s",
            "CPU s",
            "ms / sample / eps",
            "queries / sample / eps",
            "time / car",
        ],
        rows,
    )
    env = report["environment"]
    pk = env.get("packages", {})
    dev = env.get("device", {})
    rows = [
        ["python", f"{env.get('python')} ({env.get('implementation')})"],
        ["platform", str(env.get("platform"))],
        ["cpu count", str(env.get("cpu_count"))],
        [
            "device",
            f"{dev.get('requested')} ({dev.get('name')}, torch threads {dev.get('torch_threads')})",
        ],
    ] + [[name, str(ver)] for name, ver in pk.items()]
    run = report["run"]
    rows += [
        ["run status", f"{run['status']} ({run['units_done']}/{run['units_total']} units)"],
        [
            "run wall time",
            f"{_fmt(run['wall_time_s'], '.1f')} s over {len(run['sessions'])} session(s)",
        ],
        ["config hash", str(report["config_hash"])[:16]],
    ]
    t["environment"] = ("Environment", ["item", "value"], rows)
    return t


_HOW_TO_READ = (
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
    "queries count images passed through the model."
)


_HOW_TO_READ_CERTIFIED = (
    "This model is <b>certified</b>: its Lipschitz bound L turns each sample's logit margin "
    "into a radius r = margin / (sqrt(2) L) within which no L2 perturbation can change its "
    "prediction (r also bounds L1 perturbations, and r / sqrt(n) L∞ ones for n input "
    "components). <b>Certified robust accuracy</b> (black stars) is the share of samples "
    "classified correctly with r >= eps: no attack can push robust accuracy below it. The "
    "shaded <b>gap</b> up to the strongest attack is what attacks leave unexplored. The "
    "<b>certificate violations</b> column counts attack results that change the prediction "
    "from inside the certified ball; it must be 0."
)


def _html_table(name: str, caption: str, header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        f'<table class="report-table" data-table="{html.escape(name)}">'
        f"<caption>{html.escape(caption)}</caption><thead><tr>{h}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _html_figure(fig_id: str, title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{html.escape(fig_id)}"><img class="report-figure" '
        f'alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1240px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
caption{text-align:left;font-weight:600;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}
table.report-table[data-table^="robust"] td:nth-child(2),
table.report-table[data-table="runtime"] td:nth-child(2){text-align:left}
th{background:#f2f2f2}figure{margin:.5em 0;display:inline-block;vertical-align:top}
figcaption{font-size:.85em;color:#555}img{max-width:100%}
.note{background:#f6f8fa;border-left:4px solid #1f77b4;padding:.6em 1em}
.warn{background:#fff4e5;border-left:4px solid #d62728;padding:.6em 1em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}
.pair{display:flex;flex-wrap:wrap;gap:1em}.pair figure{flex:1 1 560px;max-width:600px}
"""


def _html(report: dict[str, Any], figures: dict[str, bytes], tables: dict[str, Any]) -> str:
    titles = {f["id"]: f["title"] for f in report["figures"]}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1>",
        f'<p class="note"><b>How to read this.</b> {_HOW_TO_READ}</p>',
    ]
    if report.get("certificate"):
        parts.append(f'<p class="note">{_HOW_TO_READ_CERTIFIED}</p>')
    run = report["run"]
    if not run["complete"] or run["errors"]:
        parts.append(
            '<p class="warn">'
            + html.escape(
                f"This run is incomplete: {run['units_done']} of {run['units_total']} units done"
                f"{', ' + str(len(run['errors'])) + ' failed' if run['errors'] else ''}. "
                "Missing points are shown as n/a."
            )
            + "</p>"
        )
    parts.append("<h2>Summary</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in report["headline"]]
    parts.append("</ul>")
    parts.append(
        "<p>"
        + html.escape(
            f"Model {report['model']['name']}, data {report['data']['name']} "
            f"({report['data']['split']}, {report['data']['n']} samples from index "
            f"{report['data']['start']}, batches of {report['data']['batch_size']}), seed "
            f"{report['seed']}, device {report['device']}."
        )
        + "</p>"
    )
    parts.append("<h2>Clean accuracy</h2>")
    parts.append(_html_table("clean", *tables["clean"]))
    parts.append("<h2>Robust accuracy and effective perturbation size per attack</h2>")
    for a in report["attacks"]:
        params = ", ".join(f"{k}={v}" for k, v in a["params"].items()) or "defaults"
        parts.append(f"<h3>{html.escape(a['id'])}</h3>")
        parts.append(
            "<p>"
            + html.escape(
                f"{a['class']} ({a['kind']} attack, {_P_NAME[a['norm']]} norm), parameters: "
                f"{params}. Compared with: "
                + (", ".join(m["key"] for m in a["methods"] if m["peer"]) or "no peers")
                + "."
            )
            + "</p>"
        )
        parts.append('<div class="pair">')
        for fid in (f"robust-{a['id']}", f"norms-{a['id']}"):
            parts.append(_html_figure(fid, titles[fid], figures[fid]))
        parts.append("</div>")
        parts.append(_html_table(f"robust-{a['id']}", *tables[f"robust-{a['id']}"]))
        if f"certified-{a['id']}" in tables:
            parts.append(_html_table(f"certified-{a['id']}", *tables[f"certified-{a['id']}"]))
        parts.append(_html_table(f"norms-{a['id']}", *tables[f"norms-{a['id']}"]))
    parts.append("<h2>Runtime</h2>")
    parts.append(_html_figure("runtime", titles["runtime"], figures["runtime"]))
    parts.append(_html_table("runtime", *tables["runtime"]))
    if run["incomplete"] or run["errors"]:
        parts.append("<h2>Run</h2><ul>")
        parts += [
            f"<li>failed: {html.escape(str(e['key']))}: {html.escape(str(e['error']))}</li>"
            for e in run["errors"]
        ]
        parts += [f"<li>missing: {html.escape(s)}</li>" for s in run["incomplete"][:50]]
        parts.append("</ul>")
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{html.escape(report['config_yaml'])}</pre>")
    parts.append("<h2>Environment</h2>")
    parts.append(_html_table("environment", *tables["environment"]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = [f"**{esc(caption)}**", "", "| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown(report: dict[str, Any], tables: dict[str, Any]) -> str:
    import re

    how = re.sub(r"</?b>", "**", _HOW_TO_READ)
    out = [f"# {report['title']}", "", f"> **How to read this.** {how}", ""]
    if report.get("certificate"):
        out += ["> " + re.sub(r"</?b>", "**", _HOW_TO_READ_CERTIFIED), ""]
    out += ["## Summary", ""]
    out += [f"- {line}" for line in report["headline"]]
    out += ["", "## Clean accuracy", "", _md_table(*tables["clean"])]
    out += ["## Robust accuracy and effective perturbation size per attack", ""]
    titles = {f["id"]: f for f in report["figures"]}
    for a in report["attacks"]:
        out += [f"### {a['id']}", ""]
        for fid in (f"robust-{a['id']}", f"norms-{a['id']}"):
            out += [f"![{titles[fid]['title']}]({titles[fid]['file']})", ""]
        out += [_md_table(*tables[f"robust-{a['id']}"])]
        if f"certified-{a['id']}" in tables:
            out += [_md_table(*tables[f"certified-{a['id']}"])]
        out += [_md_table(*tables[f"norms-{a['id']}"])]
    out += ["## Runtime", "", f"![{titles['runtime']['title']}]({titles['runtime']['file']})", ""]
    out += [_md_table(*tables["runtime"])]
    out += ["## Config", "", "```yaml", report["config_yaml"].rstrip("\n"), "```", ""]
    out += ["## Environment", "", _md_table(*tables["environment"])]
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def build_report(run_dir: str | Path) -> list[Path]:
    """(Re)build report.json, report.md, report.html and figures/*.png of a run directory.

    Raises RunDirError if ``run_dir`` is not a run directory."""
    d = Path(run_dir)
    config, manifest, config_text, store = _load(d)
    report, ratios = compute_report(
        config, manifest, store.records(), store.errors(), config_text=config_text
    )
    figures = _figures(report, ratios)
    tables = _tables(report)
    paths = []
    for f in report["figures"]:
        path = d / f["file"]
        atomic_write_bytes(path, figures[f["id"]])
    for name, text in (
        ("report.json", json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n"),
        ("report.md", _markdown(report, tables)),
        ("report.html", _html(report, figures, tables)),
    ):
        atomic_write_text(d / name, text)
        paths.append(d / name)
    return paths
