"""``car_attacks.evaluate``: the evaluation of ``car-attacks run`` on in-memory tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import car_attacks
from car_attacks.data import DATASETS
from car_attacks.evaluation import load_config, resolve_config_path
from car_attacks.evaluation.api import MEMORY_PREFIX, default_suite
from car_attacks.evaluation.report import build_report
from car_attacks.models import MODELS

SHAPE = (3, 8, 8)


def _net(scale: float = 1.0) -> nn.Module:
    """A small CNN taking inputs in [0, scale] (a fixed seed gives the same weights)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 4),
    )
    with torch.no_grad():
        net[0].weight.div_(scale)
    return net


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, *SHAPE, generator=g)
    x[0, 0, :2] = 0.0  # on the box's faces: clipping matters
    x[1, 1, :2] = 1.0
    with torch.no_grad():
        y = _net()(x).argmax(1)
    y[-1] = (y[-1] + 1) % 4  # one misclassified sample
    return x, y


ATTACKS: list[dict[str, Any]] = [
    {
        "id": "pgd_linf",
        "class": "LinfClippingAwarePGD",
        "norm": "linf",
        "eps": [0.01, 0.05],
        "params": {"steps": 5, "rel_stepsize": 0.3},
    },
    {
        "id": "noise_l2",
        "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
        "norm": "l2",
        "eps": [0.5, 2.0],
    },
]
PEERS: list[dict[str, Any]] = [
    {
        "id": "foolbox_pgd_linf",
        "library": "foolbox",
        "class": "LinfProjectedGradientDescentAttack",
        "compare_with": "pgd_linf",
        "params": {"steps": 5, "rel_stepsize": 0.3},
    }
]


def _no_memory_entries() -> bool:
    return not any(k.startswith(MEMORY_PREFIX) for k in (*MODELS, *DATASETS))


