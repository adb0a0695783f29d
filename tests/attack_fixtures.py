"""Small real models and data for attack tests (no downloads).

``small_convnet(bounds)`` is a tiny CNN (two conv layers) whose input
preprocessing maps ``bounds`` to [0, 1] inside the model, so attacks run in
input space with the given bounds. ``cifar_batch(bounds, n)`` returns
foolbox's shipped CIFAR-10 test images scaled to ``bounds``, with labels the
model predicts (so the clean accuracy is 100% and every attack has work).
"""

from __future__ import annotations

import foolbox as fb
import torch
from torch import nn


class _Scale(nn.Module):
    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lo) / (self.hi - self.lo)


def small_convnet(bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> fb.PyTorchModel:
    """A deterministic tiny CNN for 3x32x32 inputs with 10 classes, in eval mode.

    Weights are the default initialisation times 3, so its predictions vary
    across images and small perturbations can change them.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(
        _Scale(*bounds),
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    ).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                layer.weight.mul_(3.0)
    fmodel = fb.PyTorchModel(net, bounds=bounds)
    fmodel.module = net  # type: ignore[attr-defined]  # for tests that inspect the network
    return fmodel


def cifar_batch(fmodel: fb.PyTorchModel, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` of foolbox's CIFAR-10 samples in ``fmodel.bounds``, labelled by ``fmodel``."""
    images, _ = fb.utils.samples(fmodel, dataset="cifar10", batchsize=n, bounds=fmodel.bounds)
    with torch.no_grad():
        labels = fmodel(images).argmax(-1)
    return images, labels
