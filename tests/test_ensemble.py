"""ClippingAwareAutoAttack: the components per version, the bookkeeping of which attack
fooled which sample, later attacks seeing only the samples not yet fooled, the union of
the components' own results, bounds other than (0, 1), batch independence."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import foolbox as fb
import pytest
import torch
from foolbox.attacks.base import FixedEpsilonAttack

from car_attacks.attacks import ClippingAwareAutoAttack, L2ClippingAwareFMN
from car_attacks.attacks.apgd import L2ClippingAwareAPGD, LinfClippingAwareAPGD
from car_attacks.attacks.ensemble import CLEAN, Component, FoundBy

STEPS = 5


def _setup(n: int = 12, scale: float = 1.0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 10)
    net = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.rand(n, 3, 4, 4)
    y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # sample 0 is misclassified
    if scale != 1.0:
        lin.weight.data /= scale
    return net, x * scale, y


class _Recording(FixedEpsilonAttack):
    """A stand-in: fools the samples whose first input value is above ``threshold`` by
    moving them to a point the model calls class ``(label + 1) % 10``; records what it saw."""

    distance = fb.distances.linf

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.seen: list[torch.Tensor] = []

    def run(self, model: Any, inputs: Any, criterion: Any, *, epsilon: float, **kw: Any) -> Any:
        x = ep.astensor(inputs).raw
        self.seen.append(x.clone())
        hit = x.flatten(1)[:, 0] > self.threshold
        out = x.clone()
        out[hit] = out[hit].clamp(0.0, 1.0) * 0 + self.threshold  # a distinct marker point
        return ep.astensor(out) if isinstance(inputs, ep.Tensor) else out


class _StandIn(ClippingAwareAutoAttack):
    def build_components(self) -> list[Component]:
        return [Component("first", _Recording(0.7)), Component("second", _Recording(0.3))]


class _MarkerModel(torch.nn.Module):
    """Class 0 for ordinary inputs, class 1 on the stand-ins' constant marker points."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        flat = v.flatten(1)
        marker = (flat == flat[:, :1]).all(1) & ((flat[:, 0] == 0.7) | (flat[:, 0] == 0.3))
        return torch.stack([(~marker).float(), marker.float()] + [0 * marker.float()] * 8, 1)


def test_components_per_version() -> None:
    std = ClippingAwareAutoAttack(norm="l2", steps=3, seed=1)
    apgd, apgd_t, fmn = (c.attack for c in std.components)
    assert isinstance(apgd, L2ClippingAwareAPGD) and isinstance(apgd_t, L2ClippingAwareAPGD)
    assert isinstance(fmn, L2ClippingAwareFMN)
    assert apgd.loss == "ce" and apgd.steps == 3 and apgd_t.loss == "dlr-targeted"
    assert apgd.seed == apgd_t.seed == fmn.seed == 1
    assert [c.name for c in std.components] == ["apgd-ce", "apgd-t", "fmn"]
    fast = ClippingAwareAutoAttack(norm="linf", version="fast", rescaling="naive")
    assert [c.name for c in fast.components] == ["apgd-ce", "fmn"]
    fast_apgd = fast.components[0].attack
    assert isinstance(fast_apgd, LinfClippingAwareAPGD) and fast_apgd.rescaling == "naive"
    assert fast.p == float("inf")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"norm": "l3"}, "norm='l3'"),
        ({"norm": "l2", "version": "rand"}, "version='rand'"),
        ({"norm": "l2", "steps": 0}, "steps=0"),
        ({"norm": "l2", "seed": -1}, "seed=-1"),
        ({"norm": "l2", "rescaling": "exact"}, "exact"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ClippingAwareAutoAttack(**kwargs)


def test_later_attacks_see_only_the_rest() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 2, 2)
    x[:, 0, 0] = torch.tensor([0.9, 0.8, 0.5, 0.4, 0.1, 0.2, 0.95, 0.35])
    y = torch.zeros(8, dtype=torch.long)
    y[5] = 3  # sample 5 is misclassified
    attack = _StandIn(norm="linf", seed=0)
    fmodel = fb.PyTorchModel(_MarkerModel().eval(), bounds=(0, 1))
    _, clipped, success = attack(fmodel, x, y, epsilons=[1.0])
    first, second = (c.attack for c in attack.components)
    assert isinstance(first, _Recording) and isinstance(second, _Recording)
    # the first attack saw every correctly classified sample, the second only the rest
    assert torch.equal(first.seen[0], x[[0, 1, 2, 3, 4, 6, 7]])
    assert torch.equal(second.seen[0], x[[2, 3, 4, 7]])
    (found,) = attack.last_found_by.values()
    assert found == FoundBy(
        1.0, ("first", "first", "second", "second", None, CLEAN, "first", "second")
    )
    assert found.counts() == {"first": 3, "second": 3, CLEAN: 1}
    assert success[0].tolist() == [True, True, True, True, False, True, True, True]
    assert torch.all(clipped[0][[0, 1, 6]] == 0.7) and torch.all(clipped[0][[2, 3, 7]] == 0.3)
    assert torch.equal(clipped[0][[4, 5]], x[[4, 5]])


