"""Helpers shared by the FMN and DDN tests: the shipped Fashion-MNIST models on foolbox's 20
Fashion-MNIST images, a model that records every input it is asked about, found norms."""

from __future__ import annotations

import functools
import math
from typing import Any

import foolbox as fb
import torch
from torch import nn

from car_attacks.data import load_samples
from car_attacks.models import load_model


@functools.cache
def fashion(model: str) -> tuple[nn.Module, fb.PyTorchModel, torch.Tensor, torch.Tensor]:
    """A shipped Fashion-MNIST net, as a foolbox model (bounds (0, 1)), and the images it
    classifies correctly among foolbox's 20 Fashion-MNIST samples."""
    net = load_model(model)
    fmodel = fb.PyTorchModel(net, bounds=(0.0, 1.0))
    x, y = load_samples("foolbox_fashion_mnist", n=20)
    with torch.no_grad():
        correct = net(x).argmax(-1) == y
    return net, fmodel, x[correct], y[correct]


class Recording(nn.Module):
    """``net`` that keeps a copy of every batch it is called on (the attack's iterates)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def found_norms(
    fmodel: fb.PyTorchModel, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, p: float
) -> torch.Tensor:
    """``||adv - x||_p`` where ``adv`` is misclassified, inf where it is not."""
    with torch.no_grad():
        success = fmodel(adv).argmax(-1) != y
    norms = (adv - x).flatten(1).norm(p=p, dim=1)
    return torch.where(success, norms, torch.full_like(norms, math.inf))


def median_found_norm(
    fmodel: fb.PyTorchModel, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, p: float
) -> float:
    """The median of :func:`found_norms` (failures count as infinite)."""
    return float(found_norms(fmodel, x, y, adv, p).median())


def assert_best_of_iterates(
    recording: Recording, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, p: float
) -> None:
    """Every adversarial iterate the attack evaluated is at least as far from ``x`` as the
    returned point; the returned point is adversarial where any iterate was."""
    with torch.no_grad():
        best = (adv - x).flatten(1).norm(p=p, dim=1)
        found = recording.net(adv).argmax(-1) != y
        any_adv = torch.zeros_like(found)
        for batch in recording.seen:
            if batch.shape != x.shape:
                continue
            is_adv = recording.net(batch).argmax(-1) != y
            norms = (batch - x).flatten(1).norm(p=p, dim=1)
            assert torch.all(norms[is_adv] >= best[is_adv] * (1 - 1e-6))
            any_adv |= is_adv
    assert torch.equal(found, any_adv)


def assert_results_in_bounds_and_honest(
    fmodel: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    attack_results: tuple[Any, Any, Any],
    epsilons: list[float | None],
    *,
    bounds: tuple[float, float],
    p: float,
) -> None:
    """Every clipped result is in bounds, its success flag is the model's verdict, and with
    an eps it lies within the eps ball; the unbounded (``None``) result fools every sample."""
    _, clipped, success = attack_results
    for adv, ok, eps in zip(clipped, success, epsilons, strict=True):
        assert adv.min() >= bounds[0] and adv.max() <= bounds[1]
        with torch.no_grad():
            assert torch.equal(ok, fmodel(adv).argmax(-1) != y)
        if eps is not None:
            assert torch.all((adv - x).flatten(1).norm(p=p, dim=1) <= eps * (1 + 1e-4))
    assert success[-1].all()
