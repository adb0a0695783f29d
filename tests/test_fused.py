"""The fused (torch.compile) hot paths of the CAR solve and the input checks.

Small shapes with :data:`~car_attacks.core.fused.FUSED_MIN_SIZE` lowered, so each kernel
compiles once per process (inductor's disk cache makes later processes fast). References:
the eager solvers on the same inputs and the float64 bisection oracle of ``oracles``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import bisection_eta

import car_attacks
from car_attacks.core import fused, fused_newton, native_newton, rescaling
from car_attacks.core.rescaling import solve_eta_with_info

SHAPE = (3, 12, 12)
BOUNDS = [(0.0, 1.0), (0.0, 255.0), (-1.5, 2.25)]


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


def check_kernel_takes_the_compiled_iterates(
    newton_power: Any, bounds: tuple[float, float], p: float, dtype: torch.dtype
) -> None:
    """A per-sample Newton kernel (``newton_power`` of :mod:`car_attacks.core.native_newton`
    or :mod:`car_attacks.core.triton_newton`) against the compiled solve run eagerly (no
    kernel): the same start, scale, iteration counts and, to float64-sum reordering, ``t``
    and ``S``; a sample with ``eps = 0`` and one that cannot move included."""
    x, delta, eps = _problem(5, 6, *bounds, p, dtype)
    eps[1] = 0.0
    delta[2] = 0.0
    lo, hi = (fused.as_dtype_float(b, x) for b in bounds)
    n = x.shape[0]
    flat = (x.reshape(n, -1), delta.reshape(n, -1), eps.reshape(n, 1))
    run = newton_power(*flat, p=p, lo=lo, hi=hi, max_iter=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(native_newton._state, "failed", True)
        mp.setenv(fused.COMPILE_ENV, "0")
        reference = fused_newton.newton_power(x, delta, eps, p=p, lo=lo, hi=hi, max_iter=32)
    assert run is not None and run.finished and reference.finished
    assert run.iterations == reference.iterations
    for name in ("target", "reachable", "d_scale"):
        assert torch.equal(getattr(run, name), getattr(reference, name)), name
    rtol = 4e-7 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(run.t.numpy(), reference.t.numpy(), rtol=rtol, atol=0)
    np.testing.assert_allclose(
        run.active_sum.numpy(), reference.active_sum.numpy(), rtol=rtol, atol=0
    )


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager solvers from now on: no fused path, no C Newton kernel."""
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1 << 60)
    monkeypatch.setitem(native_newton._state, "failed", True)


@pytest.mark.parametrize("newton", ["native", "inductor"])
@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_solve_matches_eager_and_oracle(small_fused, monkeypatch, bounds, p, dtype, newton):
    """The fused path with the C Newton kernel (where it builds) or inductor's."""
    if newton == "inductor":
        monkeypatch.setitem(native_newton._state, "failed", True)
    else:
        assert native_newton.available(torch.zeros(1)), "the C kernel builds here"
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


def test_the_kernels_compile_once_for_every_batch_size(small_fused, inductor_newton, monkeypatch):
    from torch._dynamo.utils import counters

    for p in (1.0, 2.0, math.inf):
        _solve(*_problem(0, 3, 0.0, 1.0, p, torch.float32), p, (0.0, 1.0))
    graphs = counters["stats"]["unique_graphs"]
    for n, p in [(7, 2.0), (2, 1.0), (11, math.inf), (4, 2.0)]:
        x, delta, eps = _problem(n, n, 0.0, 255.0, p, torch.float32)
        _solve(x[:, :, :5], delta[:, :, :5], eps, p, (0.0, 255.0))
    assert counters["stats"]["unique_graphs"] == graphs
    assert {"_first_sums", "_newton_first", "_linf_pass", "_linf_fastest"} <= set(
        fused.compile_seconds()
    )


