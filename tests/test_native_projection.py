"""The C kernels of the exact projections and of the L-inf scale for CPU tensors
(:func:`car_attacks.core.native_newton.project`, :func:`~car_attacks.core.native_newton.linf_eta`).

References: the eager general paths of :mod:`car_attacks.core.projection` and
:func:`car_attacks.core.solvers.linf_eta` (``CAR_ATTACKS_COMPILE=0``), which
``tests/test_projection.py`` checks against Dykstra's alternating projections in float64
(and runs once more on the kernels); here the kernels' own cases: rows they leave to the
general path, the public checks in their first pass, the calls that take them.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch
from test_fused import BOUNDS, _problem
from test_native_newton import count_calls

import car_attacks
from car_attacks.core import fused, native_newton, projection, solvers
from car_attacks.core.solvers import RescalingProblem

NORMS = [1.0, 2.0, math.inf]


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C kernels on (``auto``; the suite's default is ``0``)."""
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    monkeypatch.setitem(native_newton._state, "failed", False)
    assert native_newton.available(torch.zeros(1)), "a C compiler is present here"


def _points(
    p: float, bounds: tuple[float, float], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, z, eps)`` of 12 samples: ``z`` outside the box and the ball but for row 1
    (inside both), row 0's ball holds the box, row 2 has ``eps = 0``."""
    x0, delta, eps = _problem(31, 12, *bounds, p, dtype)
    z = x0 + 2 * delta
    z[1] = x0[1] + delta[1] * 1e-3
    eps[1] = eps[1] * 10
    eps[2] = 0.0
    return x0, z, eps


def _unchecked(x0: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, p: float, bounds) -> Any:
    out = projection.project_unchecked(
        ep.astensor(x0), ep.astensor(z), ep.astensor(eps), p=p, lo=bounds[0], hi=bounds[1]
    )
    return out.raw


def _ulps(dtype: torch.dtype, bounds: tuple[float, float]) -> float:
    """A few units in the last place of the largest coordinate."""
    return 4 * torch.finfo(dtype).eps * max(1.0, *(abs(b) for b in bounds))


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_gives_the_eager_projection(native, monkeypatch, bounds, p, dtype):
    """Every row written by the kernel (none left), equal to the eager projection to a few
    ulps; the rows inside the ball exactly ``clip(z)``."""
    x0, z, eps = _points(p, bounds, dtype)
    n = x0.shape[0]
    lo, hi = (fused.as_dtype_float(b, x0) for b in bounds)
    found = native_newton.project(
        x0.reshape(n, -1), z.reshape(n, -1), eps, p=p, lo=lo, hi=hi, max_iter=32,
        checks=fused.NO_CHECKS,
    )  # fmt: skip
    assert found is not None and found.clean and found.left is None
    got = found.out.reshape(x0.shape)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    expected = _unchecked(x0, z, eps, p, bounds)
    torch.testing.assert_close(got, expected, rtol=0, atol=_ulps(dtype, bounds))
    clipped = z.clamp(*bounds)
    assert torch.equal(got[1], clipped[1]) and torch.equal(got[0], clipped[0])
    assert torch.equal(got[2], x0[2])  # eps = 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_rows_the_kernel_leaves_are_projected_by_the_general_path(native, monkeypatch, p):
    """A Newton cap of one step leaves the rows it did not finish (their output unwritten)
    to the general path: the attacks' projection still equals the eager one."""
    x0, z, eps = _points(p, (0.0, 1.0), torch.float64)
    n = x0.shape[0]
    found = native_newton.project(
        x0.reshape(n, -1), z.reshape(n, -1), eps, p=p, lo=0.0, hi=1.0, max_iter=1,
        checks=fused.NO_CHECKS,
    )  # fmt: skip
    assert found is not None and found.left is not None
    assert 0 < found.left.shape[0] and not {0, 1} & set(found.left.tolist())  # (inside)
    monkeypatch.setattr(projection, "_max_iter", lambda p: 1)
    got = _unchecked(x0, z, eps, p, (0.0, 1.0))
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    expected = _unchecked(x0, z, eps, p, (0.0, 1.0))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_float64_moves_too_small_to_square_are_left_to_the_scaled_norms(native, monkeypatch):
    """``z - x0`` of 1e-141: the sum of squares is below 2^-900, so the kernel's in-ball test cannot
    be trusted; the row goes to the general path (its norms scaled), which projects it."""
    g = torch.Generator().manual_seed(2)
    x0 = 1e-141 * torch.rand(3, 50, generator=g, dtype=torch.float64)
    z = x0 + 1e-141 * torch.randn(3, 50, generator=g, dtype=torch.float64)
    eps = torch.tensor([1e-142, 1e-139, 0.5], dtype=torch.float64)
    found = native_newton.project(
        x0, z, eps, p=2.0, lo=0.0, hi=1.0, max_iter=32, checks=fused.NO_CHECKS
    )
    assert found is not None and found.left is not None
    assert found.left.tolist() == [0, 1, 2]
    got = _unchecked(x0, z, eps, 2.0, (0.0, 1.0))
    norm = torch.linalg.vector_norm((got - x0) * 1e140, dim=1) / 1e140
    assert abs(norm[0].item() / 1e-142 - 1) < 1e-6  # on the ball (inside the others)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert torch.equal(got, _unchecked(x0, z, eps, 2.0, (0.0, 1.0)))


