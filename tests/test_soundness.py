"""Soundness: no L2 attack of the project beats the certified radius of the shipped BCOP model.

Every L2 attack (PGD, additive noise, Boundary Attack, HopSkipJump; each with car,
bisection and naive rescaling) runs on 20 Fashion-MNIST test images with small
budgets; no result may change the prediction closer than the sample's certified
radius. The 20 images are Debian's Fashion-MNIST when installed, else foolbox's shipped
samples (the same images; the ``fashion_mnist`` fixture of ``conftest.py``). The check
itself is tested to flag violations: a deliberately inflated radius, an understated
Lipschitz constant, and a model whose certificate is tight.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FashionMnist
from torch import nn

from car_attacks.lipschitz import lipschitz_bound
from car_attacks.models import load_model, model_spec
from car_attacks.soundness import (
    AttackSoundness,
    SuiteBudget,
    attack_soundness,
    certified_radii,
    check_soundness,
    l2_attack_suite,
    other_class_starting_points,
    soundness_column,
    soundness_details,
)

MODEL = "fashion_mnist_bcop"
N = 20
EPSILONS = (0.25, 1.0, 3.0)
BUDGET = SuiteBudget(pgd_steps=10, noise_repeats=5, boundary_steps=100, hsj_steps=4)
SUITE_NAMES = list(l2_attack_suite(budget=BUDGET))

pytestmark = pytest.mark.skipif(
    not model_spec(MODEL).available()[0], reason=model_spec(MODEL).available()[1]
)


@pytest.fixture(scope="module")
def bcop() -> nn.Module:
    torch.set_num_threads(1)
    return load_model(MODEL)


@pytest.fixture(scope="module")
def batch(fashion_mnist: FashionMnist) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_mnist(N)


@pytest.fixture(scope="module")
def radii(bcop: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return certified_radii(bcop, batch[0])


@pytest.fixture(scope="module")
def results(
    bcop: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], radii: torch.Tensor
) -> dict[str, list[AttackSoundness]]:
    x, y = batch
    suite = l2_attack_suite(seed=0, budget=BUDGET)
    out: dict[str, list[AttackSoundness]] = {}
    for found in attack_soundness(bcop, x, y, suite, epsilons=EPSILONS, radii=radii):
        out.setdefault(found.name, []).append(found)
    return out


def test_suite_covers_every_l2_attack() -> None:
    attacks = {name.split("/")[0] for name in SUITE_NAMES}
    assert attacks == {
        "pgd",
        "noise_gaussian",
        "noise_uniform",
        "noise_repeated",
        "boundary",
        "hop_skip_jump",
    }
    for attack in attacks:
        assert {f"{attack}/{r}" for r in ("car", "bisection", "naive")} <= set(SUITE_NAMES)


def test_model_certifies_nontrivial_radii(
    bcop: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], radii: torch.Tensor
) -> None:
    x, y = batch
    correct = bcop(x).argmax(1) == y
    assert int(correct.sum()) >= N // 2
    assert bool((radii >= 0).all())
    assert float(radii[correct].median()) > 0.1


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_no_attack_beats_the_certificate(
    name: str, results: dict[str, list[AttackSoundness]]
) -> None:
    runs = results[name]
    assert runs, name
    for run in runs:
        r = run.result
        assert r.count == 0, (
            f"{name} eps={run.epsilon}: {r.count} results change the prediction inside the "
            f"certified radius (distance / radius = {r.worst_ratio():.4g})"
        )
        assert run.result.worst_ratio() >= 1.0 - 1e-5
        if run.epsilon is not None:  # fixed-eps attacks stay inside their ball
            assert float(r.distances.max()) <= run.epsilon * (1 + 1e-5) + 1e-6
        else:  # minimization attacks return adversarials (at least the starting points)
            assert bool(r.adversarial.all())


def test_attacks_do_find_adversarials(results: dict[str, list[AttackSoundness]]) -> None:
    """The suite is not vacuous: the strongest runs change many predictions."""
    pgd = [run for run in results["pgd/car"] if run.epsilon == max(EPSILONS)][0]
    assert int(pgd.result.changed.sum()) >= N // 2
    for name in ("boundary/car", "hop_skip_jump/car"):
        assert int(results[name][0].result.changed.sum()) >= N // 2


def test_check_catches_a_wrong_radius(
    bcop: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], radii: torch.Tensor
) -> None:
    x, y = batch
    start = other_class_starting_points(bcop, x, y)  # adversarial, far away
    dist = (start - x).flatten(1).double().norm(dim=1)
    assert not bool(check_soundness(bcop, x, y, start, radii).any())
    wrong = dist * 1.01  # claims every changed prediction lies inside the ball
    flags = check_soundness(bcop, x, y, start, wrong)
    details = soundness_details(bcop, x, y, start, wrong)
    assert bool(flags.any())
    assert torch.equal(flags, details.changed)
    column = soundness_column(bcop, x, y, start, wrong)
    assert column == [bool(v) for v in flags] and json.loads(json.dumps(column)) == column
    # given predictions replace the forward pass at x: the true ones change nothing,
    # predictions equal to the results' own make every sample unchanged
    pred = bcop(x).argmax(dim=1)
    assert torch.equal(check_soundness(bcop, x, y, start, wrong, predictions=pred), flags)
    same = details.result_predictions
    assert not bool(check_soundness(bcop, x, y, start, wrong, predictions=same).any())


def test_attack_catches_an_understated_lipschitz_bound(
    bcop: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """With radii from a Lipschitz constant 20x too small, PGD finds violations."""
    x, y = batch
    lip = lipschitz_bound(bcop, x.shape[1:])
    wrong = certified_radii(bcop, x, lipschitz=lip / 20)
    suite = {"pgd/car": l2_attack_suite(seed=0, rescalings=("car",))["pgd/car"]}
    (run,) = attack_soundness(bcop, x, y, suite, epsilons=(1.0,), radii=wrong)
    assert run.result.count > 0
    assert run.result.worst_ratio() < 1.0


def _tight_model() -> nn.Sequential:
    """logits (x0, -x0): margin 2|x0|, Lipschitz sqrt(2), radius |x0|: the certificate
    is exactly the distance to the decision boundary x0 = 0."""
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    return nn.Sequential(lin).requires_grad_(False)


def test_tolerance_on_a_tight_certificate() -> None:
    model = _tight_model()
    x = torch.tensor([[0.3, 0.5], [-0.2, 0.1], [0.4, 0.4]])
    y = torch.tensor([0, 1, 1])  # the last sample is misclassified
    r = certified_radii(model, x)
    torch.testing.assert_close(r.double(), x[:, 0].abs().double(), rtol=1e-6, atol=1e-7)
    # just across the boundary: distance = radius (+ 1e-4), prediction changed: sound
    across = x.clone()
    across[:, 0] = -torch.sign(x[:, 0]) * 1e-4
    assert not bool(check_soundness(model, x, y, across, r).any())
    # a radius 10% too large: both changed predictions are flagged
    flags = check_soundness(model, x, y, across, r * 1.1)
    assert flags.tolist() == [True, True, True]
    # within the float tolerance (relative 1e-7 < rtol): not flagged
    assert not bool(check_soundness(model, x, y, across, (r + 1e-4) * (1 + 1e-7)).any())
    # the misclassified sample: unchanged prediction is "adversarial" but no violation
    same = x.clone()
    same[2, 1] += 0.05
    details = soundness_details(model, x, y, same, r * 10)
    assert details.adversarial.tolist() == [False, False, True]
    assert details.violations.tolist() == [False, False, False]


def test_invalid_inputs() -> None:
    model = _tight_model()
    x = torch.tensor([[0.3, 0.5]])
    with pytest.raises(ValueError, match="shape"):
        check_soundness(model, x, torch.tensor([0]), torch.zeros(1, 3), torch.ones(1))
    with pytest.raises(ValueError, match="one label"):
        check_soundness(model, x, torch.tensor([0, 1]), x, torch.ones(1))
    with pytest.raises(ValueError, match="one prediction per sample"):
        check_soundness(model, x, torch.tensor([0]), x, torch.ones(1), predictions=[0, 1])
    with pytest.raises(ValueError, match="rtol"):
        check_soundness(model, x, torch.tensor([0]), x, torch.ones(1), rtol=-1.0)
    assert math.isinf(
        soundness_details(model, x, torch.tensor([0]), x, torch.ones(1)).worst_ratio()
    )


def test_module_paths_agree() -> None:
    """``car_attacks.soundness`` re-exports the check (``car_attacks.lipschitz``) and the
    suite (``car_attacks.evaluation.soundness_suite``)."""
    import car_attacks.lipschitz as lipschitz
    import car_attacks.soundness as soundness
    from car_attacks.attacks.starting_points import nearest_other_class
    from car_attacks.evaluation import soundness_suite

    assert soundness.certified_radii is lipschitz.certified_radii
    assert soundness.check_soundness is lipschitz.check_soundness
    assert soundness.soundness_column is lipschitz.soundness_column
    assert soundness.soundness_details is lipschitz.soundness_details
    assert soundness.SoundnessResult is lipschitz.SoundnessResult
    assert (soundness.RTOL, soundness.ATOL) == (lipschitz.RTOL, lipschitz.ATOL)
    assert soundness.l2_attack_suite is soundness_suite.l2_attack_suite
    assert soundness.attack_soundness is soundness_suite.attack_soundness
    assert soundness.other_class_starting_points is nearest_other_class
