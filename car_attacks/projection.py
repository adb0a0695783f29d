"""Old import path of :mod:`car_attacks.core.projection` (kept so existing code keeps working)."""

from .core.projection import PROJECTION_NORMS, project_lp_ball_box

__all__ = ["PROJECTION_NORMS", "project_lp_ball_box"]
