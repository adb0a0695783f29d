"""Cases of the Triton Newton kernel run by Triton's interpreter on the CPU.

Not collected by itself (no ``test_`` prefix): ``tests/test_triton_newton.py`` runs it in a
subprocess with ``TRITON_INTERPRET=1`` set before Triton is first imported, which the
interpreter needs (``triton.language``'s own helpers are jitted at import). References:
the compiled solve's iterates (:func:`~car_attacks.core.fused_newton.newton_power`, run
eagerly: the same start, stopping rules and iteration counts) and the float64 bisection
oracle of ``oracles`` through the whole solve.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from oracles import bisection_eta
from test_fused import BOUNDS, _problem, _solve, check_kernel_takes_the_compiled_iterates

from car_attacks.core import fused, fused_newton, triton_newton

assert os.environ.get("TRITON_INTERPRET") == "1", "run by tests/test_triton_newton.py"


@pytest.fixture(autouse=True)
def fresh_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreted kernel, built for each test; the compiler's failure flag clear."""
    monkeypatch.setitem(triton_newton._state, "kernel", None)
    monkeypatch.setitem(triton_newton._state, "failed", False)
    monkeypatch.setitem(triton_newton._state, "compiled", set())


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _both(
    x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, p: float, bounds: tuple[float, float]
) -> tuple[Any, Any]:
    """The kernel's run and the compiled solve's (eager here) on the same problem."""
    lo, hi = (fused.as_dtype_float(b, x) for b in bounds)
    kernel = triton_newton.newton_power(
        _flat(x), _flat(delta), eps.reshape(-1, 1), p=p, lo=lo, hi=hi, max_iter=32
    )
    reference = fused_newton.newton_power(x, delta, eps, p=p, lo=lo, hi=hi, max_iter=32)
    return kernel, reference


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_takes_the_compiled_solves_iterates(bounds, p, dtype):
    check_kernel_takes_the_compiled_iterates(triton_newton.newton_power, bounds, p, dtype)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_rows_longer_than_a_block_and_many_iterations(p):
    """Rows of several blocks (and a ragged last one), a breakpoint-dense problem."""
    g = torch.Generator().manual_seed(7)
    n, m = 3, 2 * triton_newton.BLOCK + 37
    x = torch.rand((n, m), generator=g, dtype=torch.float64)
    delta = torch.randn((n, m), generator=g, dtype=torch.float64) * torch.rand(
        (n, m), generator=g, dtype=torch.float64
    ).pow(4)
    eps = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64) * (m ** (1 / p) / 10)
    run, reference = _both(x, delta, eps, p, (0.0, 1.0))
    assert run is not None and run.iterations == reference.iterations >= 4
    np.testing.assert_allclose(run.t.numpy(), reference.t.numpy(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_whole_solve_through_the_kernel_meets_the_oracle(small_fused, monkeypatch, p):
    """``solve_eta`` with the kernel in place of the compiled Newton (as on CUDA)."""
    calls: list[int] = []
    real = triton_newton.newton_power

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_newton, "available", lambda x: True)
    monkeypatch.setattr(triton_newton, "newton_power", counted)
    bounds = (0.0, 255.0)
    x, delta, eps = _problem(11, 5, *bounds, p, torch.float32)
    eta, _ = _solve(x, delta, eps, p, bounds)
    assert calls == [1]
    x64, d64, e64 = (t.double().numpy() for t in (x, delta, eps))
    oracle = bisection_eta(x64, d64, e64, p, *bounds).reshape(-1)
    np.testing.assert_allclose(eta.double().numpy(), oracle, rtol=2e-5, atol=0)


def test_the_first_launch_of_each_signature_counts_as_compile_time():
    """Triton compiles on the first launch of a dtype and p: that time is compile time
    (kept out of the rescaling time of reports), later launches add none."""
    x, delta, eps = _problem(3, 2, 0.0, 1.0, 2.0, torch.float32)

    def launch(p: float, dtype: torch.dtype) -> float:
        triton_newton.newton_power(
            _flat(x).to(dtype),
            _flat(delta).to(dtype),
            eps.reshape(-1, 1).to(dtype),
            p=p,
            lo=0.0,
            hi=1.0,
            max_iter=32,
        )
        return fused.compile_seconds().get("newton_rows", 0.0)

    before = fused.compile_seconds().get("newton_rows", 0.0)
    first = launch(2.0, torch.float32)
    assert first > before
    assert launch(2.0, torch.float32) == first  # compiled already
    assert launch(1.0, torch.float32) > first  # another signature