def _scaled(entries: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    return [{**a, "eps": [e * factor for e in a["eps"]]} for a in entries]


def test_report_numbers_pages_and_save(tmp_path: Path) -> None:
    net, (x, y) = _net(), _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    result = car_attacks.evaluate(
        net, x, y, attacks=ATTACKS, peers=PEERS, out=tmp_path / "run", batch_size=4
    )
    # the caller's model is untouched
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert _no_memory_entries()
    with torch.no_grad():
        clean = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert result.clean_accuracy == pytest.approx(clean)
    assert result.report.clean.evaluated == len(x)
    # numbers: robust accuracy never above clean accuracy, and non-increasing in eps
    for method in ("car", "bisection", "naive", "foolbox_pgd_linf"):
        curve = result.robust_accuracy("pgd_linf", method)
        assert list(curve) == [0.01, 0.05]
        values = [v for v in curve.values() if v is not None]
        assert len(values) == 2 and clean >= values[0] >= values[1]
    with pytest.raises(KeyError):
        result.robust_accuracy("pgd_linf", "apgd_linf")
    # worst case per norm: at most every single method's robust accuracy
    norms = {w.norm: w for w in result.worst_case}
    assert set(norms) == {"linf", "l2"}
    linf = norms["linf"]
    for e, acc in zip(linf.eps, linf.robust_accuracy, strict=True):
        singles = [
            result.robust_accuracy("pgd_linf", m)[e]
            for m in ("car", "bisection", "naive", "foolbox_pgd_linf")
        ]
        assert acc is not None and acc <= min(v for v in singles if v is not None)
    # pages are those of the run directory, and the saved copy rebuilds the same report
    assert result.to_html().lstrip().lower().startswith("<!doctype html")
    assert result.to_markdown() == (result.run_dir / "report.md").read_text()
    assert "pgd_linf" in result.to_markdown()
    as_stored = json.loads(json.dumps(result.to_json()))
    assert as_stored == json.loads((result.run_dir / "report.json").read_text())
    saved = result.save(tmp_path / "copy")
    build_report(saved)
    rebuilt = json.loads((saved / "report.json").read_text())
    assert rebuilt["attacks"] == as_stored["attacks"]
    with pytest.raises(ValueError, match="already exists"):
        result.save(saved)
    # the same call with the same out resumes the finished run
    again = car_attacks.evaluate(
        net, x, y, attacks=ATTACKS, peers=PEERS, out=tmp_path / "run", batch_size=4
    )
    assert again.to_json()["attacks"] == result.to_json()["attacks"]


def test_bounds_other_than_unit_give_the_same_numbers(tmp_path: Path) -> None:
    x, y = _data()
    unit = car_attacks.evaluate(_net(), x, y, attacks=ATTACKS[:1], rescalings=["car"])
    wide = car_attacks.evaluate(
        _net(255.0),
        x * 255.0,
        y,
        attacks=_scaled(ATTACKS[:1], 255.0),
        bounds=(0, 255),
        rescalings=["car"],
        out=tmp_path / "wide",
    )
    assert wide.clean_accuracy == unit.clean_accuracy
    a = list(unit.robust_accuracy("pgd_linf", "car").values())
    b = list(wide.robust_accuracy("pgd_linf", "car").values())
    assert a == b
    assert unit.run_dir.is_dir()  # the temporary directory lives with the report


def test_default_suite_scales_the_default_config() -> None:
    config, _ = load_config(resolve_config_path(None))
    attacks, peers = default_suite((3, 64, 64), (0.0, 2.0))
    ratio = 3 * 64 * 64 / 3072
    assert [a["id"] for a in attacks] == [a.id for a in config.attacks]
    assert len(peers) == len(config.peers)
    power = {"linf": 0.0, "l2": 0.5, "l1": 1.0}
    for got, want in zip(attacks, config.attacks, strict=True):
        factor = 2.0 * ratio ** power[want.norm]
        assert got["eps"] == pytest.approx([e * factor for e in want.eps])


@pytest.mark.slow
def test_default_call_runs_the_default_suite() -> None:
    x, y = _data()
    pick = [0, int((y != y[0]).nonzero()[0])]  # two classes: Boundary's batch_blend start
    assert y[pick[0]] != y[pick[1]]
    result = car_attacks.evaluate(_net(), x[pick], y[pick])
    config, _ = load_config(resolve_config_path(None))
    assert [a.config.id for a in result.report.attacks] == [a.id for a in config.attacks]
    peers = {m.key for a in result.report.attacks for m in a.methods if m.variant == "peer"}
    assert peers == {p.id for p in config.peers}
    assert {w.norm for w in result.worst_case} == {"linf", "l2", "l1"}
    assert result.report.run.status == "complete"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x + 0.5, y), r"outside bounds=\(0, 1\)"),
        (lambda x, y: (x[0], y), r"inputs must be .*\(N, C, H, W\)"),
        (lambda x, y: (x, y[:-1]), r"labels must be .* shape \(6,\)"),
        (lambda x, y: (x, y.float()), "labels must be an integer"),
        (lambda x, y: (x.masked_fill(x > 0.9, math.nan), y), "NaN"),
        (lambda x, y: (x, y + 4), r"labels must be < 4"),
        (lambda x, y: (x[:, :, :4], y), r"model cannot classify inputs of shape \(6, 3, 4, 8\)"),
    ],
)
def test_bad_tensors_are_refused_before_anything_is_written(
    change: Any, match: str, tmp_path: Path
) -> None:
    x, y = change(*_data())
    with pytest.raises(ValueError, match=match):
        car_attacks.evaluate(_net(), x, y, attacks=ATTACKS, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert _no_memory_entries()


def test_bad_entries_are_refused_and_leave_no_state(tmp_path: Path) -> None:
    x, y = _data()
    bad = [{**ATTACKS[0], "class": "NoSuchAttack"}]
    with pytest.raises(ValueError, match="NoSuchAttack"):
        car_attacks.evaluate(_net(), x, y, attacks=bad, out=tmp_path / "run")
    with pytest.raises(ValueError, match="bounds"):
        car_attacks.evaluate(_net(), x, y, attacks=ATTACKS, bounds=(1, 0))
    assert not (tmp_path / "run").exists()
    assert _no_memory_entries()


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    block = next(b for b in blocks if "car_attacks.evaluate(" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(block, scope)
    report = scope["report"]
    assert (tmp_path / "runs" / "my_model" / "report.html").is_file()
    assert scope["html"] == report.to_html()
    assert [w.norm for w in report.worst_case] == ["linf"]
    assert _no_memory_entries()
