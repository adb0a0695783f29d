"""Clipping-aware gradient attacks: the foolbox contract, exact steps and projections,
equivalence with foolbox when naive, sample independence, and no side effects."""

from __future__ import annotations

import math

import eagerpy as ep
import foolbox as fb
import pytest
import torch
from attack_fixtures import cifar_batch, small_convnet

import car_attacks
from car_attacks.attacks import (
    L1ClippingAwareBasicIterativeAttack,
    L1ClippingAwareFastGradientAttack,
    L1ClippingAwarePGD,
    L2ClippingAwareBasicIterativeAttack,
    L2ClippingAwareFastGradientAttack,
    L2ClippingAwarePGD,
    LinfClippingAwareBasicIterativeAttack,
    LinfClippingAwareFastGradientAttack,
    LinfClippingAwarePGD,
)
from car_attacks.attacks.rescaled_steps import RescaledSteps, project_then_clip

CLASSES = [
    L1ClippingAwarePGD,
    L2ClippingAwarePGD,
    LinfClippingAwarePGD,
    L1ClippingAwareBasicIterativeAttack,
    L2ClippingAwareBasicIterativeAttack,
    LinfClippingAwareBasicIterativeAttack,
    L1ClippingAwareFastGradientAttack,
    L2ClippingAwareFastGradientAttack,
    LinfClippingAwareFastGradientAttack,
]
# epsilons for images in [0, 1]; scaled with the bounds
EPS = {1.0: [2.0, 12.0], 2.0: [0.25, 1.5], math.inf: [2 / 255, 16 / 255]}


def _norms(v: torch.Tensor, p: float) -> torch.Tensor:
    return v.flatten(1).norm(p=p, dim=1)


@pytest.fixture(scope="module", params=[(0.0, 1.0), (0.0, 255.0)], ids=["unit", "0-255"])
def setup(request: pytest.FixtureRequest) -> tuple[fb.PyTorchModel, torch.Tensor, torch.Tensor]:
    model = small_convnet(request.param)
    x, y = cifar_batch(model, 6)
    return model, x, y


@pytest.mark.parametrize("rescaling", ["car", "bisection", "naive"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_foolbox_contract(
    setup: tuple[fb.PyTorchModel, torch.Tensor, torch.Tensor], cls: type, rescaling: str
) -> None:
    model, x, y = setup
    lo, hi = model.bounds
    epsilons = [e * (hi - lo) for e in EPS[cls.norm.p]]
    attack = cls(rescaling=rescaling, steps=min(cls.default_steps, 3), seed=0)
    raw, clipped, success = attack(model, x, y, epsilons=epsilons)
    assert len(raw) == len(clipped) == len(epsilons) and success.shape == (len(epsilons), len(x))
    for eps, r, c, s in zip(epsilons, raw, clipped, success, strict=True):
        assert isinstance(r, torch.Tensor) and r.shape == x.shape
        assert r.min() >= lo and r.max() <= hi
        # float32 rounding of x + delta costs up to half an ulp per coordinate
        rounding = x[0].numel() * 2**-24 * (hi - lo)
        assert (_norms(r - x, cls.norm.p) <= eps * (1 + 1e-5) + rounding).all()
        assert (_norms(c - x, cls.norm.p) <= eps * (1 + 1e-6) + rounding).all()
        predicted = model(c).argmax(-1)
        assert torch.equal(s, predicted != y)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("rescaling", ["car", "bisection"])
def test_step_survives_clipping_with_the_requested_norm(p: float, rescaling: str) -> None:
    attack = {1.0: L1ClippingAwarePGD, 2.0: L2ClippingAwarePGD, math.inf: LinfClippingAwarePGD}[p](
        rescaling=rescaling
    )
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8)
    x[x > 0.8] = 1.0  # saturated pixels, as in real images
    g = torch.randn_like(x)
    size = torch.tensor([0.05, 0.5, 1.0, 2.0, 3.0]) * (0.1 if p == math.inf else 1.0)
    bounds = (0.0, 1.0)
    d = attack.direction(ep.astensor(g), x=ep.astensor(x), bounds=bounds)
    stepped = attack.step(ep.astensor(x), d, ep.astensor(size), bounds).raw
    reach = car_attacks.reachable_norm(x, d.raw, p=p)
    expected = torch.minimum(size, reach)
    tol = 1e-5 if rescaling == "car" else 1e-5
    torch.testing.assert_close(_norms(stepped - x, p), expected, rtol=tol, atol=1e-6)
    naive_steps = RescaledSteps(p=p, bounds=bounds, rescaling="naive")
    naive = naive_steps.clipped_step(ep.astensor(x), d, ep.astensor(size)).raw
    if p == 2:  # naive steps fall short once clipping bites
        assert (_norms(naive - x, p) < expected * (1 - 1e-3)).any()


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_exact_projection_is_never_farther_than_project_then_clip(p: float) -> None:
    attack = {1.0: L1ClippingAwarePGD, 2.0: L2ClippingAwarePGD, math.inf: LinfClippingAwarePGD}[p]()
    torch.manual_seed(1)
    x0 = torch.rand(32, 3, 6, 6, dtype=torch.float64)
    x0[x0 < 0.2] = 0.0
    z = x0 + torch.randn_like(x0) * 0.3
    eps = torch.full((32,), {1.0: 3.0, 2.0: 0.8, math.inf: 0.1}[p], dtype=torch.float64)
    X0, Z, E = ep.astensor(x0), ep.astensor(z), ep.astensor(eps)
    exact = attack.project(Z, X0, E, (0.0, 1.0)).raw
    approx = project_then_clip(X0, Z, E, p=p, bounds=(0.0, 1.0)).raw
    d_exact, d_approx = _norms(exact - z, 2), _norms(approx - z, 2)
    assert (d_exact <= d_approx + 1e-12).all()
    assert (_norms(exact - x0, p) <= eps * (1 + 1e-9)).all()
    assert exact.min() >= 0 and exact.max() <= 1
    if p != math.inf:  # strictly closer for some samples
        assert (d_exact < d_approx - 1e-6).any()


@pytest.mark.parametrize(
    ("ours", "theirs", "eps"),
    [
        (L2ClippingAwarePGD, fb.attacks.L2ProjectedGradientDescentAttack, 1.5),
        (LinfClippingAwarePGD, fb.attacks.LinfProjectedGradientDescentAttack, 8 / 255),
        (L2ClippingAwareBasicIterativeAttack, fb.attacks.L2BasicIterativeAttack, 1.0),
        (LinfClippingAwareFastGradientAttack, fb.attacks.LinfFastGradientAttack, 8 / 255),
    ],
)
def test_naive_reproduces_foolbox(ours: type, theirs: type, eps: float) -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 8)
    for random_start in (False, True):
        # float rounding differences (a*b/c vs a*(b/c)) grow along a trajectory through
        # ReLU kinks, so the random-start comparison takes one step after the start
        if ours.default_steps == 1 and random_start:
            continue
        steps = min(ours.default_steps, 1 if random_start else 5)
        kwargs = {"steps": steps} if ours.default_steps > 1 else {}
        torch.manual_seed(3)
        a, _, sa = ours(rescaling="naive", keep_best=False, random_start=random_start, **kwargs)(
            model, x, y, epsilons=eps
        )
        torch.manual_seed(3)
        b, _, sb = theirs(random_start=random_start, **kwargs)(model, x, y, epsilons=eps)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        assert torch.equal(sa, sb)


