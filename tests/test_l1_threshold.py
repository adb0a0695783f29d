"""Tests of the sort-free L1 soft threshold (``car_attacks.core.l1_threshold``).

References: the sort-based solve kept as the fallback, ``h(lam) = eps`` itself in
float64 numpy, and Dykstra's alternating projections (``tests/oracles.py``) for
the whole L1-ball ∩ box projection.
"""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import as64, dykstra_projection

import car_attacks
from car_attacks.core.l1_threshold import EagerProblem, _newton, l1_threshold, l1_threshold_sort


def h_of(lam: np.ndarray, a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``sum_i min((a_i - lam)_+, r_i)`` per row, in float64."""
    return np.minimum(np.maximum(a - lam, 0.0), r).sum(axis=1)


def make_threshold_problem(kind: str, seed: int, n_rows: int = 4, n: int = 40):
    """Float64 ``(a, r, eps)`` with ``h(0) > eps`` except where ``kind`` says otherwise."""
    rng = np.random.default_rng(seed)
    a = np.abs(rng.normal(size=(n_rows, n)))
    r = rng.uniform(0.0, 1.0, (n_rows, n)) * (rng.uniform(size=(n_rows, n)) < 0.8)
    if kind == "ties":
        a = np.round(a, 1)
        r = np.round(r, 1)
    elif kind == "zeros_in_w":
        a[:, : n // 2] = 0.0
    elif kind == "saturated":  # |w| far beyond the room: every coordinate saturates
        a = a * 100.0
    elif kind == "no_box":  # the room FMN passes: r = |w|
        r = a.copy()
    h0 = np.minimum(a, r).sum(axis=1)
    eps = h0 * rng.uniform(0.02, 0.98, n_rows)
    if kind == "eps_zero":
        eps[0] = 0.0
    elif kind == "eps_above_reach":
        eps[0] = h0[0] * 2.0
    return a, r, eps


def to_torch(*arrays: np.ndarray, dtype: torch.dtype = torch.float64) -> list[ep.Tensor]:
    return [ep.astensor(torch.tensor(v, dtype=dtype)) for v in arrays]


KINDS = ["general", "ties", "zeros_in_w", "saturated", "no_box", "eps_zero", "eps_above_reach"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_matches_the_sort_solve_and_solves_h_equal_eps(kind, seed):
    a, r, eps = make_threshold_problem(kind, seed)
    size, room, eps_t = to_torch(a, r, eps)
    lam = l1_threshold(size, room, eps_t).raw.numpy()
    lam_sort = l1_threshold_sort(size, room, eps_t).raw.numpy()
    reachable = np.minimum(a, r).sum(axis=1) > eps
    assert lam.shape == (len(a), 1) and np.all(lam >= 0)
    # the projection only sees min((a - lam)_+, r): compare that (flat parts leave lam free)
    magnitude = np.minimum(np.maximum(a - lam, 0.0), r)
    magnitude_sort = np.minimum(np.maximum(a - lam_sort, 0.0), r)
    np.testing.assert_allclose(magnitude[reachable], magnitude_sort[reachable], rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_of(lam, a, r)[reachable], eps[reachable], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(lam[~reachable], 0.0)


@pytest.mark.parametrize("n", [3072, 150528])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_sizes_finish_without_the_fallback(n, dtype):
    """Realistic inputs: Newton alone ends exactly (no sort) within a few steps."""
    rng = np.random.default_rng(n)
    x0 = rng.uniform(size=(2, n))
    w = rng.normal(size=(2, n)) * np.array([[0.1], [3.0]])
    a, r = np.abs(w), np.where(w > 0, 1.0 - x0, x0)
    eps = np.minimum(a, r).sum(axis=1) * np.array([0.05, 0.3])
    size, room, eps_t = to_torch(a, r, eps, dtype=dtype)
    problem, eps_col = EagerProblem(size, room), eps_t.reshape((-1, 1))
    outcome = _newton(problem, eps_col, *problem.start(eps_col), 12)
    assert bool(outcome.done.all().item())
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    np.testing.assert_allclose(h_of(as64(outcome.lam.raw), a, r), eps, rtol=tol)
    np.testing.assert_allclose(
        h_of(as64(outcome.lam.raw), a, r), as64(outcome.h.raw)[:, 0], rtol=tol
    )


def test_float32_agrees_with_float64():
    a, r, eps = make_threshold_problem("general", 7, n=500)
    lam32 = l1_threshold(*to_torch(a, r, eps, dtype=torch.float32)).raw.double().numpy()
    lam64 = l1_threshold(*to_torch(a, r, eps)).raw.numpy()
    np.testing.assert_allclose(lam32, lam64, rtol=1e-5, atol=1e-6)


def test_backends_agree():
    a, r, eps = make_threshold_problem("ties", 3)
    lam_torch = l1_threshold(*to_torch(a, r, eps)).raw.numpy()
    lam_numpy = l1_threshold(*[ep.astensor(v) for v in (a, r, eps)]).raw
    np.testing.assert_allclose(lam_torch, lam_numpy, rtol=1e-13)  # sums differ in order


def test_each_row_is_solved_on_its_own():
    a, r, eps = make_threshold_problem("saturated", 11, n_rows=6)  # some rows need the sort
    together = l1_threshold(*to_torch(a, r, eps)).raw.numpy()
    for i in range(len(a)):
        alone = l1_threshold(*to_torch(a[i : i + 1], r[i : i + 1], eps[i : i + 1])).raw.numpy()
        np.testing.assert_array_equal(alone, together[i : i + 1])


def test_gradient_matches_the_sort_solve():
    """``lam`` stays differentiable in ``a``, ``r`` and ``eps``, with the sort's gradient."""
    a, r, eps = make_threshold_problem("general", 5, n=60)
    grads = []
    for solve in (l1_threshold, l1_threshold_sort):
        raws = [torch.tensor(v, requires_grad=True) for v in (a, r, eps)]
        lam = solve(*[ep.astensor(t) for t in raws]).raw
        grads.append(torch.autograd.grad(lam.sum(), raws))
    for new, old in zip(*grads, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-10, atol=1e-12)
    assert grads[0][2].abs().min() > 0  # d lam / d eps = -1 / |active|


@pytest.mark.parametrize("bounds_kind", ["0_255", "tensor"])
def test_projection_with_other_bounds_matches_dykstra(bounds_kind):
    rng = np.random.default_rng(2)
    shape = (4, 2, 5, 5)
    if bounds_kind == "0_255":
        lo, hi = 0.0, 255.0
    else:
        lo = rng.uniform(-2.0, 0.5, (1,) + shape[1:])
        hi = lo + rng.uniform(0.05, 2.5, (1,) + shape[1:])
    lo_b, hi_b = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)
    x0 = lo_b + rng.uniform(size=shape) * (hi_b - lo_b)
    z = x0 + rng.normal(size=shape) * (hi_b - lo_b) * np.array([0.1, 1.0, 3.0, 30.0]).reshape(
        -1, 1, 1, 1
    )
    reach = np.minimum(np.abs(z - x0), np.where(z > x0, hi_b - x0, x0 - lo_b)).sum((1, 2, 3))
    eps = reach * np.array([0.3, 0.05, 0.5, 1.5])  # the last row: eps above the reachable norm
    as_bound = (lambda b: b) if bounds_kind == "0_255" else torch.tensor
    v = car_attacks.project_lp_ball_box(
        torch.tensor(x0),
        torch.tensor(z),
        torch.tensor(eps),
        p=1,
        bounds=(as_bound(lo), as_bound(hi)),
    )
    scale = 255.0 if bounds_kind == "0_255" else 1.0
    ref = dykstra_projection(x0, z, eps, 1, lo, hi, tol=1e-15 * scale)
    np.testing.assert_allclose(as64(v), ref, rtol=0, atol=1e-8 * scale)
    np.testing.assert_array_equal(as64(v)[3], np.clip(z[3], lo_b[3], hi_b[3]))