def _public_outcome(x0: torch.Tensor, z: torch.Tensor, eps: Any, p: float) -> Any:
    """``project_lp_ball_box``'s result, or the type and message of its error."""
    try:
        return car_attacks.project_lp_ball_box(x0, z, eps, p=p, bounds=(0.0, 1.0))
    except ValueError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize(
    "spoil",
    ["nan_z", "inf_z", "nan_x0", "x0_below", "negative_eps", "nan_eps", "inf_eps", "tiny_eps"]
    + ["fine"],
)
def test_public_checks_in_the_kernel_give_the_eager_outcome(native, monkeypatch, spoil, p):
    """The public projection's checks run in the kernel's first pass: the same error as the
    checks one by one for every kind of bad input, else the same projection (a float32 row
    that needs float64, ``tiny_eps``, is projected in float64 by the general path)."""
    x0, z, eps = _points(p, (0.0, 1.0), torch.float32)
    eps_arg: Any = eps.clone()
    if spoil == "nan_z":
        z[3, 1, 2, 2] = math.nan
    elif spoil == "inf_z":
        z[4, 0, 0, 1] = -math.inf
    elif spoil == "nan_x0":
        x0[2, 0, 5, 5] = math.nan
    elif spoil == "x0_below":
        x0[5, 2, 0, 0] = -0.5
    elif spoil == "negative_eps":
        eps_arg[0] = -1.0
    elif spoil == "nan_eps":
        eps_arg[2] = math.nan
    elif spoil == "inf_eps":
        eps_arg[6] = math.inf
    elif spoil == "tiny_eps":
        eps_arg[3] = 1e-13
    calls = count_calls(monkeypatch, native_newton, "project")
    got = _public_outcome(x0, z, eps_arg, p)
    assert calls, "the kernel looked at the inputs"
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    expected = _public_outcome(x0, z, eps_arg, p)
    if isinstance(expected, tuple):
        assert got == expected
        return
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=_ulps(torch.float32, (0.0, 1.0)))
    if spoil == "tiny_eps" and p == 2:  # the float64 projection, rounded
        row = car_attacks.project_lp_ball_box(
            x0[3:4].double(), z[3:4].double(), eps_arg[3:4].double(), p=2, bounds=(0.0, 1.0)
        )
        assert torch.equal(got[3:4], row.float())


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linf_kernel_gives_the_eager_scale(native, monkeypatch, bounds, dtype):
    """The L-inf scale, bit for bit the eager one: ``eps`` beyond reach (row 0), a row that
    does not move, coordinates on the bounds."""
    x, delta, eps = _problem(5, 10, *bounds, math.inf, dtype)
    delta[3] = 0.0
    n = x.shape[0]
    lo, hi = (fused.as_dtype_float(b, x) for b in bounds)
    found = native_newton.linf_eta(
        x.reshape(n, -1), delta.reshape(n, -1), eps, lo=lo, hi=hi, checks=fused.NO_CHECKS
    )
    assert found is not None and found.clean
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    problem = RescalingProblem(
        x=ep.astensor(x), delta=ep.astensor(delta), eps=ep.astensor(eps), p=math.inf,
        lo=bounds[0], hi=bounds[1],
    )  # fmt: skip
    expected = solvers.linf_eta(problem).raw
    assert torch.equal(found.eta, expected)
    assert found.eta[3] == 0 and found.eta[0] > 0


