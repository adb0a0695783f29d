"""Old import path of :mod:`car_attacks.core.rescaling` (kept so existing code keeps working)."""

from .core.rescaling import (
    FLOAT32_RANGE,
    METHODS,
    clipping_aware_rescaling,
    lp_norm,
    reachable_norm,
    solve_eta,
    solve_eta_with_info,
)

__all__ = [
    "FLOAT32_RANGE",
    "METHODS",
    "clipping_aware_rescaling",
    "lp_norm",
    "reachable_norm",
    "solve_eta",
    "solve_eta_with_info",
]
