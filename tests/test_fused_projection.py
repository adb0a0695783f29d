"""The fused (torch.compile) L1 and L2 ball ∩ box projections (``core.fused_projection``).

Small shapes with :data:`~car_attacks.core.fused.FUSED_MIN_SIZE` lowered, so each kernel
compiles once per process. References: the eager path on the same inputs, Dykstra's
alternating projections in float64 (``tests/oracles.py``) and ``h(lam) = eps`` itself.
"""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest
import torch
from oracles import dykstra_projection

import car_attacks
from car_attacks.core import fused, fused_projection, native_newton
from car_attacks.core.l1_threshold import L1_NEWTON_MAX_ITER, _newton

SHAPE = (3, 8, 8)
BOUNDS = [(0.0, 1.0), (0.0, 255.0), (-1.5, 2.25)]


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager solvers from now on: no fused path, no C Newton kernel."""
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1 << 60)
    monkeypatch.setitem(native_newton._state, "failed", True)


def _problem(
    seed: int, n: int, lo: float, hi: float, p: float, dtype: torch.dtype, spread: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, z, eps)``: some centre coordinates on the bounds, some not moving, row 0
    inside the ball (eps above the reach), the others at a share of it."""
    g = torch.Generator().manual_seed(seed)
    width = hi - lo
    x0 = lo + width * torch.rand((n, *SHAPE), generator=g, dtype=torch.float64)
    x0[:, 0, :3] = lo
    x0[:, 1, :3] = hi
    w = width * spread * torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    w[:, 2, :2] = 0.0
    z = x0 + w * (0.3 + 3 * torch.rand((n, 1, 1, 1), generator=g, dtype=torch.float64))
    moved = (z.clamp(lo, hi) - x0).reshape(n, -1)
    reach = moved.abs().sum(1) if p == 1 else moved.norm(dim=1)
    eps = reach * (0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64))
    eps[0] = reach[0] * 2
    return x0.to(dtype), z.to(dtype), eps.to(dtype)


def _project(x0, z, eps, p, bounds):
    return car_attacks.project_lp_ball_box(x0, z, eps, p=p, bounds=bounds)