def test_bisection_matches_car_up_to_tolerance() -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 8)
    for cls, eps in (
        (L2ClippingAwareFastGradientAttack, 3.0),
        (L1ClippingAwareFastGradientAttack, 8.0),
    ):
        car, _, _ = cls(rescaling="car")(model, x, y, epsilons=eps)
        bis, _, _ = cls(rescaling="bisection")(model, x, y, epsilons=eps)
        torch.testing.assert_close(car, bis, atol=1e-5, rtol=0)
        assert (_norms(car - x, cls.norm.p) > 0.9 * eps).all()


def test_samples_are_independent_given_a_seed() -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 6)
    for cls, eps in (
        (L2ClippingAwarePGD, 1.0),
        (L1ClippingAwarePGD, 5.0),
        (LinfClippingAwarePGD, 0.03),
    ):
        attack = cls(steps=3, seed=7, keep_best=False)
        together, _, _ = attack(model, x, y, epsilons=eps)
        order = torch.tensor([4, 2, 0, 5, 1, 3])
        shuffled, _, _ = attack(model, x[order], y[order], epsilons=eps)
        alone, _, _ = attack(model, x[2:3], y[2:3], epsilons=eps)
        torch.testing.assert_close(shuffled, together[order], atol=1e-6, rtol=0)
        torch.testing.assert_close(alone[0], together[2], atol=1e-6, rtol=0)


def test_attack_leaves_the_model_untouched() -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 4)
    net = model.module
    before = {k: v.clone() for k, v in net.state_dict().items()}
    L2ClippingAwarePGD(steps=3)(model, x, y, epsilons=1.0)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_targeted_criterion_moves_towards_the_target() -> None:
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 6)
    target = (y + 1) % 10
    criterion = fb.criteria.TargetedMisclassification(target)
    attack = L2ClippingAwarePGD(steps=10, random_start=False)
    raw, _, _ = attack(model, x, criterion, epsilons=3.0)
    clean = torch.log_softmax(model(x), -1).gather(1, target[:, None])
    attacked = torch.log_softmax(model(raw), -1).gather(1, target[:, None])
    assert (attacked > clean).all()


def test_keep_best_returns_an_earlier_adversarial() -> None:
    """A step size so large that iterates oscillate: the last iterate may be clean,
    the best-so-far keeps any adversarial iterate."""
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 8)
    kwargs = {"steps": 8, "rel_stepsize": 1.0, "random_start": False, "seed": 0}
    _, _, kept = LinfClippingAwarePGD(keep_best=True, **kwargs)(model, x, y, epsilons=0.1)
    _, _, last = LinfClippingAwarePGD(keep_best=False, **kwargs)(model, x, y, epsilons=0.1)
    assert (kept.int() >= last.int()).all()


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="rescaling"):
        L2ClippingAwarePGD(rescaling="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        L2ClippingAwarePGD(steps=0)
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 2)
    with pytest.raises(ValueError, match="epsilon"):
        L2ClippingAwarePGD(steps=1).run(model, x, y, epsilon=-1.0)
