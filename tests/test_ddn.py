"""Clipping-aware DDN (L2): the minimization contract, the exact rescale, foolbox's DDN as
the reference for ``rescaling="naive"``, and soundness against a certified net."""

from __future__ import annotations

import math

import eagerpy as ep
import foolbox as fb
import pytest
import torch
from attack_fixtures import cifar_batch, small_convnet
from minimization_fixtures import (
    Recording,
    assert_best_of_iterates,
    assert_results_in_bounds_and_honest,
    fashion,
    median_found_norm,
)

from car_attacks.attacks import L2ClippingAwareDDN, Rescaling
from car_attacks.lipschitz import certified_radii, check_soundness

STEPS = 20


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.0, 255.0)])
def test_in_bounds_and_success_agrees_with_model(bounds: tuple[float, float]) -> None:
    fmodel = small_convnet(bounds)
    x, y = cifar_batch(fmodel, 4)
    scale = bounds[1] - bounds[0]
    attack = L2ClippingAwareDDN(steps=STEPS, init_epsilon=scale)
    epsilons = [0.1 * scale, 2.0 * scale, None]
    results = attack(fmodel, x, y, epsilons=epsilons)
    assert_results_in_bounds_and_honest(fmodel, x, y, results, epsilons, bounds=bounds, p=2.0)


@pytest.mark.parametrize("rescaling", ["car", "naive"])
def test_returns_best_iterate_and_leaves_parameters_alone(rescaling: Rescaling) -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    recording = Recording(fmodel.module).eval()  # type: ignore[attr-defined]
    adv = L2ClippingAwareDDN(steps=STEPS, rescaling=rescaling).run(
        fb.PyTorchModel(recording, bounds=(0, 1)), x, y
    )
    assert_best_of_iterates(recording, x, y, adv, 2.0)
    assert all(prm.grad is None for prm in recording.parameters())


def test_car_iterates_have_norm_eps() -> None:
    """Each car iterate after the first has L2 distance eps_k from x: eps_k is a power
    product ``init (1 - gamma)^a (1 + gamma)^b`` with ``a + b = k``; naive falls short."""
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    gamma, init = 0.05, 0.5
    cases: list[tuple[Rescaling, bool]] = [("car", True), ("naive", False)]
    for rescaling, exact in cases:
        recording = Recording(fmodel.module).eval()  # type: ignore[attr-defined]
        L2ClippingAwareDDN(steps=6, init_epsilon=init, gamma=gamma, rescaling=rescaling).run(
            fb.PyTorchModel(recording, bounds=(0, 1)), x, y
        )
        for k, batch in enumerate(recording.seen[1:6], start=1):
            norms = (batch - x).flatten(1).norm(dim=1).double()
            grid = torch.tensor(
                [init * (1 - gamma) ** a * (1 + gamma) ** (k - a) for a in range(k + 1)],
                dtype=torch.float64,
            )
            gap = (norms[:, None] / grid[None, :] - 1).abs().min(dim=1).values
            assert torch.all(gap < 1e-4) if exact else torch.any(gap > 1e-3)


def test_scale_equivariant_bounds() -> None:
    """In (0, 255) with 255 times the initial norm DDN's first steps are the (0, 1) ones
    times 255 (its step-size schedule is absolute, so only the eps-driven part scales)."""
    unit, wide = small_convnet((0.0, 1.0)), small_convnet((0.0, 255.0))
    x, y = cifar_batch(unit, 4)
    adv = L2ClippingAwareDDN(steps=STEPS).run(unit, x, y)
    adv_wide = L2ClippingAwareDDN(steps=STEPS, init_epsilon=255.0).run(wide, x * 255, y)
    assert adv_wide.min() >= 0 and adv_wide.max() <= 255
    with torch.no_grad():
        assert torch.all(wide(adv_wide).argmax(-1) != y)
        assert torch.all(unit(adv).argmax(-1) != y)


def test_per_sample_independent_and_deterministic() -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    attack = L2ClippingAwareDDN(steps=STEPS, seed=5)
    full = attack.run(fmodel, x, y)
    assert torch.equal(full, attack.run(fmodel, x, y))
    order = torch.tensor([3, 0, 2])
    assert torch.allclose(attack.run(fmodel, x[order], y[order]), full[order], atol=1e-5)


def test_zero_gradients_get_seeded_noise() -> None:
    """Zero gradients become unit Gaussian noise, one stream per sample and step."""
    x = ep.astensor(torch.rand(3, 1, 4, 4))
    zero = ep.zeros_like(x)
    attack = L2ClippingAwareDDN(seed=0)
    unit = attack.unit_gradient(zero, x, 0).raw
    assert torch.allclose(unit.flatten(1).norm(dim=1), torch.ones(3))
    assert not torch.equal(unit[0], unit[1])
    assert torch.equal(unit, attack.unit_gradient(zero, x, 0).raw)
    assert torch.equal(unit[1:], attack.unit_gradient(zero[1:], x[1:], 0).raw)
    assert not torch.equal(unit, attack.unit_gradient(zero, x, 1).raw)
    g = ep.astensor(torch.randn(3, 1, 4, 4))
    expected = g.raw / g.raw.flatten(1).norm(dim=1)[:, None, None, None]
    assert torch.allclose(attack.unit_gradient(g, x, 0).raw, expected)


def test_targeted() -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    target = (y + 1) % 10
    adv = L2ClippingAwareDDN(steps=50).run(fmodel, x, fb.criteria.TargetedMisclassification(target))
    with torch.no_grad():
        assert torch.equal(fmodel(adv).argmax(-1), target)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"init_epsilon": 0.0}, "init_epsilon"),
        ({"gamma": 0.0}, "gamma"),
        ({"rescaling": "exact"}, "rescaling"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        L2ClippingAwareDDN(**kwargs)  # type: ignore[arg-type]


def test_naive_is_foolbox() -> None:
    """``rescaling="naive"`` is foolbox's DDN arithmetic, step for step."""
    _, fmodel, x, y = fashion("fashion_mnist_cnn_pgd")
    adv = L2ClippingAwareDDN(steps=STEPS, rescaling="naive").run(fmodel, x, y)
    reference = fb.attacks.DDNAttack(steps=STEPS).run(fmodel, x, y)
    assert torch.allclose(adv, reference, atol=1e-6)


def test_car_no_worse_than_naive() -> None:
    """On the adversarially trained Fashion-MNIST CNN and foolbox's 20 images, at foolbox's
    100 steps: car's median found norm <= naive's (= foolbox's) up to 0.1%."""
    _, fmodel, x, y = fashion("fashion_mnist_cnn_pgd")
    car = median_found_norm(fmodel, x, y, L2ClippingAwareDDN().run(fmodel, x, y), 2.0)
    naive = median_found_norm(
        fmodel, x, y, L2ClippingAwareDDN(rescaling="naive").run(fmodel, x, y), 2.0
    )
    assert math.isfinite(car) and car <= 1.001 * naive


def test_sound_on_certified_net() -> None:
    net, fmodel, x, y = fashion("fashion_mnist_bcop")
    adv = L2ClippingAwareDDN(steps=STEPS).run(fmodel, x, y)
    radii = certified_radii(net, x)
    assert not check_soundness(net, x, y, adv, radii).any()
    assert (fmodel(adv).argmax(-1) != y).any()
