"""The inputs of the rescaling benchmark and how its accuracy is judged.

A case is one (backend, size, dtype, p): ``x`` uniform in ``[0, 1]`` with a fraction of its
coordinates on the bounds, a Gaussian ``delta``, and an ``eps`` at which clipping matters.
Accuracy is the relative norm error ``| ||clip(x + eta delta) - x||_p - eps | / eps`` in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import eagerpy as ep
import numpy as np
import numpy.typing as npt
import torch

from car_attacks.core.rescaling import BISECTION_MAX_STEPS

F64 = npt.NDArray[np.float64]

SIZES: dict[str, tuple[int, ...]] = {"cifar": (128, 3, 32, 32), "imagenet": (16, 3, 224, 224)}
QUICK_SIZES: dict[str, tuple[int, ...]] = {"cifar": (8, 3, 8, 8), "imagenet": (2, 3, 16, 16)}
LO, HI = 0.0, 1.0


@dataclass(kw_only=True)
class BenchConfig:
    """What to run. Defaults are the full benchmark of the issue."""

    sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(SIZES))
    dtypes: tuple[str, ...] = ("float32", "float64")
    ps: tuple[float, ...] = (1.0, 2.0, math.inf)
    backends: tuple[str, ...] = ("torch", "numpy")
    repeats: int = 5
    warmup: int = 1
    target_rel_err: float = 1e-6
    bisection_max_steps: int = BISECTION_MAX_STEPS
    seed: int = 0
    clip_fraction: float = 0.1
    measure_memory: bool = True
    progress: bool = True
    quick: bool = False
    threads: int | None = None
    """``torch.set_num_threads`` before the run; ``None`` keeps PyTorch's default."""
    clock: str = "wall"
    """``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``)."""
    device: str = "cpu"
    """Torch device of the PyTorch cases (``"cuda"``: timings synchronise the device and
    memory is CUDA's allocator peak); NumPy cases always run on the CPU."""


def p_label(p: float) -> str:
    """``"1"``, ``"2"``, ``"inf"``, ``"1.5"``."""
    return "inf" if math.isinf(p) else f"{p:g}"


def _lp(v: F64, p: float) -> F64:
    """Per-sample Lp norm of ``v`` of shape ``(N, n)``, float64."""
    a = np.abs(v)
    if math.isinf(p):
        return np.asarray(a.max(axis=1), dtype=np.float64)
    if p == 1:
        return np.asarray(a.sum(axis=1), dtype=np.float64)
    if p == 2:
        return np.asarray(np.sqrt(np.square(a).sum(axis=1)), dtype=np.float64)
    return np.asarray((a**p).sum(axis=1) ** (1.0 / p), dtype=np.float64)


def make_inputs(shape: Sequence[int], seed: int, clip_fraction: float = 0.1) -> tuple[F64, F64]:
    """``x`` uniform in [0, 1] with ``clip_fraction`` of coordinates exactly 0 or 1, and
    a Gaussian ``delta``; both float64 with a fixed seed."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(LO, HI, size=tuple(shape))
    at_bound = rng.random(size=x.shape) < clip_fraction
    x[at_bound] = rng.integers(0, 2, size=int(at_bound.sum())).astype(np.float64)
    delta = rng.standard_normal(size=x.shape)
    return x, delta


def choose_eps(x: F64, delta: F64, p: float) -> float:
    """An eps at which clipping matters: 8/255 for Linf, else half the smallest reachable
    norm in the batch (so naive rescaling undershoots). Exactly representable in float32."""
    if math.isinf(p):
        eps = 8.0 / 255.0
    else:
        n = x.shape[0]
        space = np.where(delta >= 0, HI - x, x - LO) * (delta != 0)
        eps = 0.5 * float(_lp(space.reshape(n, -1), p).min())
    return float(np.float32(eps))


def achieved_rel_errors(x: F64, delta: F64, eta: F64, eps: float, p: float) -> F64:
    """``| ||clip(x + eta delta, 0, 1) - x||_p - eps | / eps`` per sample, in float64."""
    n = x.shape[0]
    e = np.asarray(eta, dtype=np.float64).reshape((n,) + (1,) * (x.ndim - 1))
    x64 = np.asarray(x, dtype=np.float64)
    moved = np.clip(x64 + e * np.asarray(delta, dtype=np.float64), LO, HI) - x64
    return np.asarray(np.abs(_lp(moved.reshape(n, -1), p) - eps) / eps, dtype=np.float64)


def to_numpy(t: Any) -> F64:
    """A NumPy array, a PyTorch tensor or an EagerPy tensor as a flat float64 NumPy array."""
    if isinstance(t, ep.Tensor):
        t = t.raw
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64).reshape(-1)


@dataclass(frozen=True, kw_only=True)
class Case:
    """Native inputs of one (backend, size, dtype, p), their EagerPy views, and the float64
    values they hold (accuracy is judged on the inputs actually used, rounded to ``dtype``)."""

    backend: str
    size: str
    shape: tuple[int, ...]
    dtype: str
    p: float
    eps: float
    x: Any
    delta: Any
    x_ep: ep.Tensor
    delta_ep: ep.Tensor
    eps_ep: ep.Tensor
    x64: F64
    d64: F64
    x_nbytes: int


def make_case(
    *,
    backend: str,
    size: str,
    dtype: str,
    x64: F64,
    d64: F64,
    eps: float,
    p: float,
    device: str = "cpu",
) -> Case:
    """The case of ``backend`` (``"torch"`` or ``"numpy"``) and ``dtype`` for the float64
    inputs of one size; PyTorch tensors live on ``device``."""
    xn = np.ascontiguousarray(x64.astype(dtype))
    dn = np.ascontiguousarray(d64.astype(dtype))
    epsn = np.full((x64.shape[0],), eps, dtype=dtype)
    if backend == "torch":
        x: Any = torch.from_numpy(xn).to(device)
        d: Any = torch.from_numpy(dn).to(device)
        eps_ep: ep.Tensor = ep.astensor(torch.from_numpy(epsn).to(device))
    elif backend == "numpy":
        x, d, eps_ep = xn, dn, ep.astensor(epsn)
    else:
        raise ValueError(f"unknown backend {backend!r} (torch, numpy)")
    return Case(
        backend=backend,
        size=size,
        shape=tuple(x64.shape),
        dtype=dtype,
        p=p,
        eps=eps,
        x=x,
        delta=d,
        x_ep=ep.astensor(x),
        delta_ep=ep.astensor(d),
        eps_ep=eps_ep,
        x64=xn.astype(np.float64),
        d64=dn.astype(np.float64),
        x_nbytes=xn.nbytes,
    )
