"""The worst case over every attack of a run, per norm: AutoAttack's way of reporting
robustness (Croce & Hein, ICML 2020) over whatever the run evaluated.

Per norm ``p`` and sample ``i``, the *smallest norm* is

    s_i = min over methods m of attacks in p, over results r of m that fool the model:
          min(eps_r, ||clipped_r - x_i||_p)          (fixed-eps results at eps_r)
          ||found_i - x_i||_p                        (minimization attacks' points)

(``inf`` if nothing fooled it). A sample is robust at ``eps`` when it is classified
correctly and ``s_i > eps``: no method of any attack in that norm fooled it within eps.
The robust-accuracy curve is taken on the union of the eps grids of those attacks; the
median of ``s_i`` over the correctly classified samples is the median smallest norm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ExperimentConfig
from .collect import CleanSamples, MethodSamples
from .stats import finite, quantile, share_or_none

__all__ = ["WorstCase", "smallest_norms", "worst_cases"]


@dataclass(frozen=True, kw_only=True)
class WorstCase:
    """The worst case over all methods of the attacks in one norm."""

    norm: str
    attacks: list[str]
    methods: list[str]
    samples: int
    """Samples with a clean result."""
    eps: list[float]
    """The union of the eps grids of ``attacks``."""
    robust_accuracy: list[float | None]
    """Per eps: classified correctly and fooled by no method within eps."""
    strongest_method: list[str | None]
    """Per eps: the single method with the lowest robust accuracy (first in plan order)."""
    strongest_robust_accuracy: list[float | None]
    median_smallest_norm: float | None
    """Median of the smallest norm over correctly classified samples (``None``: more than
    half of them were never fooled, or none was evaluated)."""
    fooled_share: float | None
    """Share of the correctly classified samples that some method fooled."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _method_norms(md: MethodSamples, eps: tuple[float, ...], norm: str) -> dict[int, float]:
    """Per sample, the smallest norm at which this method fooled it (only fooled ones)."""
    out: dict[int, float] = {}

    def take(i: int, v: float) -> None:
        out[i] = min(v, out.get(i, math.inf))

    for e, slot in zip(eps, md.samples, strict=True):
        for i, r in slot.items():
            if r.success:
                take(i, min(e, r.norm(norm)))
    for i, r in md.found.items():
        if r.success:
            take(i, r.norm(norm))
    return out


def smallest_norms(per_method: list[dict[int, float]]) -> dict[int, float]:
    """Per sample, the smallest of the methods' norms."""
    out: dict[int, float] = {}
    for norms in per_method:
        for i, v in norms.items():
            out[i] = min(v, out.get(i, math.inf))
    return out


def _robust(norms: dict[int, float], correct: dict[int, bool], e: float) -> float | None:
    hits = sum(c and norms.get(i, math.inf) > e for i, c in correct.items())
    return share_or_none(hits, len(correct))


def _worst_case(
    norm: str,
    config: ExperimentConfig,
    clean: CleanSamples,
    methods: list[MethodSamples],
) -> WorstCase:
    attacks = [a for a in config.attacks if a.norm == norm]
    grid = sorted({e for a in attacks for e in a.eps})
    per_method = [_method_norms(md, config.attack(md.method.attack).eps, norm) for md in methods]
    worst = smallest_norms(per_method)
    strongest: list[str | None] = []
    strongest_acc: list[float | None] = []
    keys = [md.method.key for md in methods]
    for e in grid:
        accs = [(_robust(n, clean.correct, e), k) for n, k in zip(per_method, keys, strict=True)]
        present = [(acc, key) for acc, key in accs if acc is not None]
        best = min(present, key=lambda t: t[0]) if present else (None, None)
        strongest_acc.append(best[0])
        strongest.append(best[1])
    right = [i for i, c in clean.correct.items() if c]
    smallest = sorted(worst.get(i, math.inf) for i in right)
    return WorstCase(
        norm=norm,
        attacks=[a.id for a in attacks],
        methods=keys,
        samples=len(clean.correct),
        eps=grid,
        robust_accuracy=[_robust(worst, clean.correct, e) for e in grid],
        strongest_method=strongest,
        strongest_robust_accuracy=strongest_acc,
        median_smallest_norm=finite(quantile(smallest, 0.5)) if smallest else None,
        fooled_share=share_or_none(sum(i in worst for i in right), len(right)),
    )


def worst_cases(
    config: ExperimentConfig, clean: CleanSamples, methods: dict[str, MethodSamples]
) -> list[WorstCase]:
    """Per norm that some attack of the run uses (in config order), the worst case over
    all of that norm's methods."""
    norms = list(dict.fromkeys(a.norm for a in config.attacks))
    return [
        _worst_case(
            norm,
            config,
            clean,
            [md for md in methods.values() if config.attack(md.method.attack).norm == norm],
        )
        for norm in norms
    ]
