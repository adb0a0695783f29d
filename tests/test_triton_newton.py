"""The one-launch Triton Newton kernel (CUDA): its cases run by Triton's interpreter on
the CPU (``tests/triton_interpreted.py``, in a subprocess), its failure path and when it
is used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_fused import _problem

from car_attacks.core import fused, triton_newton

pytest.importorskip("triton")  # a dependency of the torch wheels on Linux x86-64
TESTS = Path(__file__).resolve().parent


def test_interpreted_kernel_cases() -> None:
    """``tests/triton_interpreted.py`` under ``TRITON_INTERPRET=1``: every case passes."""
    env = dict(os.environ, TRITON_INTERPRET="1", CAR_ATTACKS_COMPILE="0")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            str(TESTS / "triton_interpreted.py"),
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b17 passed", proc.stdout), proc.stdout[-2000:]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def test_a_failing_kernel_warns_once_and_the_compiled_solve_runs(monkeypatch):
    class Broken:
        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("no device")

            return launch

    monkeypatch.setitem(triton_newton._state, "kernel", Broken())
    monkeypatch.setitem(triton_newton._state, "failed", False)
    x, delta, eps = _problem(2, 3, 0.0, 1.0, 2.0, torch.float32)
    with pytest.warns(RuntimeWarning, match="Triton Newton kernel failed .*no device"):
        run = triton_newton.newton_power(
            _flat(x), _flat(delta), eps.reshape(-1, 1), p=2.0, lo=0.0, hi=1.0, max_iter=32
        )
    assert run is None and triton_newton._state["failed"]
    assert not triton_newton.available(x)  # (and not again)


def test_only_cuda_tensors_with_the_compiler_on_take_the_kernel(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    assert not triton_newton.available(x)  # a CPU tensor
    meta = torch.zeros(2, 3, device="meta")
    assert not triton_newton.available(meta)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert not triton_newton.available(x)  # "CUDA", but the compiler is off
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    monkeypatch.setitem(triton_newton._state, "failed", False)
    monkeypatch.setitem(triton_newton._state, "kernel", None)
    assert triton_newton.available(x)  # Triton imports here; the kernel is built lazily
