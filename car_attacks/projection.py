"""Old import path of :mod:`car_attacks.core.projection` (kept so existing code keeps working)."""

from .core.projection import (
    PROJECTION_NORMS,
    l1_threshold,
    project_l1,
    project_l2,
    project_linf,
    project_lp_ball_box,
    project_unchecked,
)

__all__ = [
    "PROJECTION_NORMS",
    "l1_threshold",
    "project_l1",
    "project_l2",
    "project_linf",
    "project_lp_ball_box",
    "project_unchecked",
]