def test_compile_time_counts_every_compiling_call(small_fused, monkeypatch):
    """A call that compiles another graph (here: a new flag value) adds its time to the
    kernel's compile seconds; a call that reuses a compiled graph adds nothing."""
    monkeypatch.setattr(fused, "_state", {"failed": False, "compile_s": {}, "declined_values": 0})

    def _scaled_sum(v: torch.Tensor, double: bool) -> torch.Tensor:
        return (2 * v if double else v).sum(dim=1)

    kernel = fused._Kernel(_scaled_sum)
    kernel(torch.ones(3, 5), True)
    first = fused.compile_seconds()["_scaled_sum"]
    assert first > 0
    kernel(torch.ones(4, 6), True)  # dynamic shapes: no new graph
    assert fused.compile_seconds()["_scaled_sum"] == first
    out = kernel(torch.ones(4, 6), False)  # a new graph
    assert torch.equal(out, torch.full((4,), 6.0))
    assert fused.compile_seconds()["_scaled_sum"] > first


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


def test_compiler_failure_warns_once_and_runs_eagerly(small_fused, inductor_newton, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_state", {"failed": False, "compile_s": {}, "declined_values": 0})
    for name in ("_FIRST_SUMS", "_INPUT_STATS", "_CHECKED_FIRST_SUMS"):
        monkeypatch.setattr(fused, name, fused._Kernel(getattr(fused, name).fn))
    for name in ("_NEWTON_FIRST", "_NEWTON_MORE"):
        monkeypatch.setattr(fused_newton, name, fused._Kernel(getattr(fused_newton, name).fn))
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


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_public_api_with_the_first_pass_in_the_checks_matches_eager_and_oracle(
    small_fused, monkeypatch, bounds, p, dtype
):
    x, delta, eps = _problem(13, 5, *bounds, p, dtype)
    eta = car_attacks.clipping_aware_rescaling(x, delta, eps, p=p, bounds=bounds)
    _eager(monkeypatch)
    ref = car_attacks.clipping_aware_rescaling(x, delta, eps, p=p, bounds=bounds)
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(eta.numpy(), ref.numpy(), rtol=rtol, atol=0)
    x64, d64, e64 = (t.double().numpy() for t in (x, delta, eps))
    oracle = bisection_eta(x64, d64, e64, p, *bounds).reshape(-1)
    np.testing.assert_allclose(eta.double().numpy().reshape(-1), oracle, rtol=10 * rtol, atol=0)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_checked_first_pass_matches_a_float64_reference(small_fused, p):
    x, delta, eps = _problem(14, 4, -1.5, 2.25, p, torch.float32)
    stats = fused.checked_first_pass(
        x, delta, eps, p=p, lo=-1.5, hi=2.25, below=-1.5 - 1e-5, above=2.25 + 1e-5
    )
    assert stats.clean
    x64, d64 = (t.double().reshape(4, -1) for t in (x, delta))
    room = torch.where(d64 >= 0, 2.25 - x64, x64 + 1.5).clamp_min(0.0) * (d64 != 0)
    if p == math.inf:
        assert isinstance(stats.first, fused.LinfPass)
        np.testing.assert_allclose(stats.first.reach[:, 0], room.amax(dim=1), rtol=1e-6)
        keep = room >= eps.double().reshape(-1, 1)
        fastest = torch.where(keep, d64.abs(), 0.0).amax(dim=1)
        np.testing.assert_allclose(stats.first.fastest[:, 0], fastest, rtol=1e-7)
        return
    assert isinstance(stats.first, fused.FirstSums) and stats.span is not None
    power = d64.abs() ** p
    np.testing.assert_allclose(stats.first.slope[:, 0], (power * (room > 0)).sum(1), rtol=1e-6)
    np.testing.assert_allclose(stats.first.reach[:, 0], (room**p).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(stats.span.largest, d64.abs().amax(1).float())
    smallest = torch.where(d64 != 0, d64.abs(), math.inf).amin(1).float()
    np.testing.assert_array_equal(stats.span.smallest, smallest)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize(
    "where", ["nan_x", "inf_delta", "outside", "eps_and_x", "eps", "nan_eps", "inf_eps"]
)
def test_checks_fused_with_the_first_pass_reject_bad_input_in_order(small_fused, p, where):
    x, delta, eps = _problem(15, 3, 0.0, 1.0, p, torch.float32)
    if where in ("nan_x", "eps_and_x"):
        x[1, 0, 5, 5], match = math.nan, "x contains 1 non-finite"
    elif where == "inf_delta":
        delta[2, 1, 0, 0], match = -math.inf, "delta contains 1 non-finite"
    elif where == "outside":
        x[0, 2, 3, 3], match = -0.5, "x has values outside the bounds"
    if where in ("eps_and_x", "eps"):
        eps[1] = -1.0
        match = match if where == "eps_and_x" else "eps must be >= 0"
    elif where in ("nan_eps", "inf_eps"):  # checked in the fused pass, eps as passed
        eps[2] = math.nan if where == "nan_eps" else math.inf
        match = "eps contains 1 non-finite"
    with pytest.raises(ValueError, match=match):
        car_attacks.clipping_aware_rescaling(x, delta, eps, p=p)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_the_next_breakpoint_ends_newton_a_pass_early_at_the_same_eta(small_fused, monkeypatch, p):
    g = torch.Generator().manual_seed(16)
    x = torch.rand((4, 3, 32, 32), generator=g)
    delta = torch.randn((4, 3, 32, 32), generator=g)
    room = torch.where(delta >= 0, 1 - x, x).reshape(4, -1)
    eps = 0.5 * (room**p).sum(1) ** (1 / p)  # half the reachable norm: many breakpoints
    eta, info = _solve(x, delta, eps, p, (0.0, 1.0))
    monkeypatch.setattr(fused, "NEXT_BREAKPOINT_STEP", -1.0)  # never looks for it
    eta_plain, info_plain = _solve(x, delta, eps, p, (0.0, 1.0))
    assert info.iterations == info_plain.iterations - 1
    np.testing.assert_allclose(eta.numpy(), eta_plain.numpy(), rtol=1e-6, atol=0)
    _eager(monkeypatch)
    eta_eager, info_eager = _solve(x, delta, eps, p, (0.0, 1.0))
    assert info_eager.iterations == info_plain.iterations
    np.testing.assert_allclose(eta.numpy(), eta_eager.numpy(), rtol=2e-6, atol=0)
    oracle = bisection_eta(*(t.double().numpy() for t in (x, delta, eps)), p, 0.0, 1.0)
    np.testing.assert_allclose(eta.double().numpy(), oracle.reshape(-1), rtol=2e-6, atol=0)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_a_sample_does_not_depend_on_the_batch_when_newton_ends_early(small_fused, p):
    g = torch.Generator().manual_seed(17)
    x = torch.rand((6, 3, 32, 32), generator=g)
    delta = torch.randn((6, 3, 32, 32), generator=g)
    delta[5] *= 1e-3  # another scale: its steps shrink at other iterations
    room = torch.where(delta >= 0, 1 - x, x).reshape(6, -1)
    eps = (0.2 + 0.6 * torch.rand(6, generator=g)) * (room**p).sum(1) ** (1 / p)
    eta, _ = _solve(x, delta, eps, p, (0.0, 1.0))
    for order in ([5], [0, 3], [4, 1, 2]):
        part, _ = _solve(x[order], delta[order], eps[order], p, (0.0, 1.0))
        assert torch.equal(part, eta[order])


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_newton_goes_on_one_pass_per_call_after_the_unrolled_ones(
    small_fused, inductor_newton, monkeypatch, p
):
    x, delta, eps = _problem(18, 6, 0.0, 1.0, p, torch.float32)
    eta, info = _solve(x, delta, eps, p, (0.0, 1.0))
    calls: list[int] = []
    more = fused_newton._NEWTON_MORE

    def counted(*args):
        calls.append(1)
        return more(*args)

    monkeypatch.setattr(fused_newton, "_NEWTON_MORE", counted)
    monkeypatch.setattr(fused_newton, "UNROLLED", 1)  # iterations 3.. one call each
    eta_more, info_more = _solve(x, delta, eps, p, (0.0, 1.0))
    assert len(calls) == info.iterations - 2 > 0
    assert info_more.iterations == info.iterations
    assert torch.equal(eta_more, eta)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_newton_past_the_iteration_cap_falls_back_to_the_sort(small_fused, monkeypatch, p):
    from car_attacks.core import solvers

    x, delta, eps = _problem(19, 5, 0.0, 1.0, p, torch.float32)
    eta, info = _solve(x, delta, eps, p, (0.0, 1.0))
    assert info.iterations > 2
    monkeypatch.setattr(solvers, "NEWTON_MAX_ITER", 2)
    eta_capped, info_capped = _solve(x, delta, eps, p, (0.0, 1.0))
    assert info_capped.fallback_samples > 0  # the eager solve, its Newton capped too
    np.testing.assert_allclose(eta_capped.numpy(), eta.numpy(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_kind", ["tensor", "float", "tiny delta"])
def test_the_common_call_is_the_general_path_bit_for_bit(small_fused, p, dtype, eps_kind):
    """The public function's fast path (plain tensors, float bounds) gives the ``eta`` of the
    general path (here taken by EagerPy inputs) bit for bit, also where float64 is needed."""
    x, delta, eps = _problem(15, 5, -1.5, 2.25, p, dtype)
    eps_arg: torch.Tensor | float = eps
    if eps_kind == "float":
        eps_arg = float(eps[1])
    elif eps_kind == "tiny delta":
        delta[1, 0, 7, 7] = 1e-30  # spans more than FLOAT32_RANGE: float64 for float32 input
    args = {"p": p, "bounds": (-1.5, 2.25)}
    fast = rescaling._common_call(x, delta, eps_arg, p, args["bounds"], 1e-7, 100)
    assert fast is not None
    general = car_attacks.clipping_aware_rescaling(
        ep.astensor(x), ep.astensor(delta), eps_arg, **args
    )
    assert torch.equal(fast, general.raw)
    assert torch.equal(car_attacks.clipping_aware_rescaling(x, delta, eps_arg, **args), fast)


@pytest.mark.parametrize(
    "case", ["plain", "eps at the threshold", "eps below it", "span at the factor", "span below it"]
)
def test_the_fused_float64_test_is_needs_float64(small_fused, case):
    """The float64 test folded into the checked first pass decides as
    :func:`~car_attacks.core.rescaling.needs_float64` on the EagerPy tensors, also on the
    float32 rounding boundaries of its thresholds."""
    x, delta, eps = _problem(16, 4, 0.0, 1.0, 2.0, torch.float32)
    factor, tiny_eps = (torch.tensor(v, dtype=torch.float32) for v in fused.float64_thresholds(1.0))
    below = torch.nextafter  # the float32 number just below
    if case.startswith("eps"):
        eps[2] = tiny_eps if case == "eps at the threshold" else below(tiny_eps, torch.zeros(()))
    elif case.startswith("span"):
        at = delta[3].abs().amax() * factor  # rounded as the test rounds it
        delta[3, 0, 5, 5] = at if case == "span at the factor" else below(at, torch.zeros(()))
    stats = fused.checked_first_pass(x, delta, eps, p=2.0, lo=0.0, hi=1.0, below=0.0, above=1.0)
    expected = rescaling.needs_float64(ep.astensor(delta), ep.astensor(eps), 0.0, 1.0)
    assert stats.clean and stats.wide == expected
    assert expected == case.endswith("below it")


def test_the_public_kernels_compile_once_for_every_batch_size_and_box(small_fused):
    from torch._dynamo.utils import counters

    for p in (1.0, 2.0, math.inf):
        x, delta, eps = _problem(0, 3, 0.0, 1.0, p, torch.float32)
        car_attacks.clipping_aware_rescaling(x, delta, eps, p=p)
    graphs = counters["stats"]["unique_graphs"]
    for n, p in [(7, 2.0), (2, 1.0), (11, math.inf), (4, 2.0)]:
        x, delta, eps = _problem(n, n, -1.5, 2.25, p, torch.float32)
        car_attacks.clipping_aware_rescaling(
            x[:, :, :5], delta[:, :, :5], float(eps[1]), p=p, bounds=(-1.5, 2.25)
        )
    assert counters["stats"]["unique_graphs"] == graphs
