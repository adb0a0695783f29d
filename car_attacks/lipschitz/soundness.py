"""Soundness of attack results against certified radii: no attack may beat a certificate.

A Lipschitz network certifies per sample that no perturbation with ``||delta||_2 < r``
changes its prediction, ``r = margin / (sqrt(2) L)`` (:func:`certified_radius`). An attack
result ``clipped`` whose prediction differs from the prediction at ``x`` while
``||clipped - x||_2 < r`` contradicts the certificate: either the certificate (the
Lipschitz bound) or the attack's bookkeeping of its perturbation size is wrong.
:func:`check_soundness` flags exactly those samples, up to a float tolerance.

For a correctly classified sample a prediction change is the same as an adversarial
example (``pred(clipped) != y``). For a misclassified sample the certificate protects the
wrong class; a result there is a violation only if its prediction differs from ``pred(x)``.

>>> radii = certified_radii(model, x)                 # margin / (sqrt(2) L)
>>> raw, clipped, success = attack(fmodel, x, y, epsilons=1.0)
>>> assert not check_soundness(model, x, y, clipped, radii).any()

:func:`soundness_column` gives the same flags as a JSON-able per-sample list (a column
of a results table).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import eagerpy as ep
import torch
from torch import Tensor, nn

from car_attacks.lipschitz.certify import certified_radius, lipschitz_bound

__all__ = [
    "ATOL",
    "RTOL",
    "SoundnessOptions",
    "SoundnessResult",
    "certified_radii",
    "check_soundness",
    "soundness_column",
    "soundness_details",
]

RTOL = 1e-5
"""Relative tolerance on the radius: a distance counts as inside if ``< r (1 - RTOL) - ATOL``."""
ATOL = 1e-6
"""Absolute tolerance on the radius, in input units (float32 rounding of the logits)."""


@dataclass(frozen=True)
class SoundnessResult:
    """Per-sample results of :func:`soundness_details` (all tensors of shape ``(N,)``)."""

    distances: Tensor
    """``||clipped - x||_2`` (float64)."""
    radii: Tensor
    """The certified radii that were checked (float64)."""
    predictions: Tensor
    """``argmax model(x)``."""
    result_predictions: Tensor
    """``argmax model(clipped)``."""
    adversarial: Tensor
    """``pred(clipped) != y``: the attack's notion of success (misclassification)."""
    changed: Tensor
    """``pred(clipped) != pred(x)``: the prediction the certificate protects changed."""
    inside: Tensor
    """``distance < radius (1 - rtol) - atol``: strictly inside the certified ball."""
    violations: Tensor
    """``changed & inside``: the certificate is contradicted."""

    @property
    def count(self) -> int:
        """Number of violating samples."""
        return int(self.violations.sum())

    def worst_ratio(self) -> float:
        """Smallest ``distance / radius`` over samples whose prediction changed (``inf`` if
        none changed): below 1 means a violation (up to the tolerance)."""
        mask = self.changed & (self.radii > 0)
        if not bool(mask.any()):
            return math.inf
        return float((self.distances[mask] / self.radii[mask]).min())


def _as_torch(value: Any, like: Tensor | None = None) -> Tensor:
    """``value`` (PyTorch, EagerPy, NumPy or a list) as a PyTorch tensor on ``like``'s device."""
    raw = value.raw if isinstance(value, ep.Tensor) else value
    t = raw if isinstance(raw, Tensor) else torch.as_tensor(raw)
    return t if like is None else t.to(like.device)


def _in_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int | None) -> Tensor:
    """``fn(x)``, evaluated on slices of ``batch_size`` samples (all at once if ``None``)."""
    if batch_size is None or len(x) <= batch_size:
        return fn(x)
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int | None) -> Tensor:
    return _in_batches(lambda chunk: model(chunk).argmax(dim=1), x, batch_size)


