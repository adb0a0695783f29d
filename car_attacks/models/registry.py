"""Named models: the registry :data:`MODELS` and :func:`load_model`."""

from __future__ import annotations

import os

from torch import nn

from .checkpoint import load_checkpoint, load_weights_into
from .layers import Preprocessed
from .spec import WEIGHTS_DIR, ModelSpec, WeightsUnavailableError, packaged_weights
from .torchvision_models import TORCHVISION_PREFIX, torchvision_spec

__all__ = [
    "MODELS",
    "TORCHVISION_PREFIX",
    "WEIGHTS_DIR",
    "ModelSpec",
    "WeightsUnavailableError",
    "list_models",
    "load_model",
    "model_spec",
    "packaged_weights",
    "register_model",
]

#: name -> model; :func:`register_model` adds to it.
MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` (``ValueError`` if the name is taken)."""
    if spec.name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"names starting with {TORCHVISION_PREFIX!r} are reserved")
    if spec.name in MODELS and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name or of ``torchvision:<arch>``."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_spec(name)
    known = ", ".join(sorted(MODELS))
    raise ValueError(
        f"unknown model {name!r}; known models: {known}, "
        f"or '{TORCHVISION_PREFIX}<arch>' for any torchvision classifier "
        f"(e.g. {TORCHVISION_PREFIX}resnet18)"
    )


def list_models() -> list[ModelSpec]:
    """Registered models, sorted by name (``torchvision:<arch>`` models are not listed)."""
    return [MODELS[name] for name in sorted(MODELS)]


def load_model(name: str, *, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """Build a named model in eval mode, its parameters frozen.

    The module maps inputs in ``model_spec(name).bounds`` to logits; normalisation is a
    layer inside it. ``weights`` (a local state-dict file, loaded with
    ``weights_only=True``) replaces the default weights. Raises ``ValueError`` for an
    unknown name or an unusable checkpoint, ``FileNotFoundError`` for a missing file and
    :class:`WeightsUnavailableError` when default weights cannot be downloaded.
    """
    spec = model_spec(name)
    if spec.architecture is None:
        raise ValueError(f"model {name!r} has no architecture registered")
    if weights is not None:
        state, source = load_checkpoint(weights), os.fspath(weights)
    elif spec.locate_weights is not None:
        path = spec.locate_weights()
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(spec.available()[1])
        state, source = load_checkpoint(path), path
    elif spec.fetch_weights is not None:
        state, source = spec.fetch_weights(), f"default weights of {name}"
    else:
        raise ValueError(f"model {name!r} has no default weights; pass weights=<file>")
    net = load_weights_into(spec.architecture(), state, source=source)
    if spec.preprocess is not None:
        net = Preprocessed(spec.preprocess(), net)
    net.requires_grad_(False)
    return net.to(device).eval()
