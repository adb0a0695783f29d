"""Tests of the rescaling benchmark: quick run, memory tracker, paper re-implementation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from foolbox.external.clipping_aware_rescaling import l2_clipping_aware_rescaling

from car_attacks.benchmarks.memory import numpy_peak_bytes, torch_peak_bytes
from car_attacks.benchmarks.paper_car import (
    paper_l2_rescaling,
    paper_l2_rescaling_numpy,
    paper_l2_rescaling_torch,
)
from car_attacks.benchmarks.rescaling_cases import QUICK_SIZES, achieved_rel_errors, make_case
from car_attacks.benchmarks.rescaling_methods import (
    EXACT_METHODS,
    NEWTON_API,
    PAPER,
    SOLVER_METHODS,
    VENDORED,
    methods_for,
)
from car_attacks.benchmarks.rescaling_timing import (
    build_parser,
    config_from_args,
    main,
    time_calls,
)

# ------------------------------------------------------------------ memory tracker


def _three_temporaries(x: torch.Tensor) -> torch.Tensor:
    a = x * 2
    b = x + 1
    c = x - 1
    return torch.stack([a.sum(), b.sum(), c.sum()])  # a, b, c alive together; tiny result


def _one_at_a_time(x: torch.Tensor) -> torch.Tensor:
    s = x.new_zeros(())
    for i in range(5):
        s = s + (x * i).sum()  # each temporary is freed before the next one
    return s


def test_tracker_counts_simultaneous_temporaries() -> None:
    x = torch.rand(256, 1024)
    _, peak = torch_peak_bytes(lambda: _three_temporaries(x))
    assert peak / x.nbytes == pytest.approx(3.0, abs=0.01)


def test_tracker_subtracts_freed_storages() -> None:
    x = torch.rand(256, 1024)
    _, peak = torch_peak_bytes(lambda: _one_at_a_time(x))
    assert peak / x.nbytes == pytest.approx(1.0, abs=0.01)


def test_tracker_ignores_views_inplace_and_inputs() -> None:
    x = torch.rand(256, 1024)

    def fn() -> torch.Tensor:
        y = x * 2  # one new storage
        v = y.reshape(-1)[::2].view(-1, 2)  # views of it
        v.add_(1)  # in place on a tracked storage
        x.mul_(1.0)  # in place on an input
        return v

    out, peak = torch_peak_bytes(fn)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert peak / x.nbytes == pytest.approx(1.0, abs=0.01)


def test_numpy_tracemalloc_known_allocation() -> None:
    x = np.random.default_rng(0).random((256, 1024))

    def fn() -> float:
        a, b, c = x * 2, x + 1, x - 1
        return float(a[0, 0] + b[0, 0] + c[0, 0])

    _, peak = numpy_peak_bytes(fn)
    assert peak / x.nbytes == pytest.approx(3.0, abs=0.05)


# ------------------------------------------------------------------ paper re-implementation


@pytest.mark.parametrize("eps", [0.05, 1.0, 4.0, 100.0])  # the last one is unreachable
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_paper_matches_foolbox_vendored(eps: float, bounds: tuple[float, float]) -> None:
    rng = np.random.default_rng(int(eps * 100) + int(bounds[0]))
    a, b = bounds
    x = rng.uniform(a, b, size=(6, 3, 8, 8))
    x[rng.random(x.shape) < 0.1] = b
    x[rng.random(x.shape) < 0.1] = a
    delta = rng.standard_normal(x.shape)
    delta[rng.random(x.shape) < 0.05] = 0.0
    ref = np.asarray(l2_clipping_aware_rescaling(x, delta, eps, a, b))
    ours_np = paper_l2_rescaling_numpy(x, delta, eps, a, b)
    ours_t = paper_l2_rescaling_torch(torch.from_numpy(x), torch.from_numpy(delta), eps, a, b)
    assert ours_np.shape == ref.shape == (6, 1, 1, 1)
    np.testing.assert_allclose(ours_np, ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours_t.numpy(), ref, rtol=1e-6, atol=1e-12)
    dispatched = paper_l2_rescaling(torch.from_numpy(x), torch.from_numpy(delta), eps, a, b)
    np.testing.assert_allclose(dispatched.numpy(), ref, rtol=1e-6, atol=1e-12)


def test_paper_reaches_eps() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(5, 50))
    x[:, :5] = 1.0
    delta = rng.standard_normal(x.shape)
    eps = np.array([0.3, 0.5, 1.0, 1.5, 2.0])
    eta = paper_l2_rescaling_numpy(x, delta, eps)
    moved = np.clip(x + eta * delta, 0, 1) - x
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), eps, rtol=1e-9)


def test_achieved_rel_errors() -> None:
    x = np.array([[0.5, 0.9], [0.0, 1.0]])
    delta = np.array([[1.0, 1.0], [1.0, 1.0]])
    eta = np.array([0.2, 0.5])
    # moves: [0.2, 0.1] (second clipped at 1) and [0.5, 0.0]
    np.testing.assert_allclose(
        achieved_rel_errors(x, delta, eta, 0.3, 1.0), [0.0, 2 / 3], atol=1e-12
    )
    np.testing.assert_allclose(
        achieved_rel_errors(x, delta, eta, 0.5, math.inf), [0.6, 0.0], atol=1e-12
    )


# ------------------------------------------------------------------ quick benchmark run


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: Path = tmp_path_factory.mktemp("bench") / "rescaling.json"
    threads = torch.get_num_threads()
    # one thread: immune to the OpenMP wake-up stalls of a loaded 2-core machine
    args = ["--quick", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-progress"]
    rc = main([*args, "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored
    assert rc == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_quick_json_has_all_rows(quick_result: dict[str, Any]) -> None:
    rows = quick_result["rows"]
    seen = {(r["backend"], r["size"], r["dtype"], r["p"], r["method"]) for r in rows}
    for backend in ("torch", "numpy"):
        for size in QUICK_SIZES:
            for dtype in ("float32", "float64"):
                for p in ("1", "2", "inf"):
                    methods = {"newton", "sort", "bisection", "naive", "newton-api"}
                    if p == "2":
                        methods |= {PAPER, VENDORED}
                    for m in methods:
                        assert (backend, size, dtype, p, m) in seen
    assert len(rows) == len(seen)
    env = quick_result["environment"]
    assert env["torch_num_threads"] == 1
    for key in ("torch", "numpy", "eagerpy", "cpu_count", "platform"):
        assert key in env
    assert "compile_seconds" in env
    assert len(quick_result["targets"]) == 8
    names = " ".join(t["name"] for t in quick_result["targets"])
    for part in ("newton-api <= 1.1", "one-pass equivalents", "project_lp_ball_box"):
        assert part in names
    assert all(t["summary"].split()[0] in ("PASS", "FAIL", "N/A") for t in quick_result["targets"])


def test_quick_errors_and_stats(quick_result: dict[str, Any]) -> None:
    for r in quick_result["rows"]:
        assert r["median_ms"] > 0 and math.isfinite(r["median_ms"])
        assert len(r["times_ms"]) == 1
        tol = 1e-5 if r["dtype"] == "float32" else 1e-12
        if r["method"] in EXACT_METHODS:
            assert r["max_rel_err"] <= tol, r
        if r["method"] == "bisection":
            assert r["max_rel_err"] <= 1e-6, r
            assert r["steps"] is not None and r["steps"] >= 1
            assert r["bisection_rtol"] is not None
        if r["method"] == "naive" and r["p"] != "inf":
            assert r["max_rel_err"] > 1e-3  # clipping matters at the chosen eps
        # the one-pass and projection references are timed alongside every case
        assert r["one_pass_ms"] > 0 and r["project_ms"] > r["one_pass_ms"] / 100
        if r["method"] == "newton":
            assert r["ratio_vs_newton"] == pytest.approx(1.0)
            assert r["peak_extra_mem"] is not None and r["peak_extra_mem"] > 0


def test_every_timed_call_follows_an_untimed_call_of_the_same_function() -> None:
    """Equal cache state: the round-robin never times a function right after another one."""
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = time_calls(fns, repeats=2, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}
    assert calls == ["a", "b", "c"] + ["a", "a", "b", "b", "c", "c"] * 2


def test_sync_brackets_every_timed_call() -> None:
    """On an asynchronous device the clock starts and stops after a synchronisation."""
    events: list[str] = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    time_calls(fns, repeats=1, warmup=0, sync=lambda: events.append("sync"))
    assert events == ["a", "sync", "a", "sync", "b", "sync", "b", "sync"]


def test_newton_api_is_timed_right_after_newton() -> None:
    """The API and the core solve it wraps see the same cache state in a round."""
    for p in (1.0, 2.0, math.inf):
        methods = methods_for(p)
        assert methods[:2] == ["newton", NEWTON_API]
        assert sorted(methods) == sorted(
            set(SOLVER_METHODS) | {NEWTON_API} | ({PAPER, VENDORED} if p == 2 else set())
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda:x"], "--device: not a torch device: 'cuda:x'"),
        (["--device", "meta", "--backends", "torch,numpy"], "NumPy runs on the CPU"),
        (["--device", "meta", "--backends", "torch", "--clock", "cpu"], "does not see device"),
    ],
)
def test_device_option_rejects_bad_combinations(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        config_from_args(build_parser().parse_args(["--quick", *argv]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_device_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available here"):
        config_from_args(
            build_parser().parse_args(["--quick", "--device", "cuda", "--backends", "torch"])
        )


def test_device_option_reaches_the_cases() -> None:
    """``--device`` puts the PyTorch inputs on that device (here: the CPU spelled out)."""
    args = build_parser().parse_args(["--quick", "--device", "cpu", "--backends", "torch"])
    config = config_from_args(args)
    assert config.device == "cpu"
    x64 = np.zeros((2, 4))
    case = make_case(
        backend="torch",
        size="s",
        dtype="float32",
        x64=x64,
        d64=x64,
        eps=1.0,
        p=2.0,
        device=config.device,
    )
    assert case.x.device == torch.device("cpu") and case.eps_ep.raw.device == torch.device("cpu")


def test_a_p_without_exact_projection_is_timed_without_it(tmp_path: Path) -> None:
    """``--ps 3``: every method is timed, the projection reference (p = 1, 2, inf only) is
    left out instead of failing the run."""
    out = tmp_path / "p3.json"
    args = ["--quick", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-progress"]
    rc = main([*args, "--backends", "torch", "--dtypes", "float64", "--ps", "3", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rc == 0 and {r["p"] for r in rows} == {"3"}
    assert all(r["project_ms"] is None and r["one_pass_ms"] > 0 for r in rows)
    assert all(r["max_rel_err"] <= 1e-9 for r in rows if r["method"] in EXACT_METHODS)
