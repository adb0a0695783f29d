"""Old import path of the rescaling choice (kept so existing code keeps working); see
:mod:`car_attacks.attacks.base` and :mod:`car_attacks.attacks.rescaled_steps`."""

from .base import model_bounds
from .rescaled_steps import RESCALINGS, Rescaling, check_rescaling, project_then_clip

__all__ = ["RESCALINGS", "Rescaling", "check_rescaling", "model_bounds", "project_then_clip"]
