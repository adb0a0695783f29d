"""Evaluation reports of certified models: certified beside empirical robust accuracy per
eps, the gap, and the soundness column (issue 5).

The shipped BCOP Fashion-MNIST model is run through ``run_experiment`` on a few test
images; the certified accuracies are recomputed independently with
:func:`car_attacks.lipschitz.certified_accuracy`, and a deliberately wrong certificate
(a Lipschitz bound 100x too small) must show up as violations in the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from car_attacks.data import load_samples
from car_attacks.evaluation import parse_config, run_experiment
from car_attacks.evaluation import runner as runner_module
from car_attacks.evaluation.report import certified_lp_radius, compute_report
from car_attacks.lipschitz import certified_accuracy
from car_attacks.models import load_model

N = 12
EPS_L2 = (0.25, 0.5, 1.0)
EPS_LINF = (0.01, 0.03)


def _raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "certified_tiny",
        "seed": 0,
        "model": {"name": "fashion_mnist_bcop"},
        "data": {"name": "foolbox_fashion_mnist", "n": N, "batch_size": 6},
        "rescalings": ["car", "naive"],
        "attacks": [
            {
                "id": "pgd_l2",
                "class": "L2ClippingAwarePGD",
                "norm": "l2",
                "eps": list(EPS_L2),
                "params": {"steps": 5, "rel_stepsize": 0.25},
            },
            {
                "id": "pgd_linf",
                "class": "LinfClippingAwarePGD",
                "norm": "linf",
                "eps": list(EPS_LINF),
                "params": {"steps": 5},
            },
            {
                "id": "boundary",
                "class": "ClippingAwareBoundaryAttack",
                "norm": "l2",
                "eps": list(EPS_L2),
                "init": "batch_blend",
                "params": {"steps": 20},
            },
        ],
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("certified") / "run"
    run_experiment(parse_config(_raw()), out, progress=False)
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    report["_dir"] = str(out)
    return report


def _independent_certified(eps: tuple[float, ...], norm: str) -> list[float]:
    model = load_model("fashion_mnist_bcop").eval()
    images, labels = load_samples("foolbox_fashion_mnist", n=N)
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    scale = math.sqrt(x[0].numel()) if norm == "linf" else 1.0  # L-inf ball in L2 ball
    return [float(certified_accuracy(model, x, y, e * scale).float().mean()) for e in eps]


def test_report_shows_certified_beside_empirical(certified_run: dict[str, Any]) -> None:
    cert = certified_run["certificate"]
    assert cert is not None and cert["norm"] == "l2"
    assert cert["lipschitz"] == pytest.approx(1.0, abs=1e-4)
    assert cert["samples"] == N
    by_id = {a["id"]: a for a in certified_run["attacks"]}
    for attack_id, eps, norm in (
        ("pgd_l2", EPS_L2, "l2"),
        ("pgd_linf", EPS_LINF, "linf"),
        ("boundary", EPS_L2, "l2"),
    ):
        a = by_id[attack_id]
        assert a["certified_robust_accuracy"] == pytest.approx(
            _independent_certified(eps, norm), abs=1e-6
        )
        for m in a["methods"]:
            gaps = m["certificate"]["gap"]
            for j in range(len(eps)):
                robust = m["robust_accuracy"][j]
                certified = a["certified_robust_accuracy"][j]
                assert gaps[j] == pytest.approx(robust - certified, abs=1e-6)
                assert robust >= certified - 1e-9, (attack_id, m["key"], eps[j])
    # the certificate is not vacuous on these images: some sample is certified at the
    # smallest L2 eps and the decreasing eps grid gives a decreasing certified accuracy
    certified_l2 = by_id["pgd_l2"]["certified_robust_accuracy"]
    assert certified_l2[0] > 0 and certified_l2 == sorted(certified_l2, reverse=True)


def test_soundness_column_is_clean_and_complete(certified_run: dict[str, Any]) -> None:
    cert = certified_run["certificate"]
    assert cert["violations"] == 0 and cert["violating_methods"] == []
    checked = 0
    for a in certified_run["attacks"]:
        for m in a["methods"]:
            c = m["certificate"]
            assert c["checked"] == [N] * len(a["eps"])
            assert c["violations"] == [0] * len(a["eps"])
            if a["id"] == "boundary":
                assert c["found_checked"] == N
            checked += sum(c["checked"]) + c["found_checked"]
    assert cert["results_checked"] == checked
    assert any(line.startswith("Soundness: none of the") for line in certified_run["headline"])


def test_report_files_show_certified_tables(certified_run: dict[str, Any]) -> None:
    run_dir = Path(certified_run["_dir"])
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    for attack_id in ("pgd_l2", "pgd_linf", "boundary"):
        assert f'data-table="certified-{attack_id}"' in html
        assert f"Certified vs empirical robust accuracy, {attack_id}" in md
    assert "certificate violations" in html and "certificate violations" in md
    assert "<b>certified</b>" in html


def test_wrong_certificate_shows_as_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Radii 100x too large (a Lipschitz bound 100x too small): PGD's adversarials now lie
    inside the claimed radius, which the soundness column must report."""
    real = runner_module.certified_lipschitz

    def too_small(*args: Any) -> float | None:
        value = real(*args)
        return None if value is None else value / 100

    monkeypatch.setattr(runner_module, "certified_lipschitz", too_small)
    raw = _raw()
    raw["attacks"] = raw["attacks"][:1]
    run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    cert = report["certificate"]
    assert cert["violations"] > 0
    assert "pgd_l2:pgd_l2/car" in cert["violating_methods"]
    assert any(line.startswith("SOUNDNESS VIOLATED") for line in report["headline"])
    a = report["attacks"][0]
    # a wrong certificate also shows as a negative gap: attacks beat the "lower bound"
    assert min(g for m in a["methods"] for g in m["certificate"]["gap"]) < 0


