"""Every L2 attack of the project run against a certified model and checked for soundness.

:func:`l2_attack_suite` builds the L2 attacks (PGD, three additive noises, Boundary Attack,
HopSkipJump; each once per rescaling of :data:`car_attacks.attacks.RESCALINGS`) with the
small budgets of a :class:`SuiteBudget`; :func:`attack_soundness` runs a suite and checks
each result against the certified radii (:func:`car_attacks.lipschitz.soundness_details`).

>>> found = attack_soundness(model, x, y, l2_attack_suite())
>>> assert all(run.result.count == 0 for run in found)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import foolbox as fb
from foolbox.attacks.base import Attack, MinimizationAttack
from torch import Tensor, nn

from car_attacks.attacks import (
    RESCALINGS,
    ClippingAwareBoundaryAttack,
    ClippingAwareHopSkipJump,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    L2ClippingAwareAdditiveUniformNoiseAttack,
    L2ClippingAwarePGD,
    L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
)
from car_attacks.attacks.base import check_rescaling
from car_attacks.attacks.starting_points import nearest_other_class
from car_attacks.core.tensors import UNIT_BOUNDS
from car_attacks.lipschitz.soundness import (
    ATOL,
    RTOL,
    SoundnessResult,
    certified_radii,
    soundness_details,
)

__all__ = ["AttackSoundness", "SuiteBudget", "attack_soundness", "l2_attack_suite"]


@dataclass(frozen=True, kw_only=True)
class SuiteBudget:
    """Iterations and step sizes of :func:`l2_attack_suite`: small, since the suite checks
    soundness (no result inside a certified ball), not strength."""

    pgd_steps: int = 10
    """PGD iterations."""
    pgd_rel_stepsize: float = 0.25
    """PGD step size relative to epsilon (after a random start)."""
    noise_repeats: int = 5
    """Draws of the repeated additive Gaussian noise attack."""
    boundary_steps: int = 200
    """Boundary Attack iterations."""
    boundary_step: float = 0.05
    """Initial spherical and source step of the Boundary Attack."""
    boundary_stats_every: int = 5
    """Boundary Attack: steps between step-size adaptations."""
    hsj_steps: int = 5
    """HopSkipJump iterations."""
    hsj_gradient_evals: int = 20
    """HopSkipJump's initial gradient-estimate queries per step; at most four times as many."""


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
    rescalings: Sequence[str] = RESCALINGS,
    budget: SuiteBudget = SuiteBudget(),
) -> dict[str, Attack]:
    """Every L2 attack of the project, once per rescaling, with the budgets of ``budget``.

    Keys are ``"<attack>/<rescaling>"`` with attack ``pgd``, ``noise_gaussian``,
    ``noise_uniform``, ``noise_repeated``, ``boundary``, ``hop_skip_jump``. Values are
    foolbox-compatible attack instances (seeded, so runs are reproducible).
    """
    b = budget
    suite: dict[str, Attack] = {}
    for name in rescalings:
        r = check_rescaling(name)
        suite[f"pgd/{r}"] = L2ClippingAwarePGD(
            steps=b.pgd_steps,
            rel_stepsize=b.pgd_rel_stepsize,
            random_start=True,
            rescaling=r,
            seed=seed,
        )
        suite[f"noise_gaussian/{r}"] = L2ClippingAwareAdditiveGaussianNoiseAttack(
            rescaling=r, seed=seed
        )
        suite[f"noise_uniform/{r}"] = L2ClippingAwareAdditiveUniformNoiseAttack(
            rescaling=r, seed=seed
        )
        suite[f"noise_repeated/{r}"] = L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(
            repeats=b.noise_repeats, rescaling=r, seed=seed
        )
        suite[f"boundary/{r}"] = ClippingAwareBoundaryAttack(
            steps=b.boundary_steps,
            spherical_step=b.boundary_step,
            source_step=b.boundary_step,
            update_stats_every_k=b.boundary_stats_every,
            rescaling=r,
            seed=seed,
        )
        suite[f"hop_skip_jump/{r}"] = ClippingAwareHopSkipJump(
            steps=b.hsj_steps,
            initial_gradient_eval_steps=b.hsj_gradient_evals,
            max_gradient_eval_steps=4 * b.hsj_gradient_evals,
            constraint="l2",
            rescaling=r,
            seed=seed,
        )
    return suite


def attack_soundness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Attack],
    *,
    epsilons: Sequence[float] = (0.5, 1.0, 2.0),
    radii: Tensor | None = None,
    bounds: tuple[float, float] = UNIT_BOUNDS,
    starting_points: Tensor | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[AttackSoundness]:
    """Run each attack on ``(x, y)`` and check every result against the radii.

    Fixed-epsilon attacks run at each of ``epsilons``; minimization attacks (foolbox's
    ``MinimizationAttack``: Boundary Attack, HopSkipJump) run once, unbounded, starting
    from ``starting_points`` (default: the nearest input of the batch of another class,
    :func:`car_attacks.attacks.starting_points.nearest_other_class`).
    ``radii`` default to :func:`car_attacks.lipschitz.certified_radii`.
    """
    model.eval()
    if radii is None:
        radii = certified_radii(model, x)
    fmodel = fb.PyTorchModel(model, bounds=bounds)
    out: list[AttackSoundness] = []
    for name, attack in attacks.items():
        if isinstance(attack, MinimizationAttack):
            start = nearest_other_class(model, x, y) if starting_points is None else starting_points
            _, clipped, _ = attack(fmodel, x, y, epsilons=None, starting_points=start)
            found = soundness_details(model, x, y, clipped, radii, rtol=rtol, atol=atol)
            out.append(AttackSoundness(name, None, found))
            continue
        _, clipped_list, _ = attack(fmodel, x, y, epsilons=list(epsilons))
        for eps, clipped in zip(epsilons, clipped_list, strict=True):
            found = soundness_details(model, x, y, clipped, radii, rtol=rtol, atol=atol)
            out.append(AttackSoundness(name, float(eps), found))
    return out
