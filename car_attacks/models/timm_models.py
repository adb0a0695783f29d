"""``timm:<name>``: any timm classifier (Wightman, "PyTorch Image Models") with a local weights
file; the mean/std normalisation of the model's pretrained config is a layer inside the
model, so it takes inputs in [0, 1] at the config's ``input_size``.

The weights are a state dict of ``timm.create_model(name)`` saved with ``torch.save``
(``model.weights`` in a config); nothing is downloaded. Needs ``pip install timm`` (also in
the ``robustbench`` extra).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from .layers import Normalize
from .robustbench_models import MissingExtraError
from .spec import ModelSpec

__all__ = ["TIMM_PREFIX", "timm_pretrained_config", "timm_spec"]

#: ``load_model("timm:resnet18", weights="resnet18.pth")`` builds a timm classifier.
TIMM_PREFIX = "timm:"


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MissingExtraError("timm:<name> models need timm: pip install timm") from exc
    return timm


def timm_pretrained_config(name: str) -> dict[str, Any]:
    """The pretrained config (``input_size``, ``mean``, ``std``, ``num_classes``) of timm model
    ``timm:<name>``; ``ValueError`` if timm has no such model."""
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {arch!r} (in {name!r}){hint}")
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise ValueError(f"timm model {arch!r} has no pretrained config (input size, mean, std)")
    return dict(cfg.to_dict())


def timm_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``timm:<name>``: inputs in [0, 1] at the pretrained config's
    ``input_size``, its ``mean``/``std`` as a :class:`Normalize` layer; weights from a local
    file only. ``ValueError`` for a name timm does not know."""
    arch = name[len(TIMM_PREFIX) :]
    cfg = timm_pretrained_config(name)
    c, h, w = (int(v) for v in cfg["input_size"])
    mean = tuple(float(m) for m in cfg["mean"])
    std = tuple(float(s) for s in cfg["std"])
    num_classes = int(cfg.get("num_classes") or 1000)
    imagenet = num_classes == 1000 and (c, h, w) == (3, 224, 224)

    def architecture() -> nn.Module:
        module: nn.Module = _timm().create_model(arch, pretrained=False, num_classes=num_classes)
        return module

    def preprocess() -> nn.Module:
        return Normalize(mean, std)

    return ModelSpec(
        name=name,
        description=f"timm {arch}; inputs in [0, 1] at {h}x{w}, normalisation "
        f"mean={mean} std={std} (its pretrained config) as a layer; model.weights: <file>",
        num_classes=num_classes,
        input_shape=(c, h, w),
        offline=False,
        datasets=("imagenet_folder", "foolbox_imagenet") if imagenet else (),
        architecture=architecture,
        preprocess=preprocess,
        weights_hint=f"save timm.create_model({arch!r}, pretrained=True).state_dict() with "
        "torch.save while online and pass that file as weights (model.weights)",
    )