def _used_fused(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the fused entry points called."""
    calls: list[str] = []
    for name in ("project_l1_fused", "l2_output"):
        original = getattr(fused_projection, name)

        def recording(*args, _original=original, _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(fused_projection, name, recording)
    return calls


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_projection_matches_eager_and_dykstra(
    small_fused, inductor_newton, monkeypatch, bounds, p, dtype
):
    x0, z, eps = _problem(3, 5, *bounds, p, dtype)
    calls = _used_fused(monkeypatch)
    v = _project(x0, z, eps, p, bounds)
    assert calls == [{1.0: "project_l1_fused", 2.0: "l2_output"}[p]]
    _eager(monkeypatch)
    v_eager = _project(x0, z, eps, p, bounds)
    assert len(calls) == 1  # the eager path ran the second time
    width = bounds[1] - bounds[0]
    atol = width * (1e-5 if dtype == torch.float32 else 1e-11)
    np.testing.assert_allclose(v.double().numpy(), v_eager.double().numpy(), rtol=0, atol=atol)
    x64, z64, e64 = (t.double().numpy() for t in (x0, z, eps))
    ref = dykstra_projection(x64, z64, e64, p, *bounds, tol=1e-15 * width)
    np.testing.assert_allclose(v.double().numpy(), ref, rtol=0, atol=10 * atol)
    assert float(v.min()) >= bounds[0] and float(v.max()) <= bounds[1]
    np.testing.assert_allclose(v[0].numpy(), z[0].clamp(*bounds).numpy(), rtol=0, atol=atol)
    moved = (v.double() - x0.double()).reshape(len(v), -1)
    norms = moved.abs().sum(1) if p == 1 else moved.norm(dim=1)
    assert torch.all(norms <= eps.double() * (1 + (1e-6 if dtype == torch.float32 else 1e-12)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_l1_saturated_rows_take_the_flat_steps(small_fused, monkeypatch, dtype):
    """|w| far beyond the room: at lam = 0 every moving coordinate is saturated and h is
    flat above eps; the fused steps jump to the next breakpoint as the eager ones do."""
    x0, z, eps = _problem(5, 4, 0.0, 1.0, 1.0, dtype, spread=100.0)
    v = _project(x0, z, eps, 1, (0.0, 1.0))
    _eager(monkeypatch)
    v_eager = _project(x0, z, eps, 1, (0.0, 1.0))
    # lam is close to |w| ~ 100: |w| - lam carries ulps of 100
    atol = 100 * (1e-6 if dtype == torch.float32 else 1e-13)
    np.testing.assert_allclose(v.double().numpy(), v_eager.double().numpy(), rtol=0, atol=atol)
    # (z far outside the box: Dykstra's iterates move by ulps of |w| ~ 100)
    ref = dykstra_projection(*(t.double().numpy() for t in (x0, z, eps)), 1.0, 0.0, 1.0, tol=1e-12)
    np.testing.assert_allclose(v.double().numpy(), ref, rtol=0, atol=max(10 * atol, 1e-9))


def test_fused_newton_solves_h_equal_eps_exactly(small_fused):
    """The fused Newton alone ends exactly on ``h(lam) = eps`` (float64 reference)."""
    x0, z, eps = _problem(7, 6, 0.0, 1.0, 1.0, torch.float64)
    n = len(x0)
    xf, zf = x0.reshape(n, -1), z.reshape(n, -1)
    problem = fused_projection.FusedProblem(xf, zf, 0.0, 1.0)
    eps_col = ep.astensor(eps.reshape(n, 1))
    outcome = _newton(problem, eps_col, *problem.start(eps_col), L1_NEWTON_MAX_ITER)
    assert bool(outcome.done.all().item())
    w = (zf - xf).numpy()
    a, r = np.abs(w), np.where(w >= 0, 1.0 - xf.numpy(), xf.numpy())
    lam = outcome.lam.raw.numpy()
    h = np.minimum(np.maximum(a - lam, 0.0), r).sum(1)
    reachable = np.minimum(a, r).sum(1) > eps.numpy()
    np.testing.assert_allclose(h[reachable], eps.numpy()[reachable], rtol=1e-12)
    np.testing.assert_allclose(outcome.h.raw.numpy()[:, 0], h, rtol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_fused_rows_are_independent_of_the_batch(small_fused, p):
    """Alone or in a batch, a sample's projection agrees to rounding (the compiled
    reductions may split a row differently for other batch sizes)."""
    x0, z, eps = _problem(9, 5, 0.0, 1.0, p, torch.float64)
    together = _project(x0, z, eps, p, (0.0, 1.0))
    for i in range(len(x0)):
        alone = _project(x0[i : i + 1], z[i : i + 1], eps[i : i + 1], p, (0.0, 1.0))
        np.testing.assert_allclose(alone.numpy(), together[i : i + 1].numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_tensor_bounds_and_gradients_stay_eager(small_fused, inductor_newton, monkeypatch, p):
    """Tensor bounds or a gradient through the inputs: the eager path (differentiable)."""
    calls = _used_fused(monkeypatch)
    x0, z, eps = _problem(11, 3, 0.0, 1.0, p, torch.float64)
    lo, hi = torch.zeros(SHAPE, dtype=torch.float64), torch.ones(SHAPE, dtype=torch.float64)
    v = _project(x0, z, eps, p, (lo, hi))
    np.testing.assert_allclose(v.numpy(), _project(x0, z, eps, p, (0.0, 1.0)).numpy(), atol=1e-12)
    z_grad = z.clone().requires_grad_(True)
    out = _project(x0, z_grad, eps, p, (0.0, 1.0))
    (grad,) = torch.autograd.grad(out.sum(), z_grad)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert calls == [{1.0: "project_l1_fused", 2.0: "l2_output"}[p]]  # only the float-bound call


def test_compile_off_runs_the_eager_path(monkeypatch):
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    calls = _used_fused(monkeypatch)
    x0, z, eps = _problem(13, 3, 0.0, 1.0, 1.0, torch.float32)
    v = _project(x0, z, eps, 1, (0.0, 1.0))
    assert calls == [] and not math.isnan(float(v.sum()))


@pytest.mark.parametrize("path", ["native", "inductor", "eager"])
@pytest.mark.parametrize("max_iter", [1, L1_NEWTON_MAX_ITER])
def test_estimated_start_and_sort_fallback_match_dykstra(small_fused, monkeypatch, path, max_iter):
    """The start estimated on a subsample (lowered size threshold; the C kernel needs
    none) and, with one Newton step allowed, the sort fallback of the unfinished rows:
    every path still exact. The C kernel leaves its unfinished rows to the fused path."""
    from car_attacks.core import l1_threshold, projection

    monkeypatch.setattr(l1_threshold, "L1_ESTIMATE_MIN_SIZE", 64)
    monkeypatch.setattr(l1_threshold, "L1_NEWTON_MAX_ITER", max_iter)
    monkeypatch.setattr(projection, "_max_iter", lambda p: max_iter)
    if path == "inductor":
        monkeypatch.setitem(native_newton._state, "failed", True)
    if path == "eager":
        _eager(monkeypatch)
    calls = _used_fused(monkeypatch)
    sorts: list[int] = []
    sort = l1_threshold.l1_threshold_sort

    def counted_sort(*args):
        sorts.append(1)
        return sort(*args)

    monkeypatch.setattr(l1_threshold, "l1_threshold_sort", counted_sort)
    x0, z, eps = _problem(17, 4, -1.5, 2.25, 1.0, torch.float64)
    v = _project(x0, z, eps, 1, (-1.5, 2.25))
    inductor_rows = path == "inductor" or (path == "native" and max_iter == 1)
    assert calls == (["project_l1_fused"] if inductor_rows else [])
    assert bool(sorts) == (max_iter == 1)
    ref = dykstra_projection(*(t.numpy() for t in (x0, z, eps)), 1.0, -1.5, 2.25, tol=1e-14)
    np.testing.assert_allclose(v.numpy(), ref, rtol=0, atol=1e-9)
