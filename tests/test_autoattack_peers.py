"""AutoAttack's APGD-T and full AutoAttack as peers: configs, runs, bounds, bad params.

References are pyautoattack's own classes called directly on the same inputs and seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pyautoattack.autoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack_targeted
from test_evaluation import TinyNet, _tiny_images, _tiny_state, register_tiny, tiny_raw
from torch import Tensor

from car_attacks.evaluation import ConfigError, check_references, parse_config, run_experiment
from car_attacks.evaluation.catalog import make_peer
from car_attacks.evaluation.methods import AttackTarget
from car_attacks.evaluation.peers import APGDTargetedPeer, AutoAttackPeer

APGDT_PARAMS: dict[str, Any] = {"n_iter": 3, "n_target_classes": 3}
AA_PARAMS: dict[str, Any] = {"attacks": ["apgd-ce", "apgd-t"], "n_iter": 3, "n_target_classes": 3}
EPS_UNIT = (4 / 255, 0.05)  # in (0, 1) units; small enough that some samples stay robust
N, BATCH, SEED = 6, 4, 3


@pytest.fixture(autouse=True)
def _tiny() -> None:
    register_tiny()


def _net() -> TinyNet:
    net = TinyNet(1.0)
    net.load_state_dict(_tiny_state())
    return net.eval()


def _apgdt_direct(x: Tensor, y: Tensor, eps: float, seed: int, norm: str = "Linf") -> Tensor:
    attack = APGDAttack_targeted(_net(), norm=norm, eps=eps, seed=seed, **APGDT_PARAMS)
    adv: Tensor = attack.perturb(x.clone(), y.clone())
    return adv


def _aa_direct(x: Tensor, y: Tensor, eps: float, seed: int, norm: str = "Linf") -> Tensor:
    aa = AutoAttack(
        _net(), attacks=AA_PARAMS["attacks"], eps=eps, norm=norm, seed=seed, version="custom"
    )
    for sub in (aa.apgd, aa.apgd_targeted, aa.fab):
        sub.n_iter = AA_PARAMS["n_iter"]
    for sub in (aa.apgd_targeted, aa.fab):
        sub.n_target_classes = AA_PARAMS["n_target_classes"]
    adv: Tensor = aa.run_standard_evaluation(x.clone(), y.clone(), batch_size=len(x))[0]
    return adv


DIRECT = {"apgdt": _apgdt_direct, "aa": _aa_direct}


def _config(model: str, scale: float) -> dict[str, Any]:
    return tiny_raw(
        model={"name": model},
        data={"name": "tiny_data", "n": N, "batch_size": BATCH},
        attacks=[
            {
                "id": "pgd_linf",
                "class": "LinfClippingAwarePGD",
                "norm": "linf",
                "eps": [e * scale for e in EPS_UNIT],
                "params": {"steps": 2, "rel_stepsize": 0.5},
            }
        ],
        peers=[
            {
                "id": "apgdt",
                "library": "autoattack",
                "class": "APGDAttack_targeted",
                "compare_with": "pgd_linf",
                "params": APGDT_PARAMS,
            },
            {
                "id": "aa",
                "library": "autoattack",
                "class": "AutoAttack",
                "compare_with": "pgd_linf",
                "params": AA_PARAMS,
            },
        ],
        rescalings=["car"],
    )


def _expected_robust(peer: str) -> list[float]:
    """Robust accuracy of the direct pyautoattack call, batch by batch with the runner's
    seeds (``config.seed + batch``), in (0, 1) units."""
    x, y = _tiny_images()
    x, y = x[:N], y[:N]
    out = []
    for eps in EPS_UNIT:
        robust = 0
        for b, start in enumerate(range(0, N, BATCH)):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            adv = DIRECT[peer](xb, yb, eps, SEED + b)
            with torch.no_grad():
                robust += int((_net()(adv).argmax(1) == yb).sum())
        out.append(robust / N)
    return out


@pytest.mark.parametrize(("model", "scale"), [("tiny_test", 1.0), ("tiny255_test", 255.0)])
def test_peers_run_and_match_pyautoattack(tmp_path: Path, model: str, scale: float) -> None:
    cfg = parse_config(_config(model, scale), default_name="aa_peers")
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    assert summary.units_failed == 0, summary.failures
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    methods = {m["key"]: m for m in report["attacks"][0]["methods"]}
    got = {k: m["robust_accuracy"] for k, m in methods.items() if k in DIRECT}
    assert got == {peer: pytest.approx(_expected_robust(peer), abs=1e-6) for peer in DIRECT}
    clean = report["clean"]["correct"] / N
    # the small eps fools some samples but not all: the comparison can fail
    assert any(0 < r < clean for r in got["aa"] + got["apgdt"])
    for k in DIRECT:  # the perturbation is within eps, in the model's units
        assert 0 < methods[k]["effective_ratio"]["max"][-1] <= 1 + 1e-5


@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS_UNIT[1]), ("l2", 1.0)])
@pytest.mark.parametrize("scale", [1.0, 255.0])
@pytest.mark.parametrize("peer", ["apgdt", "aa"])
def test_adapter_points_equal_pyautoattack(peer: str, scale: float, norm: str, eps: float) -> None:
    """Same points as pyautoattack in (0, 1) units, mapped to the model's bounds."""
    x, y = _tiny_images()
    x, y = x[:BATCH], y[:BATCH]
    net = TinyNet(scale)
    net.load_state_dict(_tiny_state())
    target = AttackTarget(model=net, counted=net, fmodel=None, bounds=(0.0, scale))
    adapter = (
        APGDTargetedPeer(norm=norm, params=APGDT_PARAMS)
        if peer == "apgdt"
        else AutoAttackPeer(norm=norm, params=AA_PARAMS)
    )
    outcome = adapter.run(target, x * scale, y, (eps * scale,), SEED)
    lib_norm = {"linf": "Linf", "l2": "L2"}[norm]
    ref = DIRECT[peer](x, y, eps, SEED, lib_norm)
    if norm == "l2":  # the random start matters here: the seed is passed on
        other = DIRECT[peer](x, y, eps, SEED + 1, lib_norm)
        assert (other - ref).abs().max() > 1e-3
    torch.testing.assert_close(outcome.clipped[0], ref * scale, rtol=0, atol=1e-4 * scale)
    assert outcome.clipped[0].min() >= 0 and outcome.clipped[0].max() <= scale
    with torch.no_grad():
        assert outcome.success[0] == (_net()(ref).argmax(1) != y).tolist()
    assert any(outcome.success[0]) and (x * scale - outcome.clipped[0]).abs().max() > 0


