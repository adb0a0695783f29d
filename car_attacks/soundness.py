"""Soundness of attacks against certified radii: no attack may beat a certificate.

A Lipschitz network (:mod:`car_attacks.lipschitz`) certifies per sample that no
perturbation with ``||delta||_2 < r`` changes its prediction, ``r = margin / (sqrt(2) L)``.
An attack result ``clipped`` whose prediction differs from the prediction at ``x`` while
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
of a results table); :func:`l2_attack_suite` builds every L2 attack of the project
(PGD, noise, Boundary Attack, HopSkipJump; each with ``car``, ``bisection`` and
``naive`` rescaling) with small budgets, and :func:`attack_soundness` runs a suite and
checks each result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import torch
from torch import Tensor, nn

__all__ = [
    "ATOL",
    "RTOL",
    "AttackSoundness",
    "SoundnessOptions",
    "SoundnessResult",
    "attack_soundness",
    "certified_radii",
    "check_soundness",
    "l2_attack_suite",
    "other_class_starting_points",
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


def _as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    raw = getattr(value, "raw", value)  # EagerPy tensors
    t = raw if isinstance(raw, Tensor) else torch.as_tensor(raw)
    return t if like is None else t.to(like.device)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int | None) -> Tensor:
    if batch_size is None or len(x) <= batch_size:
        return model(x).argmax(dim=1)
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]
    )


def certified_radii(
    model: nn.Module, x: Any, *, lipschitz: float | None = None, batch_size: int | None = None
) -> Tensor:
    """Certified L2 radii ``margin / (sqrt(2) L)`` of the predicted classes, shape ``(N,)``
    (:func:`car_attacks.lipschitz.certified_radius`; ``L`` defaults to the exact product of
    the layer norms)."""
    from .lipschitz import certified_radius, lipschitz_bound

    xt = _as_tensor(x)
    if lipschitz is None:
        lipschitz = lipschitz_bound(model, xt.shape[1:])
    if batch_size is None or len(xt) <= batch_size:
        return certified_radius(model, xt, lipschitz)
    return torch.cat(
        [
            certified_radius(model, xt[i : i + batch_size], lipschitz)
            for i in range(0, len(xt), batch_size)
        ]
    )


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
    xt = _as_tensor(x)
    ct = _as_tensor(clipped, xt)
    yt = _as_tensor(y, xt).long().reshape(-1)
    rt = _as_tensor(radii, xt).detach().double().reshape(-1)
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
        pred = _as_tensor(predictions, xt).long().reshape(-1)
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


# --------------------------------------------------------------------------- attack suites


@dataclass(frozen=True)
class AttackSoundness:
    """One attack run checked against the certificate."""

    name: str
    epsilon: float | None
    """The fixed epsilon (``None`` for minimization attacks, checked unbounded)."""
    result: SoundnessResult


def l2_attack_suite(
    *,
    seed: int = 0,
    rescalings: Sequence[str] = ("car", "bisection", "naive"),
    pgd_steps: int = 10,
    noise_repeats: int = 5,
    boundary_steps: int = 200,
    hsj_steps: int = 5,
    hsj_gradient_evals: int = 20,
) -> dict[str, Any]:
    """Every L2 attack of the project, once per rescaling, with small budgets.

    Keys are ``"<attack>/<rescaling>"`` with attack ``pgd``, ``noise_gaussian``,
    ``noise_uniform``, ``noise_repeated``, ``boundary``, ``hop_skip_jump``. Values are
    foolbox-compatible attack instances (seeded, so runs are reproducible).
    """
    from .attacks import (
        L2ClippingAwareAdditiveGaussianNoiseAttack,
        L2ClippingAwareAdditiveUniformNoiseAttack,
        L2ClippingAwarePGD,
        L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    )
    from .attacks.boundary import ClippingAwareBoundaryAttack
    from .attacks.hop_skip_jump import ClippingAwareHopSkipJump
    from .attacks.rescale import check_rescaling

    suite: dict[str, Any] = {}
    for name in rescalings:
        r = check_rescaling(name)
        suite[f"pgd/{r}"] = L2ClippingAwarePGD(
            steps=pgd_steps, rel_stepsize=0.25, random_start=True, rescaling=r, seed=seed
        )
        suite[f"noise_gaussian/{r}"] = L2ClippingAwareAdditiveGaussianNoiseAttack(
            rescaling=r, seed=seed
        )
        suite[f"noise_uniform/{r}"] = L2ClippingAwareAdditiveUniformNoiseAttack(
            rescaling=r, seed=seed
        )
        suite[f"noise_repeated/{r}"] = L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(
            repeats=noise_repeats, rescaling=r, seed=seed
        )
        suite[f"boundary/{r}"] = ClippingAwareBoundaryAttack(
            steps=boundary_steps,
            spherical_step=0.05,
            source_step=0.05,
            update_stats_every_k=5,
            rescaling=r,
            seed=seed,
        )
        suite[f"hop_skip_jump/{r}"] = ClippingAwareHopSkipJump(
            steps=hsj_steps,
            initial_gradient_eval_steps=hsj_gradient_evals,
            max_gradient_eval_steps=4 * hsj_gradient_evals,
            constraint="l2",
            rescaling=r,
            seed=seed,
        )
    return suite


def other_class_starting_points(
    model: nn.Module, x: Tensor, y: Tensor, pool: Tensor | None = None
) -> Tensor:
    """Adversarial starting points for decision-based attacks: for each sample the
    closest (L2) input of ``pool`` (default: the batch itself) whose prediction is not
    the sample's label. Raises ``ValueError`` when a sample has none."""
    pool = x if pool is None else pool
    with torch.no_grad():
        pool_pred = model(pool).argmax(dim=1)
    d = torch.cdist(x.reshape(len(x), -1).double(), pool.reshape(len(pool), -1).double())
    d = torch.where(pool_pred[None, :] != y[:, None], d, torch.full_like(d, math.inf))
    best = d.argmin(dim=1)
    if bool(torch.isinf(d.gather(1, best[:, None])).any()):
        raise ValueError("some samples have no input of another predicted class in the pool")
    return pool[best].clone()


