"""BCOP Lipschitz-constrained networks and l2 certification.

Li et al. (NeurIPS 2019), "Preventing Gradient Attenuation in Lipschitz Constrained
Convolutional Networks": orthogonal convolutions (BCOP), Björck-orthonormalised
linear layers, MaxMin activations, certified radii ``margin / (sqrt(2) L)``, and the
check that no attack result changes a prediction inside them (:mod:`.soundness`).
"""

from car_attacks.lipschitz.bcop import BCOPConv2d, bcop_kernel, block_conv
from car_attacks.lipschitz.bjorck import (
    bjorck,
    orthogonality_error,
    orthonormalize,
    power_iteration,
    scale_for_bjorck,
)
from car_attacks.lipschitz.certify import (
    certified_accuracy,
    certified_radius,
    conv_singular_values,
    layer_lipschitz,
    lipschitz_bound,
    prediction_margin,
)
from car_attacks.lipschitz.layers import BjorckLinear, InvertibleDownsampling, MaxMin, Normalize
from car_attacks.lipschitz.network import bcop_network
from car_attacks.lipschitz.soundness import (
    ATOL,
    RTOL,
    SoundnessOptions,
    SoundnessResult,
    certified_radii,
    check_soundness,
    soundness_column,
    soundness_details,
)

__all__ = [
    "ATOL",
    "BCOPConv2d",
    "BjorckLinear",
    "InvertibleDownsampling",
    "MaxMin",
    "Normalize",
    "RTOL",
    "SoundnessOptions",
    "SoundnessResult",
    "bcop_kernel",
    "bcop_network",
    "bjorck",
    "block_conv",
    "certified_accuracy",
    "certified_radii",
    "certified_radius",
    "check_soundness",
    "conv_singular_values",
    "layer_lipschitz",
    "lipschitz_bound",
    "orthogonality_error",
    "orthonormalize",
    "power_iteration",
    "prediction_margin",
    "scale_for_bjorck",
    "soundness_column",
    "soundness_details",
]
