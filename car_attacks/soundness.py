"""Old import path of the soundness check (:mod:`car_attacks.lipschitz.soundness`) and of the
L2 attack suite checked with it (:mod:`car_attacks.evaluation.soundness_suite`)."""

from car_attacks.attacks.starting_points import nearest_other_class as other_class_starting_points
from car_attacks.evaluation.soundness_suite import *  # noqa: F403
from car_attacks.evaluation.soundness_suite import __all__ as _suite_names
from car_attacks.lipschitz.soundness import *  # noqa: F403
from car_attacks.lipschitz.soundness import __all__ as _check_names

__all__ = [*_check_names, *_suite_names, "other_class_starting_points"]
