"""The report's figures (matplotlib, PNG): per attack the robust accuracy over eps and the
perturbation sizes, and one runtime chart."""

from __future__ import annotations

import io
import math
from typing import Any

from .certified import lowest_empirical
from .document import AttackSummary, MethodSummary, Report
from .formatting import NORM_NAME

__all__ = ["render_figures"]

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
_SIZE = (6.4, 4.0)
"""Inches of the per-attack figures."""


def _styles(methods: list[MethodSummary]) -> list[dict[str, Any]]:
    """Line style per method: the variant's own, or the next peer colour, dashed."""
    styles = []
    peer_index = 0
    for m in methods:
        if not m.peer:
            styles.append(dict(_VARIANT_STYLE.get(m.variant, {}), linestyle="-"))
            continue
        styles.append(
            {
                "color": _PEER_COLORS[peer_index % len(_PEER_COLORS)],
                "marker": "D",
                "linestyle": "--",
                "linewidth": 1.4,
                "markersize": 5,
                "zorder": 5,  # dashed, on top: the variants stay visible through the gaps
            }
        )
        peer_index += 1
    return styles


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _percent(vals: list[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in vals]


def _robust_figure(a: AttackSummary, clean_acc: float | None) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=_SIZE, layout="constrained")
    eps = list(a.eps)
    for m, style in zip(a.methods, _styles(a.methods), strict=True):
        ax.plot(eps, _percent(m.robust_accuracy), label=m.label, **style)
    if a.certified_robust_accuracy is not None:
        cs = _percent(a.certified_robust_accuracy)
        ls = _percent([lowest_empirical(a, j)[0] for j in range(len(eps))])
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
    ax.set_xlabel(f"eps ({NORM_NAME[a.norm]} norm, model input units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    if len(eps) > 1 and eps[-1] / eps[0] > 20:
        ax.set_xscale("log")
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:.3g}" for e in eps])
    ax.set_title(f"{a.id}: {a.config.cls} ({a.kind})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _boxes(
    ax: Any,
    groups: list[tuple[float, list[float]]],
    *,
    box_width: float,
    jitter: float,
    color: str,
    rng: Any,
) -> None:
    """Box plots (whiskers at min and max) of non-empty value groups at x positions, with
    the values scattered over them within +-``jitter``."""
    bp = ax.boxplot(
        [d for _, d in groups],
        positions=[p for p, _ in groups],
        widths=box_width,
        whis=(0, 100),
        patch_artist=True,
        manage_ticks=False,
        medianprops={"color": "black"},
    )
    for box in bp["boxes"]:
        box.set_facecolor(color)
        box.set_alpha(0.35)
    for p, d in groups:
        offsets = rng.uniform(-jitter, jitter, size=len(d))
        ax.scatter(p + offsets, d, s=9, color=color, alpha=0.8, zorder=3)


def _found_figure(a: AttackSummary) -> bytes:
    """Minimization attacks: the norms of the adversarials found, one box per method."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=_SIZE, layout="constrained")
    rng = np.random.default_rng(0)
    for mi, (m, style) in enumerate(zip(a.methods, _styles(a.methods), strict=True)):
        vals = (m.distribution or [[]])[0]
        if vals:
            _boxes(ax, [(mi, vals)], box_width=0.6, jitter=0.18, color=style["color"], rng=rng)
    for e in a.eps:
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
    ax.set_xticks(range(len(a.methods)))
    ax.set_xticklabels([m.label for m in a.methods], fontsize=8, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel(f"{NORM_NAME[a.norm]} norm of the adversarial found")
    ax.set_title(
        f"{a.id}: size of the smallest adversarial perturbation found (lower is better)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _ratio_figure(a: AttackSummary) -> bytes:
    """Fixed-eps attacks: effective norm / eps per eps, one box per method."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=_SIZE, layout="constrained")
    k = max(1, len(a.methods))
    width = 0.8 / k
    rng = np.random.default_rng(0)
    handles = []
    for mi, (m, style) in enumerate(zip(a.methods, _styles(a.methods), strict=True)):
        positions = [j + (mi - (k - 1) / 2) * width for j in range(len(a.eps))]
        present = [(p, d) for p, d in zip(positions, m.distribution, strict=False) if d]
        if not present:
            continue
        _boxes(
            ax, present, box_width=width * 0.85, jitter=width * 0.3, color=style["color"], rng=rng
        )
        handles.append(
            plt.Line2D([], [], color=style["color"], marker="s", linestyle="", label=m.label)
        )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.9), max(hi, 1.04))
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xticks(range(len(a.eps)))
    ax.set_xticklabels([f"{e:.3g}" for e in a.eps])
    ax.set_xlabel("nominal eps")
    ax.set_ylabel(f"effective {NORM_NAME[a.norm]} norm / eps")
    ax.set_title(f"{a.id}: perturbation the model saw, relative to eps", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    return _png(fig)


def _runtime_figure(report: Report) -> bytes:
    import matplotlib.pyplot as plt

    rows = [
        (f"{a.id} / {m.label}", m.ms_per_sample_eps, style["color"])
        for a in report.attacks
        for m, style in zip(a.methods, _styles(a.methods), strict=True)
    ]
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


def render_figures(report: Report) -> dict[str, bytes]:
    """Every figure of :attr:`Report.figures` as PNG bytes, by figure id."""
    import matplotlib

    matplotlib.use("Agg")
    out: dict[str, bytes] = {}
    for a in report.attacks:
        out[f"robust-{a.id}"] = _robust_figure(a, report.clean.accuracy)
        norms = _found_figure(a) if a.kind == "minimization" else _ratio_figure(a)
        out[f"norms-{a.id}"] = norms
    out["runtime"] = _runtime_figure(report)
    return out
