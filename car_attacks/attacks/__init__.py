"""Clipping-aware attacks, drop-in replacements for foolbox's attack classes.

Every class takes ``rescaling="car" | "bisection" | "naive"`` (see
:mod:`car_attacks.attacks.rescaled_steps`) and ``seed``. The frame the families share is
:mod:`car_attacks.attacks.base`; what differs per Lp norm is :mod:`car_attacks.attacks.norms`.
"""

from .apgd import L1ClippingAwareAPGD, L2ClippingAwareAPGD, LinfClippingAwareAPGD
from .base import RESCALINGS, Rescaling
from .boundary import ClippingAwareBoundaryAttack
from .ddn import L2ClippingAwareDDN
from .ensemble import ClippingAwareAutoAttack
from .fmn import ClippingAwareFMN, L1ClippingAwareFMN, L2ClippingAwareFMN, LinfClippingAwareFMN
from .gradient import (
    ClippingAwareGradientAttack,
    L1ClippingAwareBasicIterativeAttack,
    L1ClippingAwareFastGradientAttack,
    L1ClippingAwarePGD,
    L2ClippingAwareBasicIterativeAttack,
    L2ClippingAwareFastGradientAttack,
    L2ClippingAwarePGD,
    LinfClippingAwareBasicIterativeAttack,
    LinfClippingAwareFastGradientAttack,
    LinfClippingAwarePGD,
)
from .hop_skip_jump import ClippingAwareHopSkipJump
from .noise import (
    ClippingAwareAdditiveNoiseAttack,
    ClippingAwareRepeatedAdditiveNoiseAttack,
    L1ClippingAwareAdditiveGaussianNoiseAttack,
    L1ClippingAwareAdditiveUniformNoiseAttack,
    L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L1ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    L2ClippingAwareAdditiveUniformNoiseAttack,
    L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    LinfClippingAwareAdditiveGaussianNoiseAttack,
    LinfClippingAwareAdditiveUniformNoiseAttack,
    LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    LinfClippingAwareRepeatedAdditiveUniformNoiseAttack,
)

__all__ = [
    "L1ClippingAwareAPGD",
    "L2ClippingAwareAPGD",
    "LinfClippingAwareAPGD",
    "ClippingAwareAutoAttack",
    "ClippingAwareBoundaryAttack",
    "ClippingAwareHopSkipJump",
    "ClippingAwareFMN",
    "L1ClippingAwareFMN",
    "L2ClippingAwareFMN",
    "LinfClippingAwareFMN",
    "L2ClippingAwareDDN",
    "RESCALINGS",
    "ClippingAwareGradientAttack",
    "L1ClippingAwareBasicIterativeAttack",
    "L1ClippingAwareFastGradientAttack",
    "L1ClippingAwarePGD",
    "L2ClippingAwareBasicIterativeAttack",
    "L2ClippingAwareFastGradientAttack",
    "L2ClippingAwarePGD",
    "LinfClippingAwareBasicIterativeAttack",
    "LinfClippingAwareFastGradientAttack",
    "LinfClippingAwarePGD",
    "Rescaling",
    "ClippingAwareAdditiveNoiseAttack",
    "ClippingAwareRepeatedAdditiveNoiseAttack",
    "L1ClippingAwareAdditiveGaussianNoiseAttack",
    "L1ClippingAwareAdditiveUniformNoiseAttack",
    "L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "L1ClippingAwareRepeatedAdditiveUniformNoiseAttack",
    "L2ClippingAwareAdditiveGaussianNoiseAttack",
    "L2ClippingAwareAdditiveUniformNoiseAttack",
    "L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "L2ClippingAwareRepeatedAdditiveUniformNoiseAttack",
    "LinfClippingAwareAdditiveGaussianNoiseAttack",
    "LinfClippingAwareAdditiveUniformNoiseAttack",
    "LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "LinfClippingAwareRepeatedAdditiveUniformNoiseAttack",
]
