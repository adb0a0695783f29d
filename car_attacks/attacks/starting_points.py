"""Adversarial starting points for decision-based (minimization) attacks.

Boundary Attack and HopSkipJump start from a point the model already misclassifies.
:func:`nearest_other_class` picks, per sample, the closest (L2) input of a pool whose
prediction differs from the sample's label; :func:`blend_to_boundary` then moves that
start towards the sample by a per-sample binary search on ``x + t (start - x)``, so it
lies just on the adversarial side of the decision boundary. Both are deterministic and
treat every sample independently.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["batch_blend_starting_points", "blend_to_boundary", "nearest_other_class"]


def nearest_other_class(
    model: nn.Module, x: Tensor, y: Tensor, pool: Tensor | None = None
) -> Tensor:
    """For each sample the closest (L2) input of ``pool`` (default: the batch itself) that
    the model does not assign to the sample's label. Raises ``ValueError`` when a sample
    has none."""
    pool = x if pool is None else pool
    with torch.no_grad():
        pool_pred = model(pool).argmax(dim=1)
    dist = torch.cdist(x.flatten(1).double(), pool.flatten(1).double())
    dist = torch.where(pool_pred[None, :] != y[:, None], dist, torch.inf)
    nearest = dist.argmin(dim=1)
    if bool(torch.isinf(dist.gather(1, nearest[:, None])).any()):
        raise ValueError("some samples have no input of another predicted class in the pool")
    return pool[nearest].clone()


def blend_to_boundary(
    model: nn.Module, x: Tensor, y: Tensor, start: Tensor, *, steps: int = 10
) -> Tensor:
    """``x + t (start - x)`` with the smallest ``t`` in ``(0, 1]`` that a binary search of
    ``steps`` forward passes finds adversarial (``start`` itself must be adversarial)."""
    lo = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    shape = (-1,) + (1,) * (x.ndim - 1)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            adversarial = model(x + mid.view(shape) * (start - x)).argmax(dim=1) != y
            hi = torch.where(adversarial, mid, hi)
            lo = torch.where(adversarial, lo, mid)
    return x + hi.view(shape) * (start - x)


def batch_blend_starting_points(
    model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 10
) -> Tensor:
    """The nearest input of the batch of another predicted class, blended to the boundary
    (:func:`nearest_other_class`, then :func:`blend_to_boundary`); ``steps + 2`` forward
    passes of the batch. Misclassified samples start at themselves."""
    return blend_to_boundary(model, x, y, nearest_other_class(model, x, y), steps=steps)
