"""The C Newton kernel for CPU tensors (:mod:`car_attacks.core.native_newton`).

References: the compiled solve's iterates (:func:`~car_attacks.core.fused_newton.newton_power`
run eagerly: the same start, powers, stopping rules and iteration counts) and the float64
bisection oracle of ``oracles`` through the whole solve.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from oracles import bisection_eta
from test_fused import BOUNDS, _problem, _solve, check_kernel_takes_the_compiled_iterates

import car_attacks
from car_attacks.core import fused, native_newton


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Wrap ``owner.name`` so that each call appends 1 to the list returned."""
    calls: list[int] = []
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C kernel on (built once per process into the user's cache), compiling off."""
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    monkeypatch.setitem(native_newton._state, "failed", False)
    assert native_newton.available(torch.zeros(1)), "a C compiler is present here"


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_takes_the_compiled_solves_iterates(native, bounds, p, dtype):
    check_kernel_takes_the_compiled_iterates(native_newton.newton_power, bounds, p, dtype)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_blocks_on_several_threads_give_the_one_thread_result(native, monkeypatch, p):
    """Rows split into blocks on 3 threads (one value per thread allowed): bit for bit the
    same, for the Newton solve, the projections and the L-inf scale."""
    x, delta, eps = _problem(9, 7, 0.0, 1.0, p, torch.float32)
    n = x.shape[0]
    args = (x.reshape(n, -1), delta.reshape(n, -1), eps.reshape(n, 1))
    z = args[0] + args[1]

    def run() -> tuple[Any, ...]:
        solve = native_newton.newton_power(*args, p=p, lo=0.0, hi=1.0, max_iter=32)
        projected = [
            native_newton.project(
                args[0], z, eps, p=q, lo=0.0, hi=1.0, max_iter=32, checks=fused.NO_CHECKS
            )
            for q in (p, math.inf)
        ]
        scale = native_newton.linf_eta(*args[:2], eps, lo=0.0, hi=1.0, checks=fused.NO_CHECKS)
        assert solve is not None and scale is not None and None not in projected
        return solve, *projected, scale

    threads = torch.get_num_threads()
    one = run()
    monkeypatch.setattr(native_newton, "VALUES_PER_THREAD", 1)
    torch.set_num_threads(3)
    try:
        assert native_newton._threads(n, 1) == 3
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0].t, many[0].t) and torch.equal(one[0].active_sum, many[0].active_sum)
    assert one[0].iterations == many[0].iterations
    for a, b in zip(one[1:3], many[1:3], strict=True):
        assert torch.equal(a.out, b.out) and a.left is None and b.left is None
    assert torch.equal(one[3].eta, many[3].eta)


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("size", [(5,), (1, 28, 28), (3, 64, 64)])
def test_whole_solve_meets_the_oracle_at_every_sample_size(native, p, size):
    """Any number of values per sample (the C kernel has no minimum), bounds (0, 255)."""
    g = torch.Generator().manual_seed(3)
    bounds = (0.0, 255.0)
    n = 4
    x = 255 * torch.rand((n, *size), generator=g)
    x[:, ..., :1] = 0.0
    delta = torch.randn((n, *size), generator=g)
    m = math.prod(size)
    eps = torch.tensor([0.1, 0.5, 1.0, 3.0]) * 60 * m ** (1 / p)
    eta, info = _solve(x, delta, eps, p, bounds)
    assert info.method == "newton"
    oracle = bisection_eta(*(t.double().numpy() for t in (x, delta, eps)), p, *bounds)
    np.testing.assert_allclose(eta.double().numpy(), oracle.reshape(-1), rtol=2e-5, atol=0)