def certified_radii(
    model: nn.Module, x: Any, *, lipschitz: float | None = None, batch_size: int | None = None
) -> Tensor:
    """Certified L2 radii ``margin / (sqrt(2) L)`` of the predicted classes, shape ``(N,)``
    (:func:`car_attacks.lipschitz.certified_radius`; ``L`` defaults to the exact product of
    the layer norms, :func:`car_attacks.lipschitz.lipschitz_bound`)."""
    xt = _as_torch(x)
    bound = lipschitz_bound(model, xt.shape[1:]) if lipschitz is None else lipschitz
    return _in_batches(lambda chunk: certified_radius(model, chunk, bound), xt, batch_size)


def soundness_details(
    model: nn.Module,
    x: Any,
    y: Any,
    clipped: Any,
    radii: Any,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    batch_size: int | None = None,
    predictions: Any = None,
) -> SoundnessResult:
    """Distances, predictions and violation flags of attack results against radii.

    Args:
        model: the certified classifier (a module mapping ``x`` to logits).
        x: original inputs ``(N, ...)`` (PyTorch, NumPy or EagerPy).
        y: labels ``(N,)``.
        clipped: attack results ``(N, ...)`` (foolbox's ``clipped``).
        radii: certified L2 radii ``(N,)`` (e.g. :func:`certified_radii`).
        rtol, atol: a distance counts as inside the certified ball when it is
            ``< radius (1 - rtol) - atol``.
        batch_size: evaluate the model in batches of this size.
        predictions: ``argmax model(x)`` if the caller has it (saves a forward pass).
    """
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol!r}, atol={atol!r}")
    xt = _as_torch(x)
    ct = _as_torch(clipped, xt)
    yt = _as_torch(y, xt).long().reshape(-1)
    rt = _as_torch(radii, xt).detach().double().reshape(-1)
    n = len(xt)
    if tuple(ct.shape) != tuple(xt.shape):
        raise ValueError(f"clipped has shape {tuple(ct.shape)}, x has {tuple(xt.shape)}")
    if len(yt) != n or len(rt) != n:
        raise ValueError(
            f"need one label and one radius per sample ({n}), got {len(yt)}, {len(rt)}"
        )
    distances = (ct.detach().double() - xt.detach().double()).reshape(n, -1).norm(dim=1)
    if predictions is None:
        pred = _predict(model, xt, batch_size)
    else:
        pred = _as_torch(predictions, xt).long().reshape(-1)
        if len(pred) != n:
            raise ValueError(f"need one prediction per sample ({n}), got {len(pred)}")
    pred_adv = _predict(model, ct.to(xt.dtype), batch_size)
    changed = pred_adv != pred
    inside = distances < rt * (1.0 - rtol) - atol
    return SoundnessResult(
        distances=distances,
        radii=rt,
        predictions=pred,
        result_predictions=pred_adv,
        adversarial=pred_adv != yt,
        changed=changed,
        inside=inside,
        violations=changed & inside,
    )


class SoundnessOptions(TypedDict, total=False):
    """Keyword options shared by :func:`soundness_details`, :func:`check_soundness` and
    :func:`soundness_column` (see :func:`soundness_details`)."""

    rtol: float
    atol: float
    batch_size: int | None
    predictions: Any


def check_soundness(
    model: nn.Module,
    x: Any,
    y: Any,
    clipped: Any,
    radii: Any,
    **options: Unpack[SoundnessOptions],
) -> Tensor:
    """Per-sample booleans ``(N,)``: the attack result ``clipped`` changes the prediction at
    ``x`` although ``||clipped - x||_2`` is below the certified radius (up to ``rtol`` /
    ``atol``). All ``False`` for a sound attack and a sound certificate.

    See :func:`soundness_details` for the arguments and the distances behind the flags.
    """
    return soundness_details(model, x, y, clipped, radii, **options).violations


def soundness_column(
    model: nn.Module,
    x: Any,
    y: Any,
    clipped: Any,
    radii: Any,
    **options: Unpack[SoundnessOptions],
) -> list[bool]:
    """:func:`check_soundness` as a plain list (one JSON-able flag per sample)."""
    return [bool(v) for v in check_soundness(model, x, y, clipped, radii, **options).tolist()]
