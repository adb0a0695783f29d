"""Tests of the attack-strength benchmark (``scripts/bench_strength.py``): a tiny run,
per-sample counts against the robust accuracies, crash-safe JSON and ``--resume``."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import FashionMnist, import_optional

from car_attacks.benchmarks.strength_compare import REL_TOL, norm_counts, pair_counts
from car_attacks.models import load_model

import_optional("adv_lib", "peers", "adv-lib==0.2.8")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_strength.py"
MODEL, N, NORMS = "fashion_mnist_cnn_pgd", 8, ("linf", "l2")
ARGS = [
    "--n", str(N), "--steps", "2", "--square-queries", "20", "--models", MODEL,
    "--norms", *NORMS, "--fashion-data", "foolbox_fashion_mnist", "--threads", "1",
]  # fmt: skip


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_strength", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _norm_counts_oracle(a: list[float], b: list[float]) -> dict[str, int]:
    smaller = larger = 0
    for u, v in zip(a, b, strict=True):
        if math.isnan(u) or math.isnan(v) or (math.isinf(u) and math.isinf(v)):
            continue
        if math.isinf(v) or u < v * (1 - REL_TOL):
            smaller += 1
        elif math.isinf(u) or v < u * (1 - REL_TOL):
            larger += 1
    return {"ours_smaller": smaller, "theirs_smaller": larger}


def test_norm_counts_match_loop() -> None:
    inf, nan = math.inf, math.nan
    a = [1.0, 2.0, inf, inf, 1.0, nan, 3.0, 0.5, 1.0]
    b = [2.0, 1.0, 1.0, inf, inf, 1.0, 3.0 * (1 + REL_TOL / 2), 0.5, 1.0 + 2 * REL_TOL]
    got = norm_counts(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got == _norm_counts_oracle(a, b) == {"ours_smaller": 3, "theirs_smaller": 2}
    ours = torch.tensor([True, True, False, False])
    assert pair_counts(ours, torch.tensor([True, False, True, False])) == {
        "only_ours": 1,
        "only_theirs": 1,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run that crashes at its first AutoAttack row, then ``--resume`` of it."""
    bench = _script()
    out = tmp_path_factory.mktemp("strength") / "strength.json"

    def crash(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("simulated crash")

    real = bench.__dict__["autoattack_row"]
    bench.__dict__["autoattack_row"] = crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        bench.main([*ARGS, "--out", str(out)])
    crashed = json.loads(out.read_text())
    bench.__dict__["autoattack_row"] = real
    bench.main([*ARGS, "--out", str(out), "--resume"])
    return {"crashed": crashed, "final": json.loads(out.read_text())}


def test_rows_written_before_crash_and_kept_on_resume(runs: dict[str, Any]) -> None:
    crashed, final = runs["crashed"]["rows"], runs["final"]["rows"]
    parts = [r["part"] for r in crashed]
    assert parts == ["apgd"] * 2 * len(NORMS) + ["minimization"] * len(NORMS)
    assert final[: len(crashed)] == crashed  # not recomputed (timings identical)
    expected = {
        ("apgd", norm, eps) for norm in NORMS for eps in _script().EPS["fashion_mnist"][norm]
    }
    expected |= {("minimization", norm, None) for norm in NORMS}
    expected |= {("autoattack", norm, e) for (p, norm, e) in expected if p == "apgd"}
    assert {(r["part"], r["norm"], r["eps"]) for r in final} == expected
    assert len(final) == len(expected)


def test_counts_consistent_with_robust_accuracy(
    runs: dict[str, Any], fashion_mnist: FashionMnist
) -> None:
    x, y = fashion_mnist(N)
    model = load_model(MODEL).eval()
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    for row in runs["final"]["rows"]:
        assert row["n"] == N and row["correct"] == correct
        if row["part"] == "minimization":
            counts = row["robust_count_at_eps"]
            for pair, vs in row["vs"].items():
                ours, theirs = pair.split(":")
                assert vs["ours_smaller"] + vs["theirs_smaller"] <= correct
                for i, at in enumerate(vs["at_eps"]):
                    diff = counts[ours][i] - counts[theirs][i]
                    assert diff == at["only_theirs"] - at["only_ours"], (row, pair)
            for med in row["median"].values():  # a finite median needs most samples fooled
                assert med == "inf" or isinstance(med, float)
            continue
        counts = row["robust_count"]
        ours, *peers = counts
        assert set(row["vs"]) == set(peers)
        for label, count in counts.items():
            assert 0 <= count <= correct
            assert row["robust"][label] == pytest.approx(count / N)
            assert row["cpu_s"][label] >= 0 and row["wall_s"][label] > 0
        for peer in peers:
            vs = row["vs"][peer]
            assert counts[ours] - counts[peer] == vs["only_theirs"] - vs["only_ours"], row
            assert vs["only_ours"] <= correct - counts[ours]
            assert vs["only_theirs"] <= correct - counts[peer]
