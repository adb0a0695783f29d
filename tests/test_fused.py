"""The fused (torch.compile) hot paths of the CAR solve and the input checks.

Small shapes with :data:`~car_attacks.core.fused.FUSED_MIN_SIZE` lowered, so each kernel
compiles once per process (inductor's disk cache makes later processes fast). References:
the eager solvers on the same inputs and the float64 bisection oracle of ``oracles``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import bisection_eta

import car_attacks
from car_attacks.core import fused
from car_attacks.core.rescaling import solve_eta_with_info

SHAPE = (3, 12, 12)
BOUNDS = [(0.0, 1.0), (0.0, 255.0), (-1.5, 2.25)]


@pytest.fixture
def small_fused(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fused path for the small test shapes, compiling (compilation is opt-in)."""
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    yield


def _problem(
    seed: int, n: int, lo: float, hi: float, p: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = hi - lo
    x = (lo + width * torch.rand((n, *SHAPE), generator=g, dtype=torch.float64)).to(dtype)
    x[:, 0, :3] = lo  # some coordinates on the bounds
    x[:, 1, :3] = hi
    delta = torch.randn((n, *SHAPE), generator=g, dtype=torch.float64).to(dtype)
    delta[:, 2, :2] = 0.0  # some that do not move
    size = math.prod(SHAPE)
    scale = {1.0: 0.05 * size, 2.0: 0.1 * math.sqrt(size), math.inf: 0.1}[p]
    eps = (width * scale * (0.2 + 2 * torch.rand(n, generator=g, dtype=torch.float64))).to(dtype)
    eps[0] = width * {1.0: size, 2.0: math.sqrt(size), math.inf: 1.0}[p] * 10  # unreachable
    return x, delta, eps


def _solve(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, p: float, bounds) -> tuple:
    eta, info = solve_eta_with_info(
        ep.astensor(x), ep.astensor(delta), ep.astensor(eps), p=p, lo=bounds[0], hi=bounds[1]
    )
    return eta.raw, info


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1 << 60)


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_solve_matches_eager_and_oracle(small_fused, monkeypatch, bounds, p, dtype):
    x, delta, eps = _problem(3, 5, *bounds, p, dtype)
    eta, info = _solve(x, delta, eps, p, bounds)
    _eager(monkeypatch)
    eta_eager, info_eager = _solve(x, delta, eps, p, bounds)
    assert info.iterations == info_eager.iterations
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(eta.numpy(), eta_eager.numpy(), rtol=rtol, atol=0)
    x64, d64, e64 = (t.double().numpy() for t in (x, delta, eps))
    oracle = bisection_eta(x64, d64, e64, p, *bounds).reshape(-1)
    np.testing.assert_allclose(eta.double().numpy(), oracle, rtol=10 * rtol, atol=0)


def test_the_kernels_compile_once_for_every_batch_size(small_fused, monkeypatch):
    from torch._dynamo.utils import counters

    for p in (1.0, 2.0, math.inf):
        _solve(*_problem(0, 3, 0.0, 1.0, p, torch.float32), p, (0.0, 1.0))
    graphs = counters["stats"]["unique_graphs"]
    for n, p in [(7, 2.0), (2, 1.0), (11, math.inf), (4, 2.0)]:
        x, delta, eps = _problem(n, n, 0.0, 255.0, p, torch.float32)
        _solve(x[:, :, :5], delta[:, :, :5], eps, p, (0.0, 255.0))
    assert counters["stats"]["unique_graphs"] == graphs
    assert {"_power_sums", "_linf_reach", "_linf_fastest"} <= set(fused.compile_seconds())


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(small_fused):
    x, delta, eps = _problem(5, 6, 0.0, 255.0, 2.0, torch.float32)
    eta, _ = _solve(x, delta, eps, 2.0, (0.0, 255.0))
    order = torch.tensor([4, 1, 5])
    part, _ = _solve(x[order], delta[order], eps[order], 2.0, (0.0, 255.0))
    assert torch.equal(part, eta[order])
    alone, _ = _solve(x[2:3], delta[2:3], eps[2:3], 2.0, (0.0, 255.0))
    assert torch.equal(alone, eta[2:3])


