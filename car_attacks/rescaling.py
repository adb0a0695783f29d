"""Old import path of :mod:`car_attacks.core.rescaling` and its solvers (kept so existing code
keeps working)."""

from .core.rescaling import (
    BISECTION_RTOL,
    FLOAT32_RANGE,
    METHODS,
    Method,
    clipping_aware_rescaling,
    lp_norm,
    needs_float64,
    reachable_norm,
    reachable_norm_unchecked,
    solve_eta,
    solve_eta_with_info,
)
from .core.solvers import FULL_BISECTION_STEPS, NEWTON_MAX_ITER, VERIFY_RTOL, SolveInfo

__all__ = [
    "BISECTION_RTOL",
    "FLOAT32_RANGE",
    "FULL_BISECTION_STEPS",
    "METHODS",
    "NEWTON_MAX_ITER",
    "VERIFY_RTOL",
    "Method",
    "SolveInfo",
    "clipping_aware_rescaling",
    "lp_norm",
    "needs_float64",
    "reachable_norm",
    "reachable_norm_unchecked",
    "solve_eta",
    "solve_eta_with_info",
]
