"""Tests of the frame the attack families share (``car_attacks.attacks.base``, ``norms``,
``first_success``): the same argument checks in every family, the keep-first-success
tracker, and boxes other than (0, 1)."""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import pytest
import torch
from attack_fixtures import cifar_batch, small_convnet

from car_attacks.attacks import (
    ClippingAwareBoundaryAttack,
    ClippingAwareHopSkipJump,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    L2ClippingAwarePGD,
    L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    LinfClippingAwarePGD,
)
from car_attacks.attacks.base import AttackCall, check_epsilon
from car_attacks.attacks.first_success import FirstSuccess
from car_attacks.attacks.norms import L1, L2, LINF, norm_named

ONE_PER_FAMILY: list[Any] = [
    L2ClippingAwarePGD,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    ClippingAwareBoundaryAttack,
    ClippingAwareHopSkipJump,
]
FIXED_EPSILON: list[Any] = [L2ClippingAwarePGD, L2ClippingAwareAdditiveGaussianNoiseAttack]


@pytest.mark.parametrize("cls", ONE_PER_FAMILY, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [-1, True, 1.5, "0"])
def test_every_family_checks_the_seed_the_same_way(cls: Any, seed: Any) -> None:
    with pytest.raises(ValueError, match=f"^seed must be None or an int >= 0, got seed={seed!r}$"):
        cls(seed=seed)


@pytest.mark.parametrize("cls", ONE_PER_FAMILY, ids=lambda c: c.__name__)
def test_every_family_checks_the_rescaling_the_same_way(cls: Any) -> None:
    with pytest.raises(ValueError, match="^rescaling must be one of .*, got rescaling='exact'$"):
        cls(rescaling="exact")
    assert cls(seed=3).seed == 3 and cls(seed=None).seed is None


@pytest.mark.parametrize("cls", FIXED_EPSILON, ids=lambda c: c.__name__)
@pytest.mark.parametrize("epsilon", [-1.0, -1e-9, math.nan])
def test_every_fixed_epsilon_family_checks_epsilon_the_same_way(cls: Any, epsilon: float) -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 2)
    with pytest.raises(ValueError, match=f"^epsilon must be >= 0, got epsilon={epsilon!r}$"):
        cls().run(model, x, y, epsilon=epsilon)


def test_epsilon_check_accepts_zero_finite_and_inf() -> None:
    assert check_epsilon(0) == 0.0 and check_epsilon(2.5) == 2.5
    assert check_epsilon(math.inf) == math.inf


def _tracked(candidates: list[torch.Tensor], successes: list[torch.Tensor]) -> FirstSuccess:
    first = FirstSuccess.starting_at(ep.astensor(torch.zeros_like(candidates[0])))
    for candidate, is_adv in zip(candidates, successes, strict=True):
        first.update(ep.astensor(candidate), ep.astensor(is_adv))
    return first


def test_first_success_keeps_the_first_adversarial_of_each_sample() -> None:
    candidates = [torch.full((3, 2), float(k)) for k in (1, 2, 3)]
    successes = [torch.tensor(s) for s in ([False, True, False], [True, True, False])]
    successes.append(torch.tensor([True, False, False]))
    first = _tracked(candidates, successes)
    assert first.best.raw[:, 0].tolist() == [2.0, 1.0, 0.0]
    assert first.found.raw.tolist() == [True, True, False]
    fallback = ep.astensor(torch.full((3, 2), -1.0))
    assert first.or_else(fallback).raw[:, 0].tolist() == [2.0, 1.0, -1.0]
    assert not first.all_found()


def test_first_success_of_a_sample_does_not_depend_on_the_batch() -> None:
    candidates = [torch.arange(8.0).reshape(4, 2) + 10 * k for k in range(3)]
    successes = [torch.rand(4, generator=torch.Generator().manual_seed(k)) > 0.5 for k in range(3)]
    batch = _tracked(candidates, successes)
    for i in range(4):
        alone = _tracked([c[i : i + 1] for c in candidates], [s[i : i + 1] for s in successes])
        assert torch.equal(alone.best.raw[0], batch.best.raw[i])
        assert torch.equal(alone.found.raw[0], batch.found.raw[i])


def test_norms_know_their_order_distance_and_names() -> None:
    assert [n.p for n in (L1, L2, LINF)] == [1.0, 2.0, math.inf]
    assert all(n.distance.p == n.p for n in (L1, L2, LINF))
    assert norm_named("linf") is LINF
    with pytest.raises(ValueError, match="constraint must be 'l2' or 'linf', got constraint='l1'"):
        norm_named("l1", (L2, LINF))
    assert ClippingAwareHopSkipJump(constraint="linf").distance.p == math.inf
    assert LinfClippingAwarePGD().p == math.inf


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (0.0, 255.0)])
def test_frame_uses_the_models_box(bounds: tuple[float, float]) -> None:
    model = small_convnet(bounds)
    x, y = cifar_batch(model, 4)
    call = AttackCall.checked(model, x, y, {})
    assert call.bounds == bounds and isinstance(call.bounds[0], float)
    lo, hi = bounds
    eps = 0.5 * (hi - lo)
    for attack in (
        L2ClippingAwarePGD(steps=3, seed=0),
        L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(repeats=3, seed=0),
    ):
        raw, clipped, _ = attack(model, x, y, epsilons=eps)
        assert raw.min() >= lo and raw.max() <= hi
        assert ((raw - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    advs = ClippingAwareBoundaryAttack(steps=5, seed=0).run(model, x, y)
    assert advs.min() >= lo and advs.max() <= hi
    assert (model(advs).argmax(-1) != y).all()