def attack_soundness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Any],
    *,
    epsilons: Sequence[float] = (0.5, 1.0, 2.0),
    radii: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    starting_points: Tensor | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[AttackSoundness]:
    """Run each attack on ``(x, y)`` and check every result against the radii.

    Fixed-epsilon attacks run at each of ``epsilons``; minimization attacks (foolbox's
    ``MinimizationAttack``: Boundary Attack, HopSkipJump) run once, unbounded, starting
    from ``starting_points`` (default: :func:`other_class_starting_points`).
    ``radii`` default to :func:`certified_radii`.
    """
    import foolbox as fb
    from foolbox.attacks.base import MinimizationAttack

    model.eval()
    if radii is None:
        radii = certified_radii(model, x)
    fmodel = fb.PyTorchModel(model, bounds=bounds)
    out: list[AttackSoundness] = []
    for name, attack in attacks.items():
        if isinstance(attack, MinimizationAttack):
            start = starting_points
            if start is None:
                start = other_class_starting_points(model, x, y)
            _, clipped, _ = attack(fmodel, x, y, epsilons=None, starting_points=start)
            found = soundness_details(model, x, y, clipped, radii, rtol=rtol, atol=atol)
            out.append(AttackSoundness(name, None, found))
            continue
        _, clipped_list, _ = attack(fmodel, x, y, epsilons=list(epsilons))
        for eps, clipped in zip(epsilons, clipped_list, strict=True):
            found = soundness_details(model, x, y, clipped, radii, rtol=rtol, atol=atol)
            out.append(AttackSoundness(name, float(eps), found))
    return out