def test_uncertified_model_has_no_certificate_section(tmp_path: Path) -> None:
    raw = _raw(model={"name": "fashion_mnist_cnn"})
    raw["attacks"] = raw["attacks"][:1]
    run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["certificate"] is None
    assert report["attacks"][0]["certified_robust_accuracy"] is None
    assert all(m["certificate"] is None for m in report["attacks"][0]["methods"])
    assert "certified-pgd_l2" not in (tmp_path / "run" / "report.html").read_text()


def test_certified_lp_radius() -> None:
    assert certified_lp_radius(0.5, "l2", 784) == 0.5
    assert certified_lp_radius(0.5, "l1", 784) == 0.5
    assert certified_lp_radius(0.5, "linf", 784) == pytest.approx(0.5 / 28)


def test_compute_report_counts_synthetic_violations() -> None:
    """Stored flags -> counts, per eps and for minimization results, independent of a run."""
    config = parse_config(_raw())
    methods = [
        {"key": "pgd_l2/car", "attack": "pgd_l2", "variant": "car", "cls": "c", "kind": "fixed"},
        {
            "key": "boundary/car",
            "attack": "boundary",
            "variant": "car",
            "cls": "c",
            "kind": "minimization",
        },
    ]
    manifest = {"methods": methods, "units_total": 0}
    idx = list(range(N))
    clean = {
        "method": "clean",
        "batch": 0,
        "eps": [],
        "indices": idx,
        "labels": [0] * N,
        "pred": [0] * N,
        "correct": [True] * N,
        "lipschitz": 2.0,
        "input_size": 784,
        "radius": [0.3 * (i % 4) for i in idx],
    }

    def fixed(e: float, bad: list[int]) -> dict[str, Any]:
        return {
            "method": "pgd_l2/car",
            "attack": "pgd_l2",
            "variant": "car",
            "batch": 0,
            "eps": [e],
            "indices": idx,
            "success": [[i in bad for i in idx]],
            "l1": [[e] * N],
            "l2": [[e] * N],
            "linf": [[e] * N],
            "violation": [[i in bad for i in idx]],
        }

    minimization = {
        "method": "boundary/car",
        "attack": "boundary",
        "variant": "car",
        "batch": 0,
        "eps": list(EPS_L2),
        "indices": idx,
        "success": [[False] * N for _ in EPS_L2],
        "l1": [[0.0] * N for _ in EPS_L2],
        "l2": [[0.0] * N for _ in EPS_L2],
        "linf": [[0.0] * N for _ in EPS_L2],
        "violation": [[False] * N for _ in EPS_L2],
        "found": {
            "adversarial": [True] * N,
            "l1": [1.0] * N,
            "l2": [1.0] * N,
            "linf": [1.0] * N,
            "violation": [i == 3 for i in idx],
        },
    }
    records = [clean, fixed(0.25, [1]), fixed(0.5, []), fixed(1.0, [2, 5]), minimization]
    report, _ = compute_report(config, manifest, records)
    pgd = report["attacks"][0]
    car = pgd["methods"][0]["certificate"]
    assert car["violations"] == [1, 0, 2]
    # radii 0, 0.3, 0.6, 0.9 repeating: certified at 0.25 -> 9/12, 0.5 -> 6/12, 1.0 -> 0
    assert pgd["certified_robust_accuracy"] == pytest.approx([0.75, 0.5, 0.0])
    boundary = report["attacks"][2]["methods"][0]["certificate"]
    assert boundary["found_violations"] == 1 and boundary["found_checked"] == N
    assert report["certificate"]["violations"] == 4
    assert report["certificate"]["lipschitz"] == 2.0
