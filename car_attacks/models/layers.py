"""Preprocessing as model layers, so that models take inputs in their stated bounds."""

from __future__ import annotations

import torch
from torch import nn

from ..lipschitz.layers import Normalize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "Preprocessed"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Preprocessed(nn.Module):
    """A classifier with its input preprocessing as the first layer.

    ``state_dict()`` holds only the inner model's weights (under ``model.``): build the
    preprocessing with non-persistent buffers (e.g. :class:`Normalize`'s default).
    """

    def __init__(self, preprocess: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))
