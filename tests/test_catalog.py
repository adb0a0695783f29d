"""The catalog of a config's names: the explicit table of our attacks, peers, and the
methods of a config built once, each behind the one adapter interface."""

from __future__ import annotations

import inspect

import pytest
from foolbox.attacks.base import Attack, AttackWithDistance
from foolbox.distances import LpDistance
from test_evaluation import register_tiny, tiny_raw

import car_attacks.attacks as ca
from car_attacks.evaluation import parse_config, plan_methods
from car_attacks.evaluation.catalog import (
    CAR_ATTACK_CLASSES,
    attack_norm,
    check_references,
    foolbox_attack_classes,
)
from car_attacks.evaluation.methods import FoolboxMethod
from car_attacks.evaluation.peers import APGDPeer

register_tiny()  # the tiny_test model and tiny_data data set of tiny_raw()


def _concrete_public_attacks() -> set[str]:
    out = set()
    for name in ca.__all__:
        obj = getattr(ca, name)
        if not (inspect.isclass(obj) and issubclass(obj, AttackWithDistance)):
            continue
        try:
            distance = obj().distance
        except (TypeError, ValueError, NotImplementedError):  # abstract bases
            continue
        if isinstance(distance, LpDistance):
            out.add(name)
    return out


def test_the_table_holds_every_public_attack_class() -> None:
    assert set(CAR_ATTACK_CLASSES) == _concrete_public_attacks()
    for name, cls in CAR_ATTACK_CLASSES.items():
        assert cls.__name__ == name and issubclass(cls, Attack)


def test_foolbox_peers_and_norms() -> None:
    classes = foolbox_attack_classes()
    assert "LinfProjectedGradientDescentAttack" in classes and "BoundaryAttack" in classes
    assert attack_norm(classes["L2ProjectedGradientDescentAttack"]()) == 2.0
    assert attack_norm(classes["GaussianBlurAttack"]()) is None  # no distance set


def test_methods_are_built_once_behind_one_interface() -> None:
    cfg = parse_config(tiny_raw())
    methods = check_references(cfg)
    assert [m.record for m in methods] == plan_methods(cfg)
    by_key = {m.record.key: m.adapter for m in methods}
    assert isinstance(by_key["apgd"], APGDPeer) and by_key["apgd"].kind == "fixed"
    pgd = by_key["pgd_linf/car"]
    assert isinstance(pgd, FoolboxMethod) and pgd.kind == "fixed" and not pgd.batch_blend
    boundary = by_key["fb_boundary"]
    assert isinstance(boundary, FoolboxMethod) and boundary.kind == "minimization"
    assert len({id(a) for a in by_key.values()}) == len(by_key)  # one attack per method


def test_batch_blend_reaches_the_minimization_peers() -> None:
    raw = tiny_raw()
    raw["attacks"][2]["init"] = "batch_blend"
    methods = {m.record.key: m.adapter for m in check_references(parse_config(raw))}
    for key in ("boundary/car", "fb_boundary"):
        method = methods[key]
        assert isinstance(method, FoolboxMethod) and method.batch_blend, key


@pytest.mark.parametrize("name", ["module:Class", "car_attacks.attacks:LinfClippingAwarePGD"])
def test_only_table_names_resolve(name: str) -> None:
    from car_attacks.evaluation import ConfigError

    raw = tiny_raw()
    raw["attacks"][0]["class"] = name
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.class: unknown attack class"):
        check_references(parse_config(raw))
