"""Clipping-aware FMN (L1, L2, L-inf): the minimization contract, CAR placement, foolbox's
FMN as the reference for ``rescaling="naive"``, and soundness against a certified net."""

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
    found_norms,
    median_found_norm,
)

import car_attacks.attacks as ca
from car_attacks.attacks import Rescaling
from car_attacks.attacks.fmn import dual_exponent, l1_ball_projection
from car_attacks.lipschitz import certified_radii, check_soundness

FMNS = {
    1.0: (ca.L1ClippingAwareFMN, fb.attacks.L1FMNAttack),
    2.0: (ca.L2ClippingAwareFMN, fb.attacks.L2FMNAttack),
    math.inf: (ca.LinfClippingAwareFMN, fb.attacks.LInfFMNAttack),
}
NORMS = list(FMNS)
STEPS = 20


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.0, 255.0)])
def test_in_bounds_and_success_agrees_with_model(p: float, bounds: tuple[float, float]) -> None:
    fmodel = small_convnet(bounds)
    x, y = cifar_batch(fmodel, 4)
    scale = bounds[1] - bounds[0]
    attack = FMNS[p][0](steps=STEPS, max_stepsize=scale)
    epsilons = [0.01 * scale, 0.1 * scale, None]
    results = attack(fmodel, x, y, epsilons=epsilons)
    # an untargeted FMN beats this small net everywhere
    assert_results_in_bounds_and_honest(fmodel, x, y, results, epsilons, bounds=bounds, p=p)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("rescaling", ["car", "naive"])
def test_returns_best_iterate_and_leaves_parameters_alone(p: float, rescaling: Rescaling) -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    recording = Recording(fmodel.module).eval()  # type: ignore[attr-defined]
    attack = FMNS[p][0](steps=STEPS, rescaling=rescaling)
    adv = attack.run(fb.PyTorchModel(recording, bounds=(0, 1)), x, y)
    assert_best_of_iterates(recording, x, y, adv, p)
    assert all(prm.grad is None for prm in recording.parameters())


@pytest.mark.parametrize("p", NORMS)
def test_scale_equivariant_bounds(p: float) -> None:
    """Bounds (0, 255) with a 255 times larger step give 255 times the (0, 1) result."""
    unit, wide = small_convnet((0.0, 1.0)), small_convnet((0.0, 255.0))
    x, y = cifar_batch(unit, 4)
    adv = FMNS[p][0](steps=STEPS).run(unit, x, y)
    adv_wide = FMNS[p][0](steps=STEPS, max_stepsize=255.0).run(wide, x * 255, y)
    assert torch.allclose(adv_wide / 255, adv, atol=1e-4)


@pytest.mark.parametrize("p", NORMS)
def test_per_sample_independent_and_deterministic(p: float) -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    attack = FMNS[p][0](steps=STEPS, seed=3)
    full = attack.run(fmodel, x, y)
    assert torch.equal(full, attack.run(fmodel, x, y))
    order = torch.tensor([3, 0, 2])
    part = attack.run(fmodel, x[order], y[order])
    assert torch.allclose(part, full[order], atol=1e-5)


def test_targeted() -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    target = (y + 1) % 10
    criterion = fb.criteria.TargetedMisclassification(target)
    adv = ca.L2ClippingAwareFMN(steps=50).run(fmodel, x, criterion)
    with torch.no_grad():
        assert torch.equal(fmodel(adv).argmax(-1), target)


def test_clipping_aware_step_has_exact_length() -> None:
    """The car step's clipped L2 length is alpha; the naive step's is shorter once clipped."""
    torch.manual_seed(0)
    x = ep.astensor(torch.rand(3, 1, 8, 8) * (torch.rand(3, 1, 8, 8) > 0.5))
    g = ep.astensor(torch.randn(3, 1, 8, 8))
    for p in NORMS:
        car = FMNS[p][0]().step(x, g, 0.5, (0.0, 1.0))
        naive = FMNS[p][0](rescaling="naive").step(x, g, 0.5, (0.0, 1.0))
        assert torch.allclose((car - x).raw.flatten(1).norm(dim=1), torch.tensor(0.5), rtol=1e-5)
        clipped = naive.raw.clamp(0, 1) - x.raw
        assert torch.all(clipped.flatten(1).norm(dim=1) < 0.5)


def test_l1_ball_projection_is_duchi() -> None:
    """Against a float64 oracle: bisection on the soft threshold."""
    torch.manual_seed(1)
    w = torch.randn(5, 40, dtype=torch.float64)
    eps = torch.tensor([0.5, 1.0, 3.0, 100.0, 0.0], dtype=torch.float64)
    got = l1_ball_projection(ep.astensor(w), ep.astensor(eps)).raw
    for row, e, out in zip(w, eps, got, strict=True):
        if row.abs().sum() <= e:
            assert torch.equal(out, row)
            continue
        lo, hi = 0.0, float(row.abs().max())
        for _ in range(200):
            lam = (lo + hi) / 2
            lo, hi = (lam, hi) if (row.abs() - lam).clamp(min=0).sum() > e else (lo, lam)
        expected = row.sign() * (row.abs() - hi).clamp(min=0)
        assert torch.allclose(out, expected, atol=1e-9)


