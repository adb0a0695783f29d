"""Named models: the registry :data:`MODELS` and :func:`load_model`."""

from __future__ import annotations

import os

from torch import nn

from .checkpoint import load_checkpoint, load_weights_into
from .layers import Preprocessed
from .robustbench_models import ROBUSTBENCH_PREFIX, load_robustbench_model, robustbench_spec
from .spec import WEIGHTS_DIR, ModelSpec, WeightsUnavailableError, packaged_weights
from .timm_models import TIMM_PREFIX, timm_spec
from .torchvision_models import TORCHVISION_PREFIX, torchvision_spec

#: Name prefixes of model sources built on demand (torchvision, RobustBench, timm); the
#: optional packages behind them are imported only when such a name is used.
RESERVED_PREFIXES = (TORCHVISION_PREFIX, ROBUSTBENCH_PREFIX, TIMM_PREFIX)

__all__ = [
    "MODELS",
    "RESERVED_PREFIXES",
    "ROBUSTBENCH_PREFIX",
    "TIMM_PREFIX",
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
    for prefix in RESERVED_PREFIXES:
        if spec.name.startswith(prefix):
            raise ValueError(f"names starting with {prefix!r} are reserved")
    if spec.name in MODELS and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name, ``torchvision:<arch>``,
    ``robustbench:<dataset>/<threat_model>/<name>`` or ``timm:<name>``."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_spec(name)
    if name.startswith(ROBUSTBENCH_PREFIX):
        return robustbench_spec(name)
    if name.startswith(TIMM_PREFIX):
        return timm_spec(name)
    known = ", ".join(sorted(MODELS))
    raise ValueError(
        f"unknown model {name!r}; known models: {known}, "
        f"or '{TORCHVISION_PREFIX}<arch>' for any torchvision classifier "
        f"(e.g. {TORCHVISION_PREFIX}resnet18), '{ROBUSTBENCH_PREFIX}<dataset>/<threat_model>/"
        f"<name>' for a RobustBench model, '{TIMM_PREFIX}<name>' for a timm model"
    )


def list_models() -> list[ModelSpec]:
    """Registered models, sorted by name (models named by a prefix are not listed)."""
    return [MODELS[name] for name in sorted(MODELS)]


def load_model(name: str, *, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """Build a named model in eval mode, its parameters frozen.

    The module maps inputs in ``model_spec(name).bounds`` to logits; normalisation is a
    layer inside it. ``weights`` (a local state-dict file, loaded with
    ``weights_only=True``) replaces the default weights. Raises ``ValueError`` for an
    unknown name or an unusable checkpoint, ``FileNotFoundError`` for a missing file and
    :class:`WeightsUnavailableError` when default weights cannot be downloaded.
    RobustBench models are loaded by RobustBench's own code
    (:func:`~.robustbench_models.load_robustbench_model`).
    """
    if name.startswith(ROBUSTBENCH_PREFIX):
        return load_robustbench_model(name, weights=weights, device=device)
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
        hint = f" ({spec.weights_hint})" if spec.weights_hint else ""
        raise ValueError(f"model {name!r} has no default weights; pass weights=<file>{hint}")
    net = load_weights_into(spec.architecture(), state, source=source)
    if spec.preprocess is not None:
        net = Preprocessed(spec.preprocess(), net)
    net.requires_grad_(False)
    return net.to(device).eval()
