"""The model and the samples of an experiment, loaded and checked against each other."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data import load_samples
from ..lipschitz import lipschitz_bound
from ..models import load_model, model_spec
from .config import ExperimentConfig

__all__ = ["ExperimentError", "certified_lipschitz", "load_inputs", "one_line"]


class ExperimentError(RuntimeError):
    """The experiment cannot run (weights or data missing, shapes that do not match...)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (a KeyError's key without quotes)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return text.splitlines()[0] if text else type(exc).__name__


def load_inputs(config: ExperimentConfig) -> tuple[nn.Module, tuple[float, float], Tensor, Tensor]:
    """``(model, bounds, images, labels)``: the model in eval mode on the config's device and
    the samples scaled from [0, 1] into the model's bounds. Raises ExperimentError."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"device {config.device!r} requested but CUDA is not available")
    spec = model_spec(config.model.name)
    try:
        model = load_model(config.model.name, weights=config.model.weights, device=str(device))
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as exc:
        raise ExperimentError(f"cannot load model {config.model.name!r}: {one_line(exc)}") from exc
    data = config.data
    try:
        images, labels = load_samples(
            data.name,
            n=data.n,
            split=data.split,
            root=data.root,
            start=data.start,
            download=data.download,
        )
    except (FileNotFoundError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ExperimentError(f"cannot load data set {data.name!r}: {one_line(exc)}") from exc
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if len(x) != data.n or len(y) != data.n:
        raise ExperimentError(
            f"data set {data.name!r} gave {len(x)} samples, the config asks for data.n={data.n}"
        )
    expected = tuple(spec.input_shape)
    if tuple(x.shape[1:]) != expected:
        raise ExperimentError(
            f"data set {data.name!r} gives images of shape {tuple(x.shape[1:])}, "
            f"model {config.model.name!r} expects {expected}"
        )
    lo, hi = (float(b) for b in spec.bounds)
    if (lo, hi) != (0.0, 1.0):
        x = lo + x * (hi - lo)
    model.eval()
    return model, (lo, hi), x.to(device), y.to(device)


def certified_lipschitz(
    config: ExperimentConfig, model: nn.Module, input_shape: tuple[int, ...]
) -> float | None:
    """The Lipschitz bound of a certified model (``ModelSpec.certified``), else ``None``.

    Raises ExperimentError when the model is registered as certified but its layers have
    no exact norm (e.g. a ``model.weights`` file of another architecture)."""
    if not model_spec(config.model.name).certified:
        return None
    try:
        return float(lipschitz_bound(model, input_shape))
    except TypeError as exc:
        raise ExperimentError(
            f"model {config.model.name!r} is registered as certified but its Lipschitz "
            f"bound cannot be computed: {one_line(exc)}"
        ) from exc
