"""Tests of the solvers of the CAR equation (``car_attacks.core.solvers``) and the validation-free
entry points ``solve_eta`` / ``solve_eta_with_info`` that pick them."""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import effective_norm

import car_attacks
from car_attacks.core import solvers
from car_attacks.core.rescaling import METHODS, solve_eta, solve_eta_with_info
from car_attacks.core.solvers import RescalingProblem, bisection, verified


def _inputs(seed: int = 0, n: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n, 3, 5, 5))
    x[rng.random(x.shape) < 0.2] = 1.0
    delta = rng.standard_normal(x.shape)
    eps = np.linspace(0.2, 0.8, n) * car_attacks.reachable_norm(x, delta, p=2)
    return x, delta, eps


def _problem(p: float, seed: int = 0) -> RescalingProblem:
    x, delta, eps = _inputs(seed)
    eps_p = 0.5 * car_attacks.reachable_norm(x, delta, p=p)
    return RescalingProblem(
        x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps_p), p=p, lo=0.0, hi=1.0
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_solve_eta_is_solve_eta_with_info_without_the_info(method: str, p: float) -> None:
    problem = _problem(p)
    args = (problem.x, problem.delta, problem.eps)
    eta = solve_eta(*args, p=p, lo=0.0, hi=1.0, method=method)
    eta_info, info = solve_eta_with_info(*args, p=p, lo=0.0, hi=1.0, method=method)
    np.testing.assert_array_equal(eta.numpy(), eta_info.numpy())
    assert info.method == method
    public = car_attacks.clipping_aware_rescaling(
        problem.x.numpy(), problem.delta.numpy(), problem.eps.numpy(), p=p, method=method
    )
    if method != "naive" and p != 3.0:  # p = 3 is checked (and maybe refined) by the public API
        np.testing.assert_array_equal(public.reshape(-1), eta.numpy())


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_solve_info_counts(p: float) -> None:
    problem = _problem(p)
    args = (problem.x, problem.delta, problem.eps)
    _, newton = solve_eta_with_info(*args, p=p, lo=0.0, hi=1.0, method="newton")
    _, sort = solve_eta_with_info(*args, p=p, lo=0.0, hi=1.0, method="sort")
    _, naive = solve_eta_with_info(*args, p=p, lo=0.0, hi=1.0, method="naive")
    if p == math.inf:  # closed form
        assert newton.iterations == 0
    else:
        assert 1 <= newton.iterations <= solvers.NEWTON_MAX_ITER
    assert newton.fallback_samples == 0
    assert sort.iterations == naive.iterations == 0
    _, short = solve_eta_with_info(
        *args, p=p, lo=0.0, hi=1.0, method="bisection", bisection_max_steps=3
    )
    assert short.iterations == 3


def test_newton_hands_unfinished_samples_to_the_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _problem(2.0)
    args = (problem.x, problem.delta, problem.eps)
    sorted_eta, _ = solve_eta_with_info(*args, p=2.0, lo=0.0, hi=1.0, method="sort")
    monkeypatch.setattr(solvers, "NEWTON_MAX_ITER", 1)
    eta, info = solve_eta_with_info(*args, p=2.0, lo=0.0, hi=1.0, method="newton")
    assert info.iterations == 1
    assert info.fallback_samples == problem.x.shape[0]
    np.testing.assert_allclose(eta.numpy(), sorted_eta.numpy(), rtol=1e-12)


def test_problem_detached_and_float64() -> None:
    x = torch.rand(2, 4, dtype=torch.float32, requires_grad=True)
    lo = ep.astensor(torch.zeros(1, 4, requires_grad=True))
    problem = RescalingProblem(
        x=ep.astensor(x),
        delta=ep.astensor(torch.randn(2, 4)),
        eps=ep.astensor(torch.full((2,), 0.5)),
        p=2.0,
        lo=lo,
        hi=1.0,
    )
    detached = problem.detached()
    assert not detached.x.raw.requires_grad
    assert isinstance(detached.lo, ep.Tensor) and not detached.lo.raw.requires_grad
    assert detached.hi == 1.0
    wide = problem.float64()
    assert wide.x.raw.dtype == wide.delta.raw.dtype == wide.eps.raw.dtype == torch.float64
    assert isinstance(wide.lo, ep.Tensor) and wide.lo.raw.dtype == torch.float64
    assert wide.p == 2.0 and wide.hi == 1.0


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_verified_replaces_a_wrong_eta_by_the_bisection(p: float) -> None:
    problem = _problem(p, seed=1)
    exact, _ = solve_eta_with_info(
        problem.x, problem.delta, problem.eps, p=p, lo=0.0, hi=1.0, method="sort"
    )
    assert verified(problem, exact) is exact  # right: returned unchanged
    wrong = exact * ep.astensor(np.array([1.0, 2.0, 1.0, 0.5, 1.0, 1.0]))
    fixed = verified(problem, wrong).numpy()
    x, delta, eps = problem.x.numpy(), problem.delta.numpy(), problem.eps.numpy()
    norms = effective_norm(x, delta, fixed, p, 0.0, 1.0)
    np.testing.assert_allclose(norms, eps, rtol=1e-12)
    np.testing.assert_array_equal(fixed[[0, 2, 4, 5]], wrong.numpy()[[0, 2, 4, 5]])


def test_bisection_is_not_differentiable_and_reports_its_steps() -> None:
    x, delta, eps = (torch.tensor(a) for a in _inputs(2))
    x.requires_grad_(True)
    problem = RescalingProblem(
        x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps), p=2.0, lo=0.0, hi=1.0
    )
    eta, info = bisection(problem, 1e-9, 200)
    assert not eta.raw.requires_grad
    assert info.method == "bisection" and 1 <= info.iterations < 200