def _alone(attack: Any, fmodel: Any, x: torch.Tensor, y: Any, eps: float) -> torch.Tensor:
    _, _, success = attack(fmodel, x, y, epsilons=[eps])
    return success[0]


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.3), ("l1", 1.0)])
def test_union_of_the_components(norm: str, eps: float) -> None:
    net, x, y = _setup()
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    attack = ClippingAwareAutoAttack(norm=norm, steps=STEPS, seed=3)
    _, clipped, success = attack(fmodel, x, y, epsilons=[eps])
    assert list(attack.last_found_by) == [eps]
    union = net(x).argmax(1) != y
    for comp in attack.components:
        union |= _alone(comp.attack, fmodel, x, y, eps)
    assert torch.equal(success[0], union)
    assert 0 < int(success[0].sum()) < len(x)
    (found,) = attack.last_found_by.values()
    assert [f is not None for f in found.attacks] == success[0].tolist()
    assert found.attacks[0] == CLEAN
    dist = fb.distances.LpDistance(attack.p)(x, clipped[0])
    assert bool((dist <= eps * (1 + 1e-5)).all())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.6), ("l1", 2.0)])
def test_targeted_criterion(norm: str, eps: float) -> None:
    """Success means "classified as the target" (checked on the model) and is the union of
    the components' own targeted successes; the results lie in the box and the eps-ball."""
    net, x, y = _setup()
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    with torch.no_grad():
        targets = net(x).argsort(1)[:, -3]
    targets[0] = net(x[:1]).argmax(1)[0]  # sample 0 is already classified as its target
    criterion = fb.criteria.TargetedMisclassification(targets)
    attack = ClippingAwareAutoAttack(norm=norm, steps=STEPS, seed=3)
    _, clipped, success = attack(fmodel, x, criterion, epsilons=[eps])
    adv = clipped[0]
    with torch.no_grad():
        reached = net(adv).argmax(1) == targets
    assert torch.equal(success[0], reached)
    assert 1 < int(reached.sum()) < len(x)
    union = torch.zeros_like(reached)
    union[0] = True
    for comp in attack.components:
        union |= _alone(comp.attack, fmodel, x, criterion, eps)
    assert torch.equal(success[0], union)
    (found,) = attack.last_found_by.values()
    assert found.attacks[0] == CLEAN
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    p = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[norm]
    dist = (adv.double() - x.double()).flatten(1).norm(p=p, dim=1)
    assert float(dist.max()) <= eps * (1 + 1e-5)


def test_bad_criterion_names_itself() -> None:
    class _Confidence(fb.criteria.Criterion):
        def __call__(self, perturbed: Any, outputs: Any) -> Any:
            return outputs.max(axis=-1) > 1e9

        def __repr__(self) -> str:
            return "_Confidence()"

    net, x, _ = _setup()
    attack = ClippingAwareAutoAttack(norm="l2", steps=STEPS, seed=0)
    with pytest.raises(ValueError, match="TargetedMisclassification, got criterion=_Confidence"):
        attack(fb.PyTorchModel(net, bounds=(0, 1)), x, _Confidence(), epsilons=[0.3])


def test_bounds_0_255_and_batch_independence() -> None:
    net, x, y = _setup(scale=255.0)
    fmodel = fb.PyTorchModel(net, bounds=(0, 255))
    eps = [0.3 * 255]
    attack = ClippingAwareAutoAttack(norm="l2", version="fast", steps=STEPS, seed=5)
    _, clipped, success = attack(fmodel, x, y, epsilons=eps)
    assert float(clipped[0].min()) >= 0 and float(clipped[0].max()) <= 255
    assert float(clipped[0].max()) > 1.0 and 0 < int(success[0].sum()) < len(x)
    assert bool((fb.distances.l2(x, clipped[0]) <= eps[0] * (1 + 1e-5)).all())
    order = torch.arange(len(x) - 1, 2, -1)  # a reversed sub-batch
    _, clipped_sub, success_sub = attack(fmodel, x[order], y[order], epsilons=eps)
    assert torch.equal(success_sub[0], success[0][order])
    torch.testing.assert_close(clipped_sub[0], clipped[0][order], rtol=0, atol=1e-3)


def test_config_names_the_ensemble() -> None:
    from car_attacks.evaluation import parse_config
    from car_attacks.evaluation.catalog import prepare_methods
    from car_attacks.evaluation.config import ConfigError

    def config(norm: str) -> dict[str, Any]:
        row: dict[str, Any] = {"id": "aa", "class": "ClippingAwareAutoAttack", "norm": norm}
        row.update(eps=[0.5], params={"norm": "l2", "version": "fast", "steps": 2})
        return {
            "name": "ens",
            "model": {"name": "fashion_mnist_cnn"},
            "data": {"name": "foolbox_fashion_mnist", "n": 4, "batch_size": 4},
            "rescalings": ["car", "naive"],
            "attacks": [row],
        }

    methods = prepare_methods(parse_config(config("l2")))
    assert [m.record.key for m in methods] == ["aa/car", "aa/naive"]
    assert all(m.record.kind == "fixed" for m in methods)
    with pytest.raises(ConfigError, match="norm"):
        prepare_methods(parse_config(config("linf")))
