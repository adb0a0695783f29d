"""Certified models in the report (``ModelSpec.certified``, e.g. BCOP networks).

Certified robust accuracy at eps is the share of samples classified correctly whose
certified radius is ``>= eps``: a lower bound on the robust accuracy under *any* attack.
The L2 radius ``r = margin / (sqrt(2) L)`` certifies the L1 ball of radius ``r``
(``||d||_2 <= ||d||_1``) and the L-inf ball of radius ``r / sqrt(n)`` for ``n`` input
components. The *gap* is empirical minus certified robust accuracy; the *soundness
column* counts attack results that change the prediction from inside the certified L2
ball (:func:`car_attacks.soundness.check_soundness`): any count above zero means the
certificate or the attack's norm bookkeeping is wrong.
"""

from __future__ import annotations

import math

from ..records import Certificate
from .collect import CleanSamples
from .document import AttackSummary, CertificateSummary
from .stats import finite, quantile

__all__ = [
    "certificate_summary",
    "certified_accuracy",
    "certified_lp_radius",
    "lowest_empirical",
]


def certified_lp_radius(radius: float, norm: str, input_size: int) -> float:
    """The Lp radius certified by an L2 radius: ``r`` for L1 and L2, ``r / sqrt(n)`` for
    L-inf (``||d||_2 <= ||d||_1`` and ``||d||_2 <= sqrt(n) ||d||_inf``)."""
    return radius / math.sqrt(input_size) if norm == "linf" else radius


def certified_accuracy(
    clean: CleanSamples, certificate: Certificate, norm: str, eps: tuple[float, ...]
) -> list[float | None]:
    """Per eps: share of the evaluated samples that are correct with radius >= eps."""
    idx = [i for i in clean.correct if i in clean.radius]
    if not idx:
        return [None for _ in eps]
    n = certificate.input_size
    return [
        finite(
            sum(
                clean.correct[i] and certified_lp_radius(clean.radius[i], norm, n) >= e for i in idx
            )
            / len(idx)
        )
        for e in eps
    ]


def certificate_summary(
    clean: CleanSamples, attacks: list[AttackSummary]
) -> CertificateSummary | None:
    """Lipschitz bound, radius statistics and the soundness totals over every attack."""
    if clean.certificate is None:
        return None
    vals = sorted(clean.radius.values())
    checked = violations = 0
    offenders = []
    for a in attacks:
        for m in a.methods:
            if m.certificate is None:
                continue
            checked += m.certificate.total_checked
            violations += m.certificate.total_violations
            if m.certificate.total_violations:
                offenders.append(f"{a.id}:{m.key}")
    return CertificateSummary(
        norm="l2",
        lipschitz=float(clean.certificate.lipschitz),
        input_size=int(clean.certificate.input_size),
        samples=len(vals),
        radius_median=finite(quantile(vals, 0.5)) if vals else None,
        radius_max=finite(vals[-1]) if vals else None,
        results_checked=checked,
        violations=violations,
        violating_methods=offenders,
    )


def lowest_empirical(a: AttackSummary, j: int) -> tuple[float | None, str]:
    """The lowest robust accuracy any method of attack ``a`` reached at eps index ``j``,
    and the key of the method that reached it."""
    present = [(v, m.key) for m in a.methods if (v := m.robust_accuracy[j]) is not None]
    if not present:
        return None, ""
    return min(present, key=lambda t: t[0])
