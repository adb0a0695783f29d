"""Small statistics of the report: rounded finite values, quantiles, means."""

from __future__ import annotations

import math

__all__ = ["finite", "mean_or_none", "quantile", "share_or_none"]


def finite(v: float | None, digits: int = 6) -> float | None:
    """``v`` rounded to ``digits``; ``None`` for ``None``, NaN and infinities (JSON-safe)."""
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), digits)


def quantile(sorted_vals: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linearly interpolated; NaN when empty."""
    if not sorted_vals:
        return math.nan
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def mean_or_none(vals: list[float]) -> float | None:
    """The rounded mean of ``vals``; ``None`` when empty."""
    return finite(sum(vals) / len(vals)) if vals else None


def share_or_none(hits: int, total: int) -> float | None:
    """The rounded share ``hits / total``; ``None`` when ``total`` is 0."""
    return finite(hits / total) if total else None