def test_the_path_depends_on_the_size_of_a_sample_not_of_the_batch() -> None:
    x = torch.zeros((1, fused.FUSED_MIN_SIZE))
    assert fused.compile_enabled() == fused.fusable(x, x, 0.0, 1.0)
    assert fused.fusable(x.expand(64, -1), x.expand(64, -1), 0.0, 1.0) == fused.fusable(
        x, x, 0.0, 1.0
    )
    small = torch.zeros((10_000, fused.FUSED_MIN_SIZE - 1))
    assert not fused.fusable(small, small, 0.0, 1.0)


def test_compiler_failure_warns_once_and_runs_eagerly(small_fused, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_state", {"failed": False, "compile_s": {}})
    for name in ("_POWER_SUMS", "_ROW_MAX_ABS", "_INPUT_STATS"):
        monkeypatch.setattr(fused, name, fused._Kernel(getattr(fused, name).fn))
    x, delta, eps = _problem(8, 4, 0.0, 1.0, 2.0, torch.float32)
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as record:
        first = car_attacks.clipping_aware_rescaling(x, delta, eps)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = car_attacks.clipping_aware_rescaling(x, delta, eps)
    assert not fused.fusable(x, delta, 0.0, 1.0)  # from now on the eager solvers run
    np.testing.assert_allclose(first.numpy(), again.numpy(), rtol=2e-6)


def test_public_api_with_fused_checks_matches_eager(small_fused, monkeypatch):
    x, delta, eps = _problem(9, 4, 0.0, 255.0, 2.0, torch.float32)
    z = x + 40 * delta
    args = {"bounds": (0.0, 255.0)}
    eta = car_attacks.clipping_aware_rescaling(x, delta, eps, **args)
    proj = {p: car_attacks.project_lp_ball_box(x, z, eps, p=p, **args) for p in (1, 2, "inf")}
    _eager(monkeypatch)
    np.testing.assert_allclose(
        eta.numpy(), car_attacks.clipping_aware_rescaling(x, delta, eps, **args).numpy(), rtol=2e-6
    )
    for p, v in proj.items():
        ref = car_attacks.project_lp_ball_box(x, z, eps, p=p, **args)
        np.testing.assert_allclose(v.numpy(), ref.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("where", ["nan_x", "inf_delta", "outside"])
def test_fused_checks_still_reject_bad_input(small_fused, where):
    x, delta, eps = _problem(10, 3, 0.0, 1.0, 2.0, torch.float32)
    if where == "nan_x":
        x[1, 0, 5, 5], match = math.nan, "x contains 1 non-finite"
    elif where == "inf_delta":
        delta[2, 1, 0, 0], match = math.inf, "delta contains 1 non-finite"
    else:
        x[0, 2, 3, 3], match = 1.5, "x has values outside the bounds"
    with pytest.raises(ValueError, match=match):
        car_attacks.clipping_aware_rescaling(x, delta, eps)


def test_fused_checks_send_wide_ranges_to_float64(small_fused, monkeypatch):
    x, delta, eps = _problem(11, 3, 0.0, 1.0, 2.0, torch.float32)
    delta[1, 0, 7, 7] = 1e-14  # spans more than FLOAT32_RANGE
    eta = car_attacks.clipping_aware_rescaling(x, delta, eps)
    _eager(monkeypatch)
    ref = car_attacks.clipping_aware_rescaling(x, delta, eps)
    assert torch.equal(eta, ref)  # both solved in float64, rounded to float32


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_gradients_through_the_fused_solve_match_eager(small_fused, monkeypatch, p):
    x, delta, eps = _problem(12, 3, 0.0, 1.0, p, torch.float64)

    def grads() -> list[torch.Tensor]:
        leaves = [t.clone().requires_grad_(True) for t in (x, delta, eps)]
        car_attacks.clipping_aware_rescaling(*leaves, p=p).sum().backward()
        return [leaf.grad for leaf in leaves]

    fast = grads()
    _eager(monkeypatch)
    for a, b in zip(fast, grads(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