def test_dual_exponent() -> None:
    assert dual_exponent(1.0) == math.inf
    assert dual_exponent(2.0) == 2.0
    assert dual_exponent(math.inf) == 1.0
    assert dual_exponent(4.0) == pytest.approx(4 / 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"max_stepsize": 0.0}, "max_stepsize"),
        ({"min_stepsize": 2.0}, "min_stepsize"),
        ({"gamma": 1.0}, "gamma"),
        ({"binary_search_steps": -1}, "binary_search_steps"),
        ({"init_attack": "pgd"}, "init_attack"),
        ({"rescaling": "exact"}, "rescaling"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ca.L2ClippingAwareFMN(**kwargs)  # type: ignore[arg-type]


def test_bad_call_arguments() -> None:
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 2)
    attack = ca.L2ClippingAwareFMN(steps=2)
    with pytest.raises(ValueError, match="labels"):
        attack.run(fmodel, x, y[:1])
    with pytest.raises(ValueError, match="starting_points"):
        attack.run(fmodel, x, y, starting_points=x)  # not adversarial
    with pytest.raises(ValueError, match="starting_points"):
        attack.run(fmodel, x, y, starting_points=x[:1])


@pytest.mark.parametrize("p", NORMS)
def test_starting_points_binary_search(p: float) -> None:
    """From adversarial starting points the result is adversarial and no farther."""
    fmodel = small_convnet()
    x, y = cifar_batch(fmodel, 4)
    starts = ca.L2ClippingAwareFMN(steps=STEPS).run(fmodel, x, y)
    with torch.no_grad():
        assert torch.all(fmodel(starts).argmax(-1) != y)
    adv = FMNS[p][0](steps=5).run(fmodel, x, y, starting_points=starts)
    norms = found_norms(fmodel, x, y, adv, p)
    assert torch.all(norms <= (starts - x).flatten(1).norm(p=p, dim=1) * (1 + 1e-6))


@pytest.mark.parametrize("p", [1.0, math.inf])
def test_naive_matches_foolbox(p: float) -> None:
    """L1 (Duchi projection, then clip) and L-inf: foolbox's arithmetic; only float
    rounding differs (the iterate is kept as a point here, as a perturbation there), which
    can flip a decision of a sample's trajectory: most samples agree to 1e-4, the median
    found norms to 1e-3."""
    _, fmodel, x, y = fashion("fashion_mnist_cnn_pgd")
    ours, theirs = FMNS[p]
    adv = ours(steps=STEPS, rescaling="naive").run(fmodel, x, y)
    reference = theirs(steps=STEPS).run(fmodel, x, y)
    agree = (adv - reference).flatten(1).abs().max(dim=1).values < 1e-4
    assert agree.float().mean() >= 0.8
    assert median_found_norm(fmodel, x, y, adv, p) == pytest.approx(
        median_found_norm(fmodel, x, y, reference, p), rel=1e-3
    )


def test_naive_l2_close_to_foolbox() -> None:
    """foolbox's L2 FMN never projects (its factor is ``norms / norms``); naive here
    projects onto the ball and clips. Stated tolerance: median found norm within 25%."""
    _, fmodel, x, y = fashion("fashion_mnist_cnn_pgd")
    naive = median_found_norm(
        fmodel, x, y, ca.L2ClippingAwareFMN(rescaling="naive").run(fmodel, x, y), 2.0
    )
    reference = median_found_norm(fmodel, x, y, fb.attacks.L2FMNAttack().run(fmodel, x, y), 2.0)
    assert math.isfinite(naive) and abs(naive - reference) <= 0.25 * reference


@pytest.mark.parametrize("p", NORMS)
def test_car_no_worse_than_naive_and_foolbox(p: float) -> None:
    """On the adversarially trained Fashion-MNIST CNN and foolbox's 20 images, at foolbox's
    100 steps: car's median found norm <= naive's and foolbox's (up to 0.5%: the L-inf
    projection is the same clip for both, only the step differs)."""
    _, fmodel, x, y = fashion("fashion_mnist_cnn_pgd")
    ours, theirs = FMNS[p]
    car = median_found_norm(fmodel, x, y, ours().run(fmodel, x, y), p)
    naive = median_found_norm(fmodel, x, y, ours(rescaling="naive").run(fmodel, x, y), p)
    reference = median_found_norm(fmodel, x, y, theirs().run(fmodel, x, y), p)
    assert car <= 1.005 * min(naive, reference)


@pytest.mark.parametrize("p", NORMS)
def test_sound_on_certified_net(p: float) -> None:
    """No adversarial found lies inside the certified L2 radius of the BCOP net."""
    net, fmodel, x, y = fashion("fashion_mnist_bcop")
    adv = FMNS[p][0](steps=STEPS).run(fmodel, x, y)
    radii = certified_radii(net, x)
    assert not check_soundness(net, x, y, adv, radii).any()
    assert (fmodel(adv).argmax(-1) != y).any()  # the check has adversarials to look at