@pytest.mark.parametrize("spoil", ["nan_x", "inf_delta", "x_above", "negative_eps", "fine"])
def test_public_linf_checks_in_the_kernel_give_the_eager_outcome(native, monkeypatch, spoil):
    """``clipping_aware_rescaling`` for p = inf: the checks in the kernel's pass."""
    x, delta, eps = _problem(8, 6, 0.0, 1.0, math.inf, torch.float32)
    eps_arg: Any = eps.clone()
    if spoil == "nan_x":
        x[1, 0, 0, 0] = math.nan
    elif spoil == "inf_delta":
        delta[2, 1, 1, 1] = math.inf
    elif spoil == "x_above":
        x[0, 2, 3, 3] = 1.5
    elif spoil == "negative_eps":
        eps_arg[4] = -0.1

    def outcome() -> Any:
        try:
            return car_attacks.clipping_aware_rescaling(
                x, delta, eps_arg, p=math.inf, bounds=(0.0, 1.0)
            )
        except ValueError as exc:
            return (type(exc), str(exc))

    calls = count_calls(monkeypatch, native_newton, "linf_eta")
    got = outcome()
    assert calls == [1]
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    expected = outcome()
    if isinstance(expected, tuple):
        assert got == expected
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("p", NORMS)
def test_the_attacks_and_the_public_projection_use_the_kernel_in_auto_mode(native, monkeypatch, p):
    """``auto`` (the default): the public projection and the attacks' (unchecked) one run
    the kernel from the first call; ``0`` never; a gradient through ``z`` never (the eager
    path is differentiable)."""
    calls = count_calls(monkeypatch, native_newton, "project")
    x0, z, eps = _points(p, (0.0, 1.0), torch.float32)
    car_attacks.project_lp_ball_box(x0, z, eps, p=p)
    _unchecked(x0, z, eps, p, (0.0, 1.0))
    assert calls == [1, 1]
    z_grad = z.clone().requires_grad_(True)
    out = _unchecked(x0, z_grad, eps, p, (0.0, 1.0))
    out.sum().backward()
    assert calls == [1, 1] and z_grad.grad is not None
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    car_attacks.project_lp_ball_box(x0, z, eps, p=p)
    assert calls == [1, 1]


@pytest.mark.parametrize("p", NORMS)
def test_each_sample_is_projected_alone(native, p):
    """A sample's projection does not depend on the batch around it (bit for bit)."""
    x0, z, eps = _points(p, (-1.5, 2.25), torch.float32)
    together = car_attacks.project_lp_ball_box(x0, z, eps, p=p, bounds=(-1.5, 2.25))
    for i in range(x0.shape[0]):
        alone = car_attacks.project_lp_ball_box(
            x0[i : i + 1], z[i : i + 1], eps[i : i + 1], p=p, bounds=(-1.5, 2.25)
        )
        assert torch.equal(alone, together[i : i + 1])
    np.testing.assert_array_less(-1.5 - 1e-7, together.numpy())


@pytest.mark.parametrize("p", NORMS)
def test_eps_of_another_dtype_is_read_in_the_inputs_dtype(native, p):
    """The attacks may pass ``eps`` in float64 beside float32 points: the kernel reads it
    rounded to float32 (not its bytes as float32 values)."""
    x0, z, eps = _points(p, (0.0, 1.0), torch.float32)
    wide = _unchecked(x0, z, eps.double(), p, (0.0, 1.0))
    assert wide.dtype == torch.float32
    assert torch.equal(wide, _unchecked(x0, z, eps, p, (0.0, 1.0)))


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("layout", ["plain", "read_only", "reversed"])
def test_numpy_arrays_take_the_kernels_through_views(native, monkeypatch, p, layout):
    """NumPy float arrays: the public rescaling and projection run the C kernels on
    zero-copy PyTorch views and return NumPy arrays, the same values as for PyTorch
    tensors; read-only arrays and negative strides take the general path (same values)."""
    x0, z, eps = _points(p, (0.0, 1.0), torch.float32)
    xa, za, ea = x0.numpy().copy(), z.numpy().copy(), eps.numpy().copy()
    if layout == "read_only":
        xa.flags.writeable = False
    elif layout == "reversed":  # the same samples, viewed back to front twice
        xa = np.ascontiguousarray(xa[::-1])[::-1]
    rescale_calls = count_calls(
        monkeypatch, native_newton, "linf_eta" if p == math.inf else "checked_newton_power"
    )
    project_calls = count_calls(monkeypatch, native_newton, "project")
    eta = car_attacks.clipping_aware_rescaling(xa, za - xa, ea, p=p)
    projected = car_attacks.project_lp_ball_box(xa, za, ea, p=p)
    through_kernel = layout == "plain"
    assert (len(rescale_calls), len(project_calls)) == (int(through_kernel), int(through_kernel))
    assert isinstance(eta, np.ndarray) and isinstance(projected, np.ndarray)
    assert eta.dtype == np.float32 and eta.shape == (x0.shape[0], 1, 1, 1)
    assert projected.dtype == np.float32 and projected.shape == x0.shape
    expected_eta = car_attacks.clipping_aware_rescaling(x0, z - x0, eps, p=p).numpy()
    expected = car_attacks.project_lp_ball_box(x0, z, eps, p=p).numpy()
    np.testing.assert_allclose(eta, expected_eta, rtol=1e-6, atol=0)
    np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-6)