@pytest.mark.parametrize(
    ("cls", "params", "bad"),
    [
        ("APGDAttack_targeted", {"n_iter": 2, "bogus": 1}, "bogus"),
        ("APGDAttack_targeted", {"loss": "ce"}, "loss"),
        ("AutoAttack", {"n_iter": 2, "n_restartz": 1}, "n_restartz"),
    ],
)
def test_unknown_params_are_named(cls: str, params: dict[str, Any], bad: str) -> None:
    raw = _config("tiny_test", 1.0)
    raw["peers"] = [{**raw["peers"][0], "class": cls, "params": params}]
    with pytest.raises(ConfigError, match=rf"peers\[0\]\.params\.{bad}: not a {cls} parameter"):
        check_references(parse_config(raw))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"version": "fastest"}, "version must be one of"),
        ({"attacks": ["apgd-ce", "pgd"]}, "attacks must be a list"),
        ({"version": "standard", "attacks": ["apgd-ce"]}, "goes with version 'custom'"),
    ],
)
def test_bad_autoattack_settings(params: dict[str, Any], match: str) -> None:
    raw = _config("tiny_test", 1.0)
    raw["peers"] = [{**raw["peers"][1], "params": params}]
    with pytest.raises(ConfigError, match=match):
        check_references(parse_config(raw))


def test_catalog_names_and_norm() -> None:
    raw = _config("tiny_test", 1.0)
    cfg = parse_config(raw)
    apgdt, aa = (make_peer(p, cfg.attacks[0]) for p in cfg.peers)
    assert isinstance(apgdt, APGDTargetedPeer) and apgdt.norm == "linf"
    assert isinstance(aa, AutoAttackPeer) and aa.version == "custom"
    assert apgdt.kind == aa.kind == "fixed"
    raw["peers"][0]["class"] = "APGD-T"
    assert isinstance(make_peer(parse_config(raw).peers[0], cfg.attacks[0]), APGDTargetedPeer)
    raw["peers"][0]["class"] = "FAB"
    with pytest.raises(ConfigError, match="known: APGDAttack, APGDAttack_targeted"):
        check_references(parse_config(raw))
