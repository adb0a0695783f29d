"""What a named model is (:class:`ModelSpec`) and where its default weights come from."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.tensors import UNIT_BOUNDS
from ..data.datasets import DATASETS

__all__ = [
    "WEIGHTS_DIR",
    "ModelSpec",
    "WeightsLocator",
    "WeightsUnavailableError",
    "local_weights_model",
    "packaged_weights",
]

#: Folder for weight files shipped inside the package (``car_attacks/weights/*.pt``).
WEIGHTS_DIR: Path = Path(__file__).resolve().parent.parent / "weights"

WeightsLocator = Callable[[], str | None]


class WeightsUnavailableError(RuntimeError):
    """Default weights could not be obtained (e.g. a download while offline)."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What a named model is and where its weights come from.

    ``load_model(name)`` returns a module mapping inputs in ``bounds`` with shape
    ``(N, *input_shape)`` to ``(N, num_classes)`` logits; preprocessing is inside.
    ``offline`` says whether the default weights are usable without network access.
    """

    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, int, int]
    offline: bool
    #: The input box ``(lo, hi)`` the model takes.
    bounds: tuple[float, float] = UNIT_BOUNDS
    #: Named data sets (``car_attacks.data``) this model classifies.
    datasets: tuple[str, ...] = ()
    #: Builds the untrained architecture (without preprocessing).
    architecture: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
    #: Builds the preprocessing layer placed in front of the architecture, if any.
    preprocess: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
    #: Returns the path of the default local weights file (``None``: not installed).
    locate_weights: WeightsLocator | None = field(default=None, repr=False, compare=False)
    #: Downloads the default weights (used only when there is no local default file).
    fetch_weights: Callable[[], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False, compare=False
    )
    #: Hint shown when the default weights are missing.
    weights_hint: str = ""
    #: A Lipschitz network whose exact layer norms give certified L2 radii
    #: (:func:`car_attacks.lipschitz.certified_radius`); evaluation reports then show
    #: certified beside empirical robust accuracy and check every attack against them.
    certified: bool = False

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` if ``load_model(name)`` works offline, else ``(False, reason)``."""
        if self.architecture is None:
            return False, f"{self.name}: no architecture registered"
        if self.locate_weights is not None:
            path = self.locate_weights()
            if path is not None and os.path.isfile(path):
                return True, ""
            where = path if path is not None else "(not installed)"
            hint = f"; {self.weights_hint}" if self.weights_hint else ""
            return False, f"{self.name}: default weights file {where} not found{hint}"
        if self.offline:
            return True, ""
        hint = f" ({self.weights_hint})" if self.weights_hint else ""
        return False, f"{self.name}: default weights need a download{hint}; pass weights=<file>"


def packaged_weights(filename: str) -> WeightsLocator:
    """Locator for a weights file shipped in ``car_attacks/weights/``."""

    def locate() -> str:
        return str(WEIGHTS_DIR / filename)

    return locate


def local_weights_model(
    *,
    name: str,
    description: str,
    datasets: tuple[str, ...],
    architecture: Callable[[], nn.Module],
    locate_weights: WeightsLocator,
    weights_hint: str,
    preprocess: Callable[[], nn.Module] | None = None,
    certified: bool = False,
) -> ModelSpec:
    """A :class:`ModelSpec` with local default weights (so ``offline``) for the classes,
    input shape and bounds of the named data set ``datasets[0]``."""
    task = DATASETS[datasets[0]]
    return ModelSpec(
        name=name,
        description=description,
        num_classes=task.num_classes,
        input_shape=task.input_shape,
        bounds=task.bounds,
        offline=True,
        datasets=datasets,
        architecture=architecture,
        preprocess=preprocess,
        locate_weights=locate_weights,
        weights_hint=weights_hint,
        certified=certified,
    )
