"""Adversarial starting points for decision-based (minimization) attacks.

Boundary Attack and HopSkipJump start from a point the model already misclassifies.
:func:`nearest_other_class` picks, per sample, the closest (L2) input of a pool whose
prediction differs from the sample's label; :func:`blend_to_boundary` then moves that
start towards the sample by a per-sample binary search on ``x + t (start - x)``, so it
lies just on the adversarial side of the decision boundary. Both are deterministic and
treat every sample independently. :func:`blended_noise_init` is the attacks' own seeded
default (per-sample uniform noise, blended towards the sample).
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep
import numpy as np
import torch
from torch import Tensor, nn

from ..core.tensors import Bounds, batch_view, clip_to_bounds
from .first_success import FirstSuccess
from .sampling import draw

__all__ = [
    "INIT_STREAM",
    "IsAdversarial",
    "batch_blend_starting_points",
    "blend_to_boundary",
    "blended_noise_init",
    "nearest_other_class",
]

IsAdversarial = Callable[[ep.Tensor], ep.Tensor]
INIT_STREAM = 2**31
"""First random stream of the seeded initialisation (attack steps use streams below it)."""


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


def blended_noise_init(
    is_adversarial: IsAdversarial,
    originals: ep.Tensor,
    bounds: Bounds,
    *,
    seed: int,
    directions: int = 1000,
    steps: int = 50,
) -> ep.Tensor:
    """Per-sample seeded version of foolbox's ``LinearSearchBlendedUniformNoiseAttack``.

    Draws uniform noise in ``bounds`` until it is adversarial (stream ``INIT_STREAM + j``
    for the j-th draw), then returns the smallest blend ``(1 - e) x + e noise`` on a grid
    of ``steps + 1`` values that is adversarial. Samples without an adversarial draw
    are returned unchanged (the caller reports them).
    """
    lo, hi = bounds
    noise = FirstSuccess.starting_at(originals)
    for j in range(directions):
        u = draw(originals, "uniform", seed=seed, stream=INIT_STREAM + j)
        candidate = lo + (u + 1.0) * ((hi - lo) / 2.0)
        noise.update(candidate, is_adversarial(candidate))
        if noise.all_found():
            break
    best = ep.ones(originals, len(originals))
    for e in np.linspace(0, 1, num=steps + 1, dtype=np.float32):
        blend = (1 - e.item()) * originals + e.item() * noise.best
        best = ep.minimum(ep.where(is_adversarial(blend), e.item(), 1.0), best)
        if (best < 1).all().item():
            break
    best = batch_view(best, originals.ndim)
    blend = clip_to_bounds((1 - best) * originals + best * noise.best, lo, hi)  # rounding
    return ep.where(batch_view(noise.found, originals.ndim), blend, originals)
