"""How numbers read in the report's tables, prose and figure labels."""

from __future__ import annotations

__all__ = ["NORM_NAME", "eps_str", "fmt", "pct"]

NORM_NAME = {"l1": "L1", "l2": "L2", "linf": "L∞"}
"""Display name of each norm."""


def pct(v: float | None) -> str:
    """``45.0%``; ``n/a`` for a missing value."""
    return "n/a" if v is None else f"{100 * v:.1f}%"


def fmt(v: float | int | str | None, spec: str = ".3g") -> str:
    """A float in ``spec``, anything else as ``str``; ``n/a`` for a missing value."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def eps_str(e: float) -> str:
    """``0.03137 (8/255)`` for multiples of 1/255 below 1, else ``0.03137``."""
    num = e * 255
    if e < 1 and round(num) >= 1 and abs(num - round(num)) < 1e-6:
        return f"{e:.4g} ({round(num)}/255)"
    return f"{e:.4g}"