def test_the_attacks_use_it_from_the_first_call_in_auto_mode(native, monkeypatch):
    """``auto``: the C kernel from the first call (its compile is cheap), the compiled
    kernels only after the break-even."""
    calls = count_calls(monkeypatch, native_newton, "newton_power")
    x, delta, eps = _problem(4, 3, 0.0, 1.0, 2.0, torch.float32)
    assert not fused.compile_enabled()
    _solve(x, delta, eps, 2.0, (0.0, 1.0))
    assert calls == [1]
    # values the C kernel solves (here samples the compiled path would take too) do not
    # count towards compiling the others (ski rental)
    big = torch.rand(2, fused.FUSED_MIN_SIZE), torch.randn(2, fused.FUSED_MIN_SIZE)
    declined = fused._state["declined_values"]
    _solve(*big, torch.tensor([1.0, 2.0]), 2.0, (0.0, 1.0))
    assert calls == [1, 1] and fused._state["declined_values"] == declined
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    _solve(x, delta, eps, 2.0, (0.0, 1.0))
    assert calls == [1, 1]  # "0": never


def test_no_compiler_warns_once_and_the_other_solvers_run(monkeypatch, tmp_path):
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    monkeypatch.setattr(native_newton.shutil, "which", lambda name: None)
    monkeypatch.setitem(native_newton._state, "library", None)
    monkeypatch.setitem(native_newton._state, "failed", False)
    x, delta, eps = _problem(6, 3, 0.0, 1.0, 2.0, torch.float32)
    with pytest.warns(RuntimeWarning, match="could not build the C kernels.*no C compiler"):
        eta, _ = _solve(x, delta, eps, 2.0, (0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = _solve(x, delta, eps, 2.0, (0.0, 1.0))
        projected = car_attacks.project_lp_ball_box(x, x + delta, eps, p=2)  # general path
    assert torch.equal(eta, again)
    moved = torch.linalg.vector_norm((projected - x).reshape(len(x), -1), dim=1)
    assert bool((moved <= eps * (1 + 1e-6)).all()) and bool((projected >= 0).all())
    oracle = bisection_eta(*(t.double().numpy() for t in (x, delta, eps)), 2.0, 0.0, 1.0)
    np.testing.assert_allclose(eta.double().numpy(), oracle.reshape(-1), rtol=2e-5, atol=0)


def test_the_library_is_built_once_into_the_cache_and_reused(monkeypatch, tmp_path):
    """Built once (its compile time recorded), then loaded from the cache (none recorded)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = fused.compile_seconds().get("car_newton", 0.0)
    first = native_newton._build()
    built = fused.compile_seconds().get("car_newton", 0.0)
    assert built > before
    assert first.parent == Path(tmp_path) / "car_attacks" and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert native_newton._build() == first and first.stat().st_mtime_ns == stamp
    assert fused.compile_seconds().get("car_newton", 0.0) == built  # a cache hit
    assert not [p for p in first.parent.iterdir() if p != first]  # no temporary left
    assert native_newton._load(first).car_newton_f64 is not None


def test_a_failing_compile_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native_newton, "FLAGS", ("-this-flag-does-not-exist",))
    monkeypatch.setattr(native_newton, "FLAGS_WITHOUT_OPENMP", ("-nor-does-this-one",))
    with pytest.raises(RuntimeError, match="-this-flag-does-not-exist.*failed"):
        native_newton._build()
    assert not list((Path(tmp_path) / "car_attacks").iterdir())  # the temporary is gone


def _api_outcome(x: torch.Tensor, delta: torch.Tensor, eps: Any) -> Any:
    """``clipping_aware_rescaling``'s result, or the type and message of its error."""
    import car_attacks

    try:
        return car_attacks.clipping_aware_rescaling(x, delta, eps, bounds=(0.0, 1.0))
    except ValueError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize(
    "spoil",
    [
        "nan_x",
        "inf_delta",
        "x_above",
        "negative_eps",
        "nan_eps",
        "tiny_delta_spread",
        "tiny_eps",
        "fine",
    ],
)
def test_public_checks_in_the_kernel_give_the_eager_outcome(native, monkeypatch, spoil):
    """The checks run in the kernel's first pass: the same error (or the same float64
    fallback and result) as the eager path for every kind of bad input."""
    x, delta, eps = _problem(12, 4, 0.0, 1.0, 2.0, torch.float32)
    eps_arg: Any = eps
    if spoil == "nan_x":
        x[2, 0, 5, 5] = math.nan
    elif spoil == "inf_delta":
        delta[1, 1, 2, 2] = math.inf
    elif spoil == "x_above":
        x[3, 2, 0, 0] = 1.5
    elif spoil == "negative_eps":
        eps_arg = eps.clone()
        eps_arg[0] = -1.0
    elif spoil == "nan_eps":
        eps_arg = eps.clone()
        eps_arg[2] = math.nan
    elif spoil == "tiny_delta_spread":  # float64 needed: |delta| spans > 1e12
        delta[1, 0, 3, 3] = 1e-14
    elif spoil == "tiny_eps":
        eps_arg = eps.clone()
        eps_arg[3] = 1e-13
    calls = count_calls(monkeypatch, native_newton, "checked_newton_power")
    got = _api_outcome(x, delta, eps_arg)
    # the kernel looked at the inputs (and solved again in float64 where they need it)
    assert len(calls) == (2 if spoil in ("tiny_delta_spread", "tiny_eps") else 1)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")  # the eager path
    expected = _api_outcome(x, delta, eps_arg)
    if isinstance(expected, tuple):
        assert got == expected
    else:
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=2e-6, atol=0)


def test_without_openmp_the_kernel_is_built_with_threads_of_its_own(monkeypatch, tmp_path):
    """A compiler without an OpenMP runtime (here: -fopenmp refused): the second build."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native_newton, "FLAGS", ("-this-flag-does-not-exist",))
    built = native_newton._build()
    assert built.is_file() and native_newton._load(built).car_project_f32 is not None


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_closed_form_eta_is_the_solvers(native, p, dtype):
    """The kernel's ``eta = t^(1/p) / d_scale`` is, bit for bit, what
    :func:`~car_attacks.core.solvers.eta_from_newton` computes from the same run; a batch
    with an unreachable sample (row 0) gets none (the general closed form serves it)."""
    import dataclasses

    import eagerpy as ep

    from car_attacks.core.solvers import RescalingProblem, eta_from_newton

    x, delta, eps = _problem(13, 6, -1.5, 2.25, p, dtype)
    n = x.shape[0]
    flat = (x.reshape(n, -1), delta.reshape(n, -1), eps.reshape(n, 1))
    every = native_newton.newton_power(*flat, p=p, lo=-1.5, hi=2.25, max_iter=32)
    assert every is not None and every.eta is None and not bool(every.reachable[0])
    rest = native_newton.newton_power(*(t[1:] for t in flat), p=p, lo=-1.5, hi=2.25, max_iter=32)
    assert rest is not None and rest.eta is not None
    problem = RescalingProblem(
        x=ep.astensor(x[1:]),
        delta=ep.astensor(delta[1:]),
        eps=ep.astensor(eps[1:]),
        p=p,
        lo=-1.5,
        hi=2.25,
    )
    expected, _ = eta_from_newton(problem, dataclasses.replace(rest, eta=None))
    assert torch.equal(rest.eta, expected.raw)
    whole = dataclasses.replace(
        problem, x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps)
    )
    assert torch.equal(eta_from_newton(whole, every)[0].raw[1:], rest.eta)


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.5, 3.0, 7.0])
def test_general_p_kernel_gives_the_eager_solve(native, monkeypatch, bounds, p):
    """p other than 1 and 2 (in float64, with the room scaled by eps and capped): the C
    kernel's ``eta`` against the eager solve and the float64 bisection oracle; a batch with
    an unreachable sample (row 0) is left to the eager path, which gives the same answer."""
    x, delta, _ = _problem(17, 6, *bounds, 2.0, torch.float64)
    n = x.shape[0]
    room = torch.where(delta >= 0, bounds[1] - x, x - bounds[0]) * (delta != 0)
    reach = torch.linalg.vector_norm(room.reshape(n, -1), ord=p, dim=1)
    eps = reach * torch.linspace(0.2, 0.9, n, dtype=torch.float64)
    eps[0] = reach[0] * 10
    found = native_newton.general_eta(
        x[1:].reshape(n - 1, -1), delta[1:].reshape(n - 1, -1), eps[1:], p=p,
        lo=bounds[0], hi=bounds[1], max_iter=32,
    )  # fmt: skip
    assert found is not None and 1 < found.iterations <= 32
    calls = count_calls(monkeypatch, native_newton, "general_eta")
    together, _ = _solve(x, delta, eps, p, bounds)  # row 0 unreachable: the eager path
    assert calls == [1]
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    eager, _ = _solve(x, delta, eps, p, bounds)
    np.testing.assert_allclose(found.eta.numpy(), eager[1:].numpy(), rtol=1e-12, atol=0)
    assert torch.equal(together, eager)
    oracle = bisection_eta(x[1:].numpy(), delta[1:].numpy(), eps[1:].numpy(), p, *bounds)
    np.testing.assert_allclose(found.eta.numpy(), oracle, rtol=1e-9, atol=0)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_numpy_core_solve_takes_the_kernels_through_views(native, monkeypatch, p):
    """``solve_eta`` on EagerPy NumPy tensors (the attacks' core call): the C kernels on
    zero-copy PyTorch views, NumPy out, the PyTorch tensors' ``eta`` bit for bit."""
    import eagerpy as ep

    from car_attacks.core.rescaling import solve_eta

    x, delta, eps = _problem(23, 5, 0.0, 1.0, p, torch.float32)
    name = "linf_eta" if p == math.inf else "newton_power"
    calls = count_calls(monkeypatch, native_newton, name)
    arrays = [ep.astensor(t.numpy().copy()) for t in (x, delta, eps)]
    eta = solve_eta(*arrays, p=p, lo=0.0, hi=1.0)
    assert isinstance(eta, ep.NumPyTensor) and eta.raw.dtype == np.float32
    assert calls == [1]
    expected = solve_eta(*(ep.astensor(t) for t in (x, delta, eps)), p=p, lo=0.0, hi=1.0)
    np.testing.assert_array_equal(eta.raw, expected.raw.numpy())


@pytest.mark.parametrize("compile_mode", ["0", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p2_eps_whose_square_is_subnormal_scales_the_room(monkeypatch, compile_mode, dtype):
    """p = 2 with ``eps`` below ``sqrt(tiny)`` of the dtype (``eps^2`` subnormal or 0): the
    room is scaled by ``eps`` before squaring, so ``||min(eta |delta|, r)||_2 = eps`` to
    rounding (it was off by 1e-6 at 1e-158 in float64 and raised at 1e-162), eager and
    through the C kernels, in the public function and the attacks' core call."""
    import eagerpy as ep

    from car_attacks.core.rescaling import solve_eta
    from car_attacks.core.solvers import smallest_squared_eps

    monkeypatch.setenv(fused.COMPILE_ENV, compile_mode)
    monkeypatch.setitem(native_newton._state, "failed", False)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 500, generator=g, dtype=torch.float64).to(dtype)
    delta = torch.randn(3, 500, generator=g, dtype=torch.float64).to(dtype)
    floor = smallest_squared_eps(ep.astensor(x))
    eps = torch.tensor([floor / 2, floor / 1e3, 0.5], dtype=dtype)  # the last: as usual
    room = torch.where(delta >= 0, 1 - x, x).double()

    def achieved(eta: torch.Tensor) -> torch.Tensor:
        moved = torch.minimum(eta.double().reshape(3, 1) * delta.abs().double(), room)
        return torch.linalg.vector_norm(moved / floor, dim=1) * floor

    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    public = car_attacks.clipping_aware_rescaling(x, delta, eps, p=2)
    core = solve_eta(ep.astensor(x), ep.astensor(delta), ep.astensor(eps), p=2.0, lo=0.0, hi=1.0)
    for eta in (public, core.raw):
        np.testing.assert_allclose(achieved(eta).numpy(), eps.double().numpy(), rtol=rtol)
