"""Tests of ``car_attacks.project_lp_ball_box`` against Dykstra's alternating projections.

The reference (``tests/oracles.py``) alternates exact projections onto the ball
(L1: Duchi's sort-based projection, L2: radial scaling, Linf: clipping) and the
box, in float64, until it stops moving; it shares no code with the package.
"""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import as64, dykstra_projection, lp_norm, project_then_clip

import car_attacks
from car_attacks.core import fused, native_newton

P_PROJ = [1.0, 2.0, math.inf]
SCENARIOS = [
    "general",  # z far outside the box and the ball
    "z_inside_ball",  # ||z - x0|| < eps but z outside the box
    "z_inside_both",  # nothing to do
    "x0_on_bounds",  # many centre coordinates on the bounds, z pushing out
    "per_element_bounds",
    "per_sample_eps",  # including eps = 0 and a huge eps
    "tiny_eps",
]


@pytest.fixture(autouse=True, params=["eager", "c-kernel"])
def solver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: the eager projections (``CAR_ATTACKS_COMPILE=0``, the suite's
    default) and the C kernels the ``auto`` default uses on CPU tensors
    (:func:`~car_attacks.core.native_newton.project`)."""
    if request.param == "c-kernel":
        monkeypatch.setenv(fused.COMPILE_ENV, "auto")
        monkeypatch.setitem(native_newton._state, "failed", False)
        assert native_newton.available(torch.zeros(1)), "a C compiler is present here"
    return str(request.param)


def proj(*args, **kwargs):
    return car_attacks.project_lp_ball_box(*args, **kwargs)


def make_problem(scenario: str, p: float, d: int, seed: int, n: int = 5):
    """Float64 numpy (x0, z, eps, lo, hi) for a scenario; eps is an (n,) array."""
    rng = np.random.default_rng(seed)
    shape = (n, d)
    lo, hi = 0.0, 1.0
    if scenario == "per_element_bounds":
        lo = rng.uniform(-2.0, 0.5, (1, d))
        hi = lo + rng.uniform(0.05, 2.5, (1, d))
    lo_b, hi_b = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)
    x0 = lo_b + rng.uniform(size=shape) * (hi_b - lo_b)
    # typical ball size: a fraction of the box's own Lp "diameter"
    scale = lp_norm(np.broadcast_to(hi_b - lo_b, shape), p)
    eps = rng.uniform(0.05, 0.4, n) * scale
    w = rng.normal(size=shape) * (hi_b - lo_b)
    z = x0 + w * rng.uniform(0.5, 3.0, (n, 1))
    if scenario == "z_inside_ball":
        z = x0 + w * (0.9 * eps / lp_norm(w, p))[:, None]
        # push a few coordinates outside the box while staying inside the ball
        x0[:, :2] = np.where(w[:, :2] > 0, hi_b[:, :2], lo_b[:, :2])
        z = x0 + w * (0.9 * eps / lp_norm(w, p))[:, None]
    elif scenario == "z_inside_both":
        z = np.clip(x0 + w * (0.5 * eps / lp_norm(w, p))[:, None], lo_b, hi_b)
    elif scenario == "x0_on_bounds":
        on = rng.uniform(size=shape) < 0.5
        x0 = np.where(on, np.where(w > 0, hi_b, lo_b), x0)
        z = x0 + w * 2.0
    elif scenario == "per_sample_eps":
        eps[0] = 0.0
        eps[1] = 1e3 * scale[1]  # the ball contains the box: projection = clip(z)
    elif scenario == "tiny_eps":
        eps = 1e-6 * scale
    return x0, z, eps, lo, hi


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("d", [2, 5, 17, 40])
@pytest.mark.parametrize("p", P_PROJ)
def test_matches_dykstra(p, d, scenario):
    x0, z, eps, lo, hi = make_problem(scenario, p, d, seed=d * 7 + len(scenario))
    bounds = (lo, hi) if isinstance(lo, float) else (torch.tensor(lo), torch.tensor(hi))
    v = proj(torch.tensor(x0), torch.tensor(z), torch.tensor(eps), p=p, bounds=bounds)
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float64
    assert tuple(v.shape) == x0.shape
    ref = dykstra_projection(x0, z, eps, p, lo, hi)
    np.testing.assert_allclose(as64(v), ref, rtol=0, atol=1e-8)
    if scenario == "z_inside_both":
        np.testing.assert_array_equal(as64(v), z)
    if scenario == "per_sample_eps":
        np.testing.assert_array_equal(as64(v)[0], x0[0])  # eps = 0
        np.testing.assert_allclose(as64(v)[1], np.clip(z[1], lo, hi), rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", P_PROJ)
def test_images_with_per_channel_bounds(p):
    rng = np.random.default_rng(1)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    lo, hi = (-mean / std).reshape(1, 3, 1, 1), ((1 - mean) / std).reshape(1, 3, 1, 1)
    shape = (3, 3, 6, 6)
    x0 = lo + rng.uniform(size=shape) * (hi - lo)
    x0[:, :, 0, :] = np.broadcast_to(lo, shape)[:, :, 0, :]  # a row on the lower bound
    z = x0 + rng.normal(size=shape) * 2.0
    eps = np.array([0.5, 3.0, 10.0]) if p != math.inf else np.array([0.05, 0.3, 1.0])
    if p == 1:
        eps = eps * 10
    for lo_t, hi_t in (
        (torch.tensor(lo), torch.tensor(hi)),
        (torch.tensor(lo[0]), torch.tensor(hi[0])),
    ):
        v = proj(torch.tensor(x0), torch.tensor(z), torch.tensor(eps), p=p, bounds=(lo_t, hi_t))
        ref = dykstra_projection(x0, z, eps, p, lo, hi)
        np.testing.assert_allclose(as64(v), ref, rtol=0, atol=1e-8)


def check_feasible(v, x0, eps, p, lo, hi, box_atol=0.0):
    """v in the box (exactly, unless box_atol) and in the ball up to rounding.

    The ball is checked to relative 1e-12 plus a few ulps of the coordinates:
    ``x0 + (v - x0)`` is not exact in floating point, which matters for tiny eps.
    """
    lo_b, hi_b = np.broadcast_to(lo, v.shape), np.broadcast_to(hi, v.shape)
    assert np.all(v >= lo_b - box_atol), (v - lo_b).min()
    assert np.all(v <= hi_b + box_atol), (v - hi_b).max()
    norms = lp_norm(v - x0, p)
    ulps = 4 * v[0].size * np.finfo(np.float64).eps * max(1.0, np.abs(x0).max())
    assert np.all(norms <= eps * (1 + 1e-12) + ulps), (norms - eps).max()


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("p", P_PROJ)
def test_feasible_idempotent_and_optimal(p, scenario):
    for seed, d in enumerate((3, 11, 40)):
        x0, z, eps, lo, hi = make_problem(scenario, p, d, seed=100 + seed)
        bounds = (lo, hi)
        v = proj(x0, z, eps, p=p, bounds=bounds)
        assert isinstance(v, np.ndarray) and v.dtype == np.float64
        check_feasible(v, x0, eps, p, lo, hi, box_atol=1e-15)  # exact: see test below
        # idempotent
        v2 = proj(x0, v, eps, p=p, bounds=bounds)
        np.testing.assert_allclose(v2, v, rtol=0, atol=1e-12)
        # no farther from z than the project-then-clip point (also feasible)
        ptc = project_then_clip(x0, z, eps, p, lo, hi)
        check_feasible(ptc, x0, eps, p, lo, hi)
        dist_v = np.linalg.norm(v - z, axis=1)
        dist_ptc = np.linalg.norm(ptc - z, axis=1)
        assert np.all(dist_v <= dist_ptc + 1e-12), dist_v - dist_ptc
        # optimality: (z - v) . (w - v) <= 0 for feasible w (variational inequality)
        rng = np.random.default_rng(seed)
        for i in range(len(x0)):
            cands = x0[i] + rng.normal(size=(300, d)) * rng.uniform(0, 2, (300, 1))
            w = project_then_clip(
                np.repeat(x0[i : i + 1], 300, 0),
                cands,
                np.full(300, eps[i]),
                p,
                np.broadcast_to(lo, x0.shape)[i],
                np.broadcast_to(hi, x0.shape)[i],
            )
            inner = (w - v[i]) @ (z[i] - v[i])
            assert inner.max() <= 1e-10, inner.max()


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("p", P_PROJ)
def test_result_is_exactly_inside_the_box(p, scenario):
    """No coordinate leaves [lo, hi], not even by one ulp (attacks feed v to models)."""
    for seed, d in enumerate((3, 11, 40)):
        x0, z, eps, lo, hi = make_problem(scenario, p, d, seed=100 + seed)
        v = proj(x0, z, eps, p=p, bounds=(lo, hi))
        lo_b, hi_b = np.broadcast_to(lo, v.shape), np.broadcast_to(hi, v.shape)
        assert np.all(v >= lo_b), (v - lo_b).min()
        assert np.all(v <= hi_b), (v - hi_b).max()


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_strictly_closer_than_project_then_clip(p):
    """x0 = (0.9, 0.5), z = (1.9, 1.5), eps = 0.5 in [0, 1]^2.

    L2: project-then-clip gives (1, 0.5 + 0.5/sqrt 2); the projection is
    (1, 0.5 + sqrt(0.24)).  L1: project-then-clip gives (1, 0.75); the
    projection is (1, 0.9).
    """
    x0 = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    z = torch.tensor([[1.9, 1.5]], dtype=torch.float64)
    v = proj(x0, z, 0.5, p=p).numpy()[0]
    expected = [1.0, 0.5 + math.sqrt(0.24)] if p == 2 else [1.0, 0.9]
    np.testing.assert_allclose(v, expected, rtol=0, atol=1e-12)
    ptc = project_then_clip(x0.numpy(), z.numpy(), 0.5, p, 0.0, 1.0)[0]
    assert np.linalg.norm(v - z.numpy()[0]) < np.linalg.norm(ptc - z.numpy()[0]) - 0.05


def test_linf_is_clip_of_clip():
    rng = np.random.default_rng(2)
    x0 = rng.uniform(size=(4, 30))
    z = x0 + rng.normal(size=(4, 30))
    eps = np.array([0.0, 0.01, 0.2, 5.0])
    v = proj(x0, z, eps, p="inf")
    expected = np.clip(z, np.maximum(0, x0 - eps[:, None]), np.minimum(1, x0 + eps[:, None]))
    np.testing.assert_allclose(v, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, "inf", 1, 2])
@pytest.mark.parametrize("frame", ["torch", "numpy", "ep-torch", "ep-numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tensor_types_round_trip(frame, dtype, p):
    rng = np.random.default_rng(3)
    shape = (3, 3, 4, 4)
    x0 = rng.uniform(size=shape)
    z = x0 + rng.normal(size=shape)
    p_num = math.inf if p == "inf" else float(p)
    eps = np.array([0.1, 0.5, 2.0]) * (4 if p_num == 1 else 1)

    def conv(a):
        if frame.endswith("torch"):
            t = torch.tensor(a, dtype=getattr(torch, dtype))
        else:
            t = np.asarray(a, dtype=dtype)
        return ep.astensor(t) if frame.startswith("ep") else t

    x0_t, z_t, eps_t = conv(x0), conv(z), conv(eps)
    v = proj(x0_t, z_t, eps_t, p=p)
    assert type(v) is type(x0_t)
    raw = v.raw if isinstance(v, ep.Tensor) else v
    assert str(raw.dtype).endswith(dtype)
    assert tuple(v.shape) == shape
    ref = dykstra_projection(as64(x0_t), as64(z_t), as64(eps_t), p_num, 0.0, 1.0)
    np.testing.assert_allclose(as64(v), ref, rtol=0, atol=1e-8 if dtype == "float64" else 1e-5)


def test_scalar_eps_equals_per_sample_eps():
    rng = np.random.default_rng(4)
    x0 = torch.tensor(rng.uniform(size=(3, 20)))
    z = x0 + torch.tensor(rng.normal(size=(3, 20)))
    for p in P_PROJ:
        a = proj(x0, z, 0.3, p=p)
        b = proj(x0, z, torch.full((3,), 0.3, dtype=torch.float64), p=p)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("p", P_PROJ)
def test_sample_independence(p):
    x0, z, eps, lo, hi = make_problem("general", p, 12, seed=5, n=4)
    full = proj(x0, z, eps, p=p)
    for i in range(4):
        single = proj(x0[i : i + 1], z[i : i + 1], eps[i : i + 1], p=p)
        np.testing.assert_allclose(single, full[i : i + 1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_unchecked_projection_of_half_precision_runs_in_float32(
    dtype: torch.dtype, p: float
) -> None:
    """The attacks' projection on half-precision ImageNet-sized inputs (whose L1 sums exceed
    float16's 65,504): the float32 projection, rounded to the input's dtype."""
    import eagerpy as ep

    from car_attacks.core.projection import project_unchecked

    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 3, 224, 224, generator=gen).to(dtype)
    z = (x0.float() + torch.randn(2, 3, 224, 224, generator=gen)).to(dtype)
    eps = torch.tensor([20.0, 100.0]) if p == 1 else torch.tensor([1.0, 5.0])
    out = project_unchecked(
        ep.astensor(x0), ep.astensor(z), ep.astensor(eps.to(dtype)), p=p, lo=0.0, hi=1.0
    ).raw
    ref = project_unchecked(
        ep.astensor(x0.float()), ep.astensor(z.float()), ep.astensor(eps), p=p, lo=0.0, hi=1.0
    ).raw
    assert out.dtype == dtype and torch.equal(out, ref.to(dtype))
    # the float32 projection is on the sphere; rounding every coordinate to the half dtype
    # moves the result by more than eps's own rounding, so it is checked before rounding
    norms = (ref.double() - x0.double()).flatten(1).norm(p=p, dim=1)
    assert torch.allclose(norms, eps.double(), rtol=1e-4)
