"""``torchvision:<arch>``: any torchvision classifier with its default weights and
ImageNet normalisation as a layer (weights downloaded once into torch's hub cache)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .checkpoint import normalize_state_dict
from .layers import Normalize
from .spec import ModelSpec, WeightsUnavailableError

__all__ = ["TORCHVISION_PREFIX", "torchvision_spec"]

#: ``load_model("torchvision:<arch>")`` builds any torchvision classifier.
TORCHVISION_PREFIX = "torchvision:"


def _torchvision_archs() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _hub_cache_file(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def torchvision_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``torchvision:<arch>`` (``ValueError`` for an unknown arch):
    inputs in [0, 1] at the weights' crop size, their mean/std normalisation as a layer."""
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
    mean = tuple(float(m) for m in transform.mean)
    std = tuple(float(s) for s in transform.std)
    num_classes = len(default.meta["categories"])
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
        offline=os.path.isfile(cached),
        datasets=("imagenet_folder", "foolbox_imagenet"),
        architecture=architecture,
        preprocess=preprocess,
        fetch_weights=fetch,
        weights_hint=f"downloads {url} into {os.path.dirname(cached)}",
    )
