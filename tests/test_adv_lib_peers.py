"""adv-lib's attacks as peers: the adapter against adv-lib's own functions on the same
inputs, bounds other than (0, 1), minimization results shrunk to each eps, the config
checks, and that the base package does not import adv_lib."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import import_optional

from car_attacks.evaluation import parse_config
from car_attacks.evaluation.adv_lib_peers import ADV_LIB_ATTACKS, AdvLibPeer
from car_attacks.evaluation.catalog import prepare_methods
from car_attacks.evaluation.config import ConfigError
from car_attacks.evaluation.methods import AttackTarget

import_optional("adv_lib", "peers", "adv-lib==0.2.8")


def _target(scale: float = 1.0) -> tuple[AttackTarget, torch.Tensor, torch.Tensor]:
    import foolbox as fb

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 10)
    lin.weight.data /= scale
    net = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.rand(8, 3, 4, 4) * scale
    y = net(x).argmax(1)
    bounds = (0.0, scale)
    return AttackTarget(net, net, fb.PyTorchModel(net, bounds=bounds), bounds), x, y


def test_fixed_eps_equals_adv_lib_apgd() -> None:
    from adv_lib.attacks import apgd

    target, x, y = _target()
    peer = AdvLibPeer(attack="apgd", norm="l2", params={"n_iter": 5})
    out = peer.run(target, x, y, (0.1, 0.5), seed=7)
    # adv-lib's own call, same seed and inputs (the first eps consumed the stream before)
    torch.manual_seed(7)
    apgd(target.model, x, y, eps=0.1, norm=2.0, n_iter=5)
    ref = apgd(target.model, x, y, eps=0.5, norm=2.0, n_iter=5)
    torch.testing.assert_close(out.clipped[1], ref.clamp(0, 1))
    assert out.success[1] == (target.model(ref).argmax(1) != y).tolist()
    assert any(out.success[1]) and out.found is None and peer.kind == "fixed"


def test_minimization_shrunk_to_each_eps_with_other_bounds() -> None:
    target, x, y = _target(scale=255.0)
    peer = AdvLibPeer(attack="ddn", norm="l2", params={"steps": 20})
    eps = (0.05 * 255, 5.0 * 255)
    out = peer.run(target, x, y, eps, seed=0)
    assert peer.kind == "minimization" and out.found is not None
    found_norm = (out.found - x).flatten(1).norm(dim=1)
    for e, adv, ok in zip(eps, out.clipped, out.success, strict=True):
        assert float(adv.min()) >= 0 and float(adv.max()) <= 255
        norms = (adv - x).flatten(1).norm(dim=1)
        assert bool((norms <= e * (1 + 1e-5)).all())
        # a found point within eps is kept as it is
        inside = found_norm <= e
        torch.testing.assert_close(adv[inside], out.found[inside])
        assert ok == (target.model(adv).argmax(1) != y).tolist()
    assert all(out.success[1]) and not all(out.success[0])
    assert float(out.found.max()) > 1.0


@pytest.mark.parametrize(
    ("attack", "norm"), [("ddn", "l2"), ("alma", "l1"), ("apgd_targeted", "linf")]
)
def test_each_attack_runs(attack: str, norm: str) -> None:
    target, x, y = _target()
    params = {"apgd_targeted": {"n_iter": 3, "num_targets": 2}, "ddn": {"steps": 10}}
    params["alma"] = {"num_steps": 10}
    peer = AdvLibPeer(attack=attack, norm=norm, params=params[attack])
    out = peer.run(target, x, y, (0.5,), seed=0)
    assert len(out.clipped) == 1 and len(out.success[0]) == len(x)
    assert peer.kind == ADV_LIB_ATTACKS[attack].kind


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        AdvLibPeer(attack="nope", norm="l2", params={})
    with pytest.raises(ValueError, match="norm='linf'"):
        AdvLibPeer(attack="ddn", norm="linf", params={})
    with pytest.raises(ValueError, match="'n_iters'"):
        AdvLibPeer(attack="apgd", norm="l2", params={"n_iters": 3})


def _config(peer: dict[str, object]) -> dict[str, object]:
    return {
        "name": "adv",
        "model": {"name": "fashion_mnist_cnn"},
        "data": {"name": "foolbox_fashion_mnist", "n": 4, "batch_size": 4},
        "rescalings": ["car"],
        "attacks": [{"id": "pgd", "class": "L2ClippingAwarePGD", "norm": "l2", "eps": [0.5]}],
        "peers": [{"library": "adv_lib", "compare_with": "pgd", **peer}],
    }


def test_config_names_adv_lib_peers() -> None:
    methods = prepare_methods(parse_config(_config({"class": "fmn", "params": {"steps": 5}})))
    peer = methods[-1]
    assert isinstance(peer.adapter, AdvLibPeer) and peer.record.library == "adv_lib"
    assert peer.record.kind == "minimization"
    with pytest.raises(ConfigError, match="peers\\[0\\].class"):
        prepare_methods(parse_config(_config({"class": "square"})))
    with pytest.raises(ConfigError, match="peers\\[0\\].params"):
        prepare_methods(parse_config(_config({"class": "ddn", "params": {"bad": 1}})))


def test_base_package_does_not_import_adv_lib() -> None:
    code = (
        "import sys, car_attacks, car_attacks.cli, car_attacks.evaluation.catalog, "
        "car_attacks.evaluation.runner; assert 'adv_lib' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
