"""Small Fashion-MNIST classifiers shipped with the package (``car_attacks/weights/``).

Trained on this project's CPU by ``scripts/train_fashion_mnist.py`` (a few epochs
each); their measured clean, certified (BCOP) and PGD-robust accuracies on the
Fashion-MNIST test set are in ``car_attacks/weights/metrics.json``
(:func:`shipped_metrics`). All take inputs in [0, 1] of shape ``(1, 28, 28)``, no
normalisation.

* ``fashion_mnist_bcop`` -- a BCOP network (orthogonal convolutions, MaxMin, Björck
  linear layer; Li et al., NeurIPS 2019) trained with the multi-class hinge loss whose
  margin is ``sqrt(2) * eps_train * L`` (``L`` the Lipschitz bound); certifiable with
  :func:`car_attacks.lipschitz.certified_radius`.
* ``fashion_mnist_cnn`` -- a small standard CNN (cross-entropy).
* ``fashion_mnist_cnn_noise`` -- the same CNN trained on inputs with clipping-aware
  Gaussian noise of exact L2 size (:class:`car_attacks.data.augment.ClippingAwareNoise`).
* ``fashion_mnist_cnn_pgd`` -- the same CNN adversarially trained with the project's
  clipping-aware L2 PGD (:class:`car_attacks.attacks.L2ClippingAwarePGD`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torch import nn

from ..lipschitz import bcop_network
from .registry import register_model
from .spec import WEIGHTS_DIR, local_weights_model, packaged_weights

__all__ = [
    "BCOP_WIDTHS",
    "FASHION_MNIST_MODELS",
    "METRICS_FILE",
    "bcop_classifier",
    "shipped_metrics",
    "small_cnn",
]

#: Stage widths of the shipped BCOP network (one strided BCOP convolution each).
BCOP_WIDTHS: tuple[int, ...] = (16, 32)

#: Measured accuracies of the shipped models (written by the training script).
METRICS_FILE = WEIGHTS_DIR / "metrics.json"


def bcop_classifier(
    in_channels: int = 1, num_classes: int = 10, image_size: int = 28
) -> nn.Sequential:
    """The shipped BCOP architecture: per width one stride-2 BCOP convolution + MaxMin,
    then a Björck-orthonormal linear layer (``depth=0`` keeps it CPU-trainable)."""
    return bcop_network(
        in_channels,
        num_classes,
        image_size,
        widths=BCOP_WIDTHS,
        depth=0,
        kernel_size=3,
        bjorck_iters=10,
        eval_bjorck_iters=30,
        power_iters=3,
    )


def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """conv(16)-relu-pool, conv(32)-relu-pool, fc(100)-relu, fc(num_classes)."""
    if image_size % 4:
        raise ValueError(f"image_size must be divisible by 4, got {image_size}")
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def shipped_metrics() -> dict[str, Any]:
    """The contents of ``car_attacks/weights/metrics.json`` (``{}`` if it is missing)."""
    if not METRICS_FILE.is_file():
        return {}
    data: dict[str, Any] = json.loads(METRICS_FILE.read_text(encoding="utf-8"))
    return data


_COMMON = "Fashion-MNIST (inputs in [0, 1], 1x28x28, no normalisation), trained on CPU by "
_SCRIPT = "scripts/train_fashion_mnist.py; accuracies in car_attacks/weights/metrics.json"

#: name -> (architecture, description)
FASHION_MNIST_MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "fashion_mnist_bcop": (
        bcop_classifier,
        "BCOP Lipschitz network (orthogonal convolutions, certified l2 radii) on " + _COMMON,
    ),
    "fashion_mnist_cnn": (small_cnn, "small CNN, standard training, on " + _COMMON),
    "fashion_mnist_cnn_noise": (
        small_cnn,
        "small CNN trained with clipping-aware L2 Gaussian noise on " + _COMMON,
    ),
    "fashion_mnist_cnn_pgd": (
        small_cnn,
        "small CNN adversarially trained with clipping-aware L2 PGD on " + _COMMON,
    ),
}

for _name, (_arch, _description) in FASHION_MNIST_MODELS.items():
    register_model(
        local_weights_model(
            name=_name,
            description=_description + _SCRIPT,
            datasets=("fashion_mnist", "foolbox_fashion_mnist"),
            architecture=_arch,
            locate_weights=packaged_weights(f"{_name}.pt"),
            weights_hint="train it with scripts/train_fashion_mnist.py --out car_attacks/weights",
            certified=_arch is bcop_classifier,
        )
    )
