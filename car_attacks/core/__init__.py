"""The maths layer: clipping-aware rescaling for any p, exact Lp-ball ∩ box projections,
the input checks of the public API, and the batched tensor helpers they share.

Written against EagerPy, so every function runs on PyTorch, NumPy and JAX tensors.
Read :mod:`~car_attacks.core.rescaling` first (the CAR equation and its solvers), then
:mod:`~car_attacks.core.projection`.
"""

from .projection import project_lp_ball_box
from .rescaling import METHODS, clipping_aware_rescaling, lp_norm, reachable_norm

__all__ = [
    "METHODS",
    "clipping_aware_rescaling",
    "lp_norm",
    "project_lp_ball_box",
    "reachable_norm",
]
