"""Tests of ``car_attacks.clipping_aware_rescaling`` / ``reachable_norm`` against float64 oracles.

The reference solvers live in ``tests/oracles.py`` and share no code with the package.
"""

from __future__ import annotations

import math
import zlib
from functools import cache

import eagerpy as ep
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import (
    as64,
    bisection_eta,
    effective_norm,
    eta_upper_bracket,
    lp_norm,
    reachable_norm,
)

import car_attacks

P_VALUES = [1.0, 1.5, 2.0, 3.0, 8.0, math.inf]
METHODS = ["newton", "sort", "bisection"]
EXACT = ["newton", "sort"]
BOUNDS_KINDS = ["unit", "byte", "sym5", "channel"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)
# eps as fractions of the reachable norm: tiny ... saturating (last three: eps >= reachable)
FRACS = (1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0, 1.5, 1e3)


def norm_rtol(dtype: str, method: str) -> float:
    if dtype != "float64":
        return 1e-5
    return 1e-6 if method == "bisection" else 1e-10


def eta_rtol(dtype: str, method: str) -> float:
    if method == "bisection":
        return 2e-6 if dtype == "float64" else 1e-4
    return 1e-8 if dtype == "float64" else 1e-4


def car(*args, **kwargs):
    return car_attacks.clipping_aware_rescaling(*args, **kwargs)


# --------------------------------------------------------------------------- data helpers


def to_frame(a, frame: str = "torch", dtype: str = "float64"):
    """A float64 numpy array as torch / numpy / eagerpy tensor of the given dtype."""
    a = np.asarray(a, dtype=np.float64)
    if frame in ("torch", "ep-torch"):
        t = torch.tensor(a, dtype=getattr(torch, dtype))
        return ep.astensor(t) if frame == "ep-torch" else t
    arr = a.astype(dtype)
    return ep.astensor(arr) if frame == "ep-numpy" else arr


def bounds_arrays(kind: str, shape: tuple[int, ...], rng=None):
    """(lo, hi) as floats or float64 arrays broadcastable to ``shape``."""
    if kind == "unit":
        return 0.0, 1.0
    if kind == "byte":
        return 0.0, 255.0
    if kind == "sym5":
        return -5.0, 5.0
    if kind in ("channel", "channel3"):  # bounds of ImageNet-normalised images
        lo, hi = -IMAGENET_MEAN / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
        new = (1, 3, 1, 1) if kind == "channel" else (3, 1, 1)
        return lo.reshape(new), hi.reshape(new)
    if kind == "element":
        rng = rng if rng is not None else np.random.default_rng(123)
        lo = rng.uniform(-2.0, 1.0, (1,) + tuple(shape[1:]))
        return lo, lo + rng.uniform(0.05, 3.0, lo.shape)
    raise AssertionError(kind)


def bounds_in_frame(lo, hi, frame, dtype):
    """Bounds for the implementation (floats stay floats) and their float64 values."""
    if isinstance(lo, float):
        return (lo, hi), (lo, hi)
    lo_t, hi_t = to_frame(lo, frame, dtype), to_frame(hi, frame, dtype)
    return (lo_t, hi_t), (as64(lo_t), as64(hi_t))


def make_x(rng, shape, lo, hi, on_bounds: float = 0.05):
    """Uniform in the box, with a fraction of the coordinates exactly on each bound."""
    lo_b = np.broadcast_to(np.asarray(lo, dtype=np.float64), shape)
    hi_b = np.broadcast_to(np.asarray(hi, dtype=np.float64), shape)
    x = lo_b + rng.uniform(size=shape) * (hi_b - lo_b)
    u = rng.uniform(size=shape)
    x = np.where(u < on_bounds, lo_b, x)
    x = np.where(u > 1 - on_bounds, hi_b, x)
    return np.clip(x, lo_b, hi_b)


def make_delta(rng, shape, kind: str, zeros: float = 0.0):
    if kind == "gauss":
        d = rng.normal(size=shape)
    elif kind == "sign":  # like the sign of a gradient: many ties, some zeros
        d = np.sign(rng.normal(size=shape)) * 0.01
        d[rng.uniform(size=shape) < 0.05] = 0.0
    else:
        raise AssertionError(kind)
    if zeros:
        d[rng.uniform(size=shape) < zeros] = 0.0
    return d


class Case:
    """Inputs in the implementation's format plus their float64 oracle quantities."""

    def __init__(self, x, delta, fracs, p, bounds, frame="torch", dtype="float64", eps=None):
        x, delta = np.asarray(x, np.float64), np.asarray(delta, np.float64)
        self.p, self.frame, self.dtype = p, frame, dtype
        self.bounds, (self.lo, self.hi) = bounds_in_frame(*bounds, frame, dtype)
        self.x = to_frame(x, frame, dtype)
        self.delta = to_frame(delta, frame, dtype)
        self.x64, self.d64 = as64(self.x), as64(self.delta)
        self.n = len(x)
        self.reach = reachable_norm(self.x64, self.d64, p, self.lo, self.hi)
        if eps is None:
            self.eps = to_frame(np.asarray(fracs, np.float64) * self.reach, frame, dtype)
            self.eps64 = as64(self.eps)
        else:  # a Python float
            self.eps, self.eps64 = eps, np.full(self.n, float(eps))
        self.target = np.minimum(self.eps64, self.reach)
        self.eta_ref = self.oracle_eta(self.eps64)

    def oracle_eta(self, eps, samples=None):
        """Oracle's minimal eta for targets ``eps`` (optionally for a subset of samples)."""
        if samples is None:
            return bisection_eta(self.x64, self.d64, eps, self.p, self.lo, self.hi)
        shape = self.x64.shape
        lo, hi = (
            b if isinstance(b, float) else np.broadcast_to(b, shape)[samples]
            for b in (self.lo, self.hi)
        )
        return bisection_eta(self.x64[samples], self.d64[samples], eps, self.p, lo, hi)

    def run(self, method="newton", **kw):
        return car(self.x, self.delta, self.eps, p=self.p, bounds=self.bounds, method=method, **kw)

    def norm_of(self, eta):
        return effective_norm(self.x64, self.d64, as64(eta).reshape(-1), self.p, self.lo, self.hi)

    def check(self, eta, norm_rtol, eta_rtol=None):
        """Shape, finiteness, effective norm == min(eps, reachable), eta == minimal eta.

        The eta check allows for the conditioning of the problem: eta must lie in
        ``[eta*(target (1 - s)), eta*(target (1 + s))]`` (widened by ``eta_rtol``),
        where eta*(.) is the oracle's minimal eta and ``s`` a rounding-level slack of
        the working dtype.  Where the norm grows with eta this is ``eta == eta_ref``
        to ``eta_rtol``; where it is flat (saturation, Linf plateaus) it enforces that
        the *smallest* eta is returned.
        """
        assert tuple(eta.shape) == (self.n,) + (1,) * (self.x64.ndim - 1)
        e = as64(eta).reshape(-1)
        assert np.all(np.isfinite(e)), e
        assert np.all(e >= 0), e
        np.testing.assert_allclose(self.norm_of(e), self.target, rtol=norm_rtol, atol=0)
        if eta_rtol is None:
            return
        bad = np.abs(e - self.eta_ref) > eta_rtol * self.eta_ref
        if not bad.any():
            return
        # ill-conditioned samples (flat norm): compare against the bracket instead
        idx = np.nonzero(bad)[0]
        slack = 1e-13 if self.dtype == "float64" else 3e-6
        e_lo = self.oracle_eta(self.target[idx] * (1 - slack), idx) * (1 - eta_rtol)
        e_hi = self.oracle_eta(self.target[idx] * (1 + slack), idx) * (1 + eta_rtol)
        out = (e[idx] < e_lo) | (e[idx] > e_hi)
        assert not out.any(), (
            f"eta differs from the oracle's minimal eta for samples {idx[out]}: "
            f"got {e[idx][out]}, oracle {self.eta_ref[idx][out]}, allowed "
            f"[{e_lo[out]}, {e_hi[out]}], eps/reachable "
            f"{self.eps64[idx][out] / np.where(self.reach > 0, self.reach, 1)[idx][out]}"
        )


def image_case(size, p, bounds_kind, delta_kind, dtype, seed, fracs=FRACS, frame="torch"):
    rng = np.random.default_rng(seed)
    shape = (len(fracs),) + size
    lo, hi = bounds_arrays(bounds_kind, shape, rng)
    # round the bounds to the working dtype first so that x is inside them exactly
    _, (lo64, hi64) = bounds_in_frame(lo, hi, frame, dtype)
    x = make_x(rng, shape, lo64, hi64)
    delta = make_delta(rng, shape, delta_kind)
    return Case(x, delta, fracs, p, (lo, hi), frame=frame, dtype=dtype)


@cache
def cifar_case(p, bounds_kind, delta_kind, dtype):
    seed = zlib.crc32(repr((p, bounds_kind, delta_kind, dtype)).encode())
    return image_case(CIFAR, p, bounds_kind, delta_kind, dtype, seed)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("delta_kind", ["gauss", "sign"])
@pytest.mark.parametrize("bounds_kind", BOUNDS_KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_cifar_effective_norm_and_minimal_eta(p, method, bounds_kind, delta_kind, dtype):
    case = cifar_case(p, bounds_kind, delta_kind, dtype)
    eta = case.run(method)
    assert isinstance(eta, torch.Tensor)
    assert eta.dtype == getattr(torch, dtype)
    case.check(eta, norm_rtol(dtype, method), eta_rtol(dtype, method))


@pytest.mark.parametrize("bounds_kind", BOUNDS_KINDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_methods_agree(p, bounds_kind):
    case = cifar_case(p, bounds_kind, "gauss", "float64")
    newton, sort, bis = (as64(case.run(m)).reshape(-1) for m in METHODS)
    np.testing.assert_allclose(sort, newton, rtol=1e-10, atol=0)
    np.testing.assert_allclose(bis, newton, rtol=2e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_scalar_eps(p, method):
    rng = np.random.default_rng(7)
    shape = (3,) + CIFAR
    x, delta = make_x(rng, shape, 0.0, 1.0), make_delta(rng, shape, "gauss")
    for frac in (0.3, 0.95, 2.0):  # the last one saturates every sample
        reach = reachable_norm(x, delta, p, 0.0, 1.0)
        eps = float(frac * reach.min()) if frac < 1 else float(frac * reach.max())
        case = Case(x, delta, None, p, (0.0, 1.0), eps=eps)
        case.check(case.run(method), norm_rtol("float64", method), eta_rtol("float64", method))


@pytest.mark.parametrize("bounds_kind", ["channel3", "element"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_tensor_bounds_shapes(p, method, bounds_kind):
    case = image_case((3, 8, 8), p, bounds_kind, "gauss", "float64", seed=11)
    case.check(case.run(method), norm_rtol("float64", method), eta_rtol("float64", method))


IMAGENET_CASES = [(p, "float32", "channel", (0.02, 0.995)) for p in P_VALUES] + [
    (p, "float64", "unit", (0.37, 1.2)) for p in (1.0, 2.0, math.inf)
]


@pytest.mark.slow
@pytest.mark.parametrize(("p", "dtype", "bounds_kind", "fracs"), IMAGENET_CASES)
def test_imagenet_size(p, dtype, bounds_kind, fracs):
    """Two 3x224x224 samples; newton and sort vs the oracle (and each other)."""
    case = image_case(IMAGENET, p, bounds_kind, "gauss", dtype, seed=5, fracs=fracs)
    results = {}
    for method in EXACT:
        eta = case.run(method)
        case.check(eta, norm_rtol(dtype, method), eta_rtol(dtype, method))
        results[method] = as64(eta).reshape(-1)
    np.testing.assert_allclose(results["sort"], results["newton"], rtol=eta_rtol(dtype, "sort"))


@pytest.mark.slow
@pytest.mark.parametrize("p", [2.0, math.inf])
def test_imagenet_size_bisection(p):
    case = image_case(IMAGENET, p, "unit", "gauss", "float32", seed=6, fracs=(0.05, 0.95))
    case.check(case.run("bisection"), norm_rtol("float32", "bisection"), None)


def test_imagenet_sign_delta_float32():
    """The typical FGSM-like use: ImageNet-size, gradient-sign direction, L2, float32."""
    case = image_case(IMAGENET, 2.0, "unit", "sign", "float32", seed=9, fracs=(0.5, 3.0))
    case.check(case.run("newton"), norm_rtol("float32", "newton"), eta_rtol("float32", "newton"))


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_bisection_rtol_is_respected(p):
    case = cifar_case(p, "unit", "gauss", "float64")
    eta = as64(case.run("bisection", bisection_rtol=1e-3)).reshape(-1)
    np.testing.assert_allclose(eta, case.eta_ref, rtol=2e-3, atol=0)


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("p", [8.0, 12.0, 16.0, 20.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_p_moderate_eps(p, dtype, method):
    """Large p with an eps of a few thousandths of the box (no underflow to eta = 0)."""
    rng = np.random.default_rng(24)
    shape = (3, 3, 16, 16)
    x, delta = make_x(rng, shape, 0.0, 1.0), make_delta(rng, shape, "gauss")
    case = Case(x, delta, None, p, (0.0, 1.0), dtype=dtype, eps=0.003)
    case.check(case.run(method), norm_rtol(dtype, method), eta_rtol(dtype, method))


@pytest.mark.parametrize("p", [1.0, 2.0, "inf", float("inf"), math.inf])
def test_p_spellings(p):
    p_num = math.inf if p == "inf" else float(p)
    case = cifar_case(p_num, "unit", "gauss", "float64")
    a = car(case.x, case.delta, case.eps, p=p)
    b = car(case.x, case.delta, case.eps, p=p_num)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if p_num in (1.0, 2.0):  # integer p
        c = car(case.x, case.delta, case.eps, p=int(p_num))
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_default_arguments_are_l2_unit_box_newton():
    case = cifar_case(2.0, "unit", "gauss", "float64")
    a = car(case.x, case.delta, case.eps)
    b = car(case.x, case.delta, case.eps, p=2, bounds=(0.0, 1.0), method="newton")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    case.check(a, 1e-10, 1e-8)


# --------------------------------------------------------------------------- naive


@pytest.mark.parametrize("p", P_VALUES)
def test_naive_is_eps_over_norm(p):
    case = cifar_case(p, "unit", "gauss", "float64")
    eta = as64(case.run("naive")).reshape(-1)
    np.testing.assert_allclose(eta, case.eps64 / lp_norm(case.d64, p), rtol=1e-12, atol=0)


@pytest.mark.parametrize("p", P_VALUES)
def test_naive_falls_short_when_clipping(p):
    rng = np.random.default_rng(3)
    shape = (4,) + CIFAR
    x = make_x(rng, shape, 0.0, 1.0, on_bounds=0.2)
    delta = make_delta(rng, shape, "gauss")
    # the coordinate with the largest |delta| starts on the bound it points to
    flat_x, flat_d = x.reshape(4, -1), delta.reshape(4, -1)
    k = np.abs(flat_d).argmax(axis=1)
    flat_x[np.arange(4), k] = (flat_d[np.arange(4), k] > 0).astype(float)
    reach = reachable_norm(x, delta, p, 0.0, 1.0)
    fracs = (0.2, 0.5, 0.8, 0.95)
    case = Case(x, delta, fracs, p, (0.0, 1.0))
    naive_norm = case.norm_of(case.run("naive"))
    newton_norm = case.norm_of(case.run("newton"))
    eps = np.asarray(fracs) * reach
    assert np.all(naive_norm < eps * (1 - 1e-3)), (naive_norm, eps)
    np.testing.assert_allclose(newton_norm, eps, rtol=1e-10)


@pytest.mark.parametrize("p", P_VALUES)
def test_naive_exact_without_clipping(p):
    rng = np.random.default_rng(4)
    x = rng.uniform(0.4, 0.6, (3, 50))
    delta = rng.normal(size=(3, 50))
    # naive eta * |delta_i| <= 0.3 < room_i for every coordinate: nothing is clipped
    eps = 0.3 * np.min(lp_norm(delta, p) / np.abs(delta).max(axis=1))
    case = Case(x, delta, None, p, (0.0, 1.0), eps=float(eps))
    case.check(case.run("naive"), 1e-12, 1e-12)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_delta_with_zero_coordinates(p, method):
    rng = np.random.default_rng(21)
    shape = (len(FRACS), 3, 8, 8)
    x = make_x(rng, shape, 0.0, 1.0)
    delta = make_delta(rng, shape, "gauss", zeros=0.3)
    case = Case(x, delta, FRACS, p, (0.0, 1.0))
    case.check(case.run(method), norm_rtol("float64", method), eta_rtol("float64", method))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_all_zero_delta(p, method):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(size=(3, 3, 4, 4)))
    delta = torch.zeros_like(x)
    delta[1, 0, 0, 0] = 1.0  # the other samples stay all-zero
    eps = torch.tensor([0.5, 0.1, 0.0], dtype=torch.float64)
    eta = car(x, delta, eps, p=p, method=method)
    assert not torch.isnan(eta).any()
    assert eta[0].item() == 0.0 and eta[2].item() == 0.0
    assert torch.all(torch.isfinite(eta))
    reach = car_attacks.reachable_norm(x, delta, p=p)
    assert reach[0].item() == 0.0 and reach[2].item() == 0.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_eps_zero(p, method):
    case = cifar_case(p, "unit", "gauss", "float64")
    eta = car(case.x, case.delta, 0.0, p=p, method=method)
    e = as64(eta).reshape(-1)
    assert np.all(np.isfinite(e))
    np.testing.assert_array_equal(case.norm_of(e), 0.0)
    if method == "bisection":
        assert np.all(np.abs(e) <= 1e-6 * eta_upper_bracket(case.x64, case.d64, 0.0, 1.0))
    else:
        np.testing.assert_array_equal(e, 0.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("bounds_kind", ["unit", "channel"])
def test_x_on_bounds_pushing_out(p, method, bounds_kind):
    rng = np.random.default_rng(8)
    shape = (3, 3, 6, 6)
    lo, hi = bounds_arrays(bounds_kind, shape)
    delta = make_delta(rng, shape, "gauss")
    x = np.where(delta > 0, np.broadcast_to(hi, shape), np.broadcast_to(lo, shape))
    case = Case(x, delta, (0.0, 0.5, 2.0), p, (lo, hi), eps=None)
    np.testing.assert_array_equal(case.reach, 0.0)
    reach = as64(car_attacks.reachable_norm(case.x, case.delta, p=p, bounds=case.bounds))
    np.testing.assert_array_equal(reach, 0.0)
    eta = car(case.x, case.delta, 1.0, p=p, bounds=case.bounds, method=method)
    e = as64(eta).reshape(-1)
    assert np.all(np.isfinite(e))
    np.testing.assert_array_equal(case.norm_of(e), 0.0)
    if method != "bisection":
        np.testing.assert_array_equal(e, 0.0)  # the smallest eta reaching norm 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_x_on_bounds_everywhere_mixed_directions(p, method):
    rng = np.random.default_rng(9)
    shape = (len(FRACS), 40)
    x = rng.choice([0.0, 1.0], shape)
    delta = make_delta(rng, shape, "gauss")
    case = Case(x, delta, FRACS, p, (0.0, 1.0))
    case.check(case.run(method), norm_rtol("float64", method), eta_rtol("float64", method))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", P_VALUES)
def test_ties_among_breakpoints(p, method):
    rng = np.random.default_rng(10)
    base_x = make_x(rng, (len(FRACS), 5), 0.0, 1.0)
    base_d = make_delta(rng, (len(FRACS), 5), "gauss")
    # every (x_i, delta_i) pair repeated 20 times -> 20-fold tied breakpoints
    x, delta = np.repeat(base_x, 20, axis=1), np.repeat(base_d, 20, axis=1)
    # plus mirrored pairs with the same breakpoint, and fully constant samples
    x[:, :5], delta[:, :5] = 1 - base_x, -base_d
    x[0], delta[0] = 0.25, 0.5
    x[1], delta[1] = 0.25, np.where(np.arange(100) % 2, 0.5, -(0.25 / 0.75) * 0.5)
    case = Case(x, delta, FRACS, p, (0.0, 1.0))
    case.check(case.run(method), norm_rtol("float64", method), eta_rtol("float64", method))


@pytest.mark.parametrize("method", METHODS + ["naive"])
@pytest.mark.parametrize("p", P_VALUES)
def test_batch_of_one_and_sample_independence(p, method):
    case = cifar_case(p, "channel", "gauss", "float64")
    full = as64(case.run(method)).reshape(-1)
    lo, hi = case.bounds
    tol = 1e-6 if method == "bisection" else 1e-12
    for i in range(case.n):
        single = car(
            case.x[i : i + 1],
            case.delta[i : i + 1],
            case.eps[i : i + 1],
            p=p,
            bounds=(lo, hi),
            method=method,
        )
        assert tuple(single.shape) == (1, 1, 1, 1)
        np.testing.assert_allclose(as64(single).reshape(-1), full[i : i + 1], rtol=tol, atol=0)
    # a sample's result does not depend on the other samples in the batch
    perm = torch.randperm(case.n, generator=torch.Generator().manual_seed(0))
    permuted = car(
        case.x[perm], case.delta[perm], case.eps[perm], p=p, bounds=(lo, hi), method=method
    )
    np.testing.assert_allclose(as64(permuted).reshape(-1), full[perm.numpy()], rtol=tol, atol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_non_contiguous_inputs(p, method):
    rng = np.random.default_rng(12)
    n = len(FRACS)
    # channels-last storage viewed as NCHW, and a strided slice of a larger tensor
    x_nhwc = torch.tensor(make_x(rng, (n, 16, 16, 3), 0.0, 1.0))
    x = x_nhwc.permute(0, 3, 1, 2)
    big = torch.tensor(make_delta(rng, (n, 6, 16, 32), "gauss"))
    delta = big[:, ::2, :, ::2]
    assert not x.is_contiguous() and not delta.is_contiguous()
    reach = reachable_norm(as64(x), as64(delta), p, 0.0, 1.0)
    eps_big = torch.tensor(np.repeat(np.asarray(FRACS) * reach, 2))
    eps = eps_big[::2]
    assert eps.stride() == (2,)
    eta = car(x, delta, eps, p=p, method=method)
    ref = car(x.contiguous(), delta.contiguous(), eps.contiguous(), p=p, method=method)
    torch.testing.assert_close(eta, ref, rtol=1e-12, atol=0)
    case = Case(as64(x), as64(delta), FRACS, p, (0.0, 1.0))
    case.check(eta, norm_rtol("float64", method), eta_rtol("float64", method))


@pytest.mark.parametrize("frame", ["torch", "numpy"])
def test_per_sample_eps_tensor_matches_scalar_calls(frame):
    rng = np.random.default_rng(13)
    shape = (4, 3, 8, 8)
    x = to_frame(make_x(rng, shape, 0.0, 1.0), frame)
    delta = to_frame(make_delta(rng, shape, "gauss"), frame)
    eps_values = [0.1, 0.7, 2.5, 0.0]
    eta = as64(car(x, delta, to_frame(eps_values, frame), p=2)).reshape(-1)
    for i, e in enumerate(eps_values):
        single = as64(car(x, delta, e, p=2)).reshape(-1)
        np.testing.assert_allclose(eta[i], single[i], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- types, shapes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("frame", ["torch", "numpy", "ep-torch", "ep-numpy"])
@pytest.mark.parametrize("bounds_kind", ["unit", "channel"])
def test_tensor_types_round_trip(frame, dtype, bounds_kind):
    rng = np.random.default_rng(14)
    shape = (3, 3, 5, 5)
    lo, hi = bounds_arrays(bounds_kind, shape)
    (lo_t, hi_t), (lo64, hi64) = bounds_in_frame(lo, hi, frame, dtype)
    x_np = make_x(rng, shape, lo64, hi64)
    d_np = make_delta(rng, shape, "gauss")
    x, delta = to_frame(x_np, frame, dtype), to_frame(d_np, frame, dtype)
    eps = to_frame([0.3, 1.0, 100.0], frame, dtype)
    expected_type = type(x)
    for method in METHODS + ["naive"]:
        eta = car(x, delta, eps, p=2, bounds=(lo_t, hi_t), method=method)
        assert type(eta) is expected_type, (method, type(eta))
        assert tuple(eta.shape) == (3, 1, 1, 1)
        raw = eta.raw if isinstance(eta, ep.Tensor) else eta
        assert str(raw.dtype).endswith(dtype)
        # broadcastable against x
        assert tuple((x + eta * delta).shape) == shape
    reach = car_attacks.reachable_norm(x, delta, p=2, bounds=(lo_t, hi_t))
    assert type(reach) is expected_type
    assert tuple(reach.shape) == (3,)
    np.testing.assert_allclose(
        as64(reach),
        reachable_norm(as64(x), as64(delta), 2.0, lo64, hi64),
        rtol=1e-12 if dtype == "float64" else 1e-5,
    )


def test_numpy_and_torch_give_the_same_result():
    rng = np.random.default_rng(15)
    shape = (4, 3, 8, 8)
    x, d = make_x(rng, shape, 0.0, 1.0), make_delta(rng, shape, "gauss")
    eps = np.array([0.2, 1.0, 3.0, 50.0])
    for p in P_VALUES:
        a = car(x, d, eps, p=p)
        b = car(torch.tensor(x), torch.tensor(d), torch.tensor(eps), p=p)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3, 5])
def test_output_shape_follows_input_rank(ndim):
    rng = np.random.default_rng(16)
    shape = (2,) + (3,) * (ndim - 1)
    x = torch.tensor(make_x(rng, shape, 0.0, 1.0))
    delta = torch.tensor(make_delta(rng, shape, "gauss"))
    for method in METHODS + ["naive"]:
        eta = car(x, delta, 0.5, method=method)
        assert tuple(eta.shape) == (2,) + (1,) * (ndim - 1)


@pytest.mark.parametrize("bounds_kind", ["unit", "byte", "sym5", "channel", "element"])
@pytest.mark.parametrize("p", P_VALUES)
def test_reachable_norm_matches_oracle(p, bounds_kind):
    rng = np.random.default_rng(17)
    shape = (4, 3, 8, 8)
    lo, hi = bounds_arrays(bounds_kind, shape, rng)
    x = make_x(rng, shape, lo, hi)
    delta = make_delta(rng, shape, "gauss", zeros=0.1)
    reach = car_attacks.reachable_norm(
        torch.tensor(x),
        torch.tensor(delta),
        p=p,
        bounds=bounds_in_frame(lo, hi, "torch", "float64")[0],
    )
    assert tuple(reach.shape) == (4,)
    np.testing.assert_allclose(as64(reach), reachable_norm(x, delta, p, lo, hi), rtol=1e-12)


@pytest.mark.parametrize("p", P_VALUES)
def test_lp_norm_if_present(p):
    if not hasattr(car_attacks, "lp_norm"):
        pytest.skip("car_attacks.lp_norm is optional")
    rng = np.random.default_rng(18)
    v = rng.normal(size=(3, 4, 5)) * np.array([1e-3, 1.0, 1e3])[:, None, None]
    out = car_attacks.lp_norm(torch.tensor(v), p)
    np.testing.assert_allclose(as64(out).reshape(-1), lp_norm(v, p), rtol=1e-12)


# --------------------------------------------------------------------------- gradients


def smooth_case(p: float, seed: int, n: int = 2, d: int = 6):
    """Small inputs whose solution eta is at least 10% away from every breakpoint.

    For p < inf some coordinates are saturated and some are not; for p = inf the
    coordinate with the (unique, by a margin) largest |delta| is unsaturated, so
    eta = eps / max|delta|.  Returns float64 numpy (x, delta, eps, eta), bounds (0, 1).
    """
    rng = np.random.default_rng(seed)
    margin = math.log(1.1)

    def one_sample():
        for _ in range(10_000):
            x = rng.uniform(0.2, 0.8, d)
            delta = rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 1.5, d)
            a = np.abs(delta)
            t = np.where(delta > 0, 1 - x, x) / a
            if math.isinf(p):
                k = int(np.argmax(a))
                if np.sort(a)[-2] > 0.85 * a[k]:
                    continue  # largest |delta| not unique by a margin
                low, high = 0.05 * t[k], t[k]
            else:
                ts = np.sort(t)
                low, high = ts[1], ts[-2]
            for _ in range(20):
                eta = math.exp(rng.uniform(math.log(low), math.log(high)))
                if np.min(np.abs(np.log(t / eta))) > margin:
                    return x, delta, eta
        raise AssertionError("could not build a smooth case")

    xs, ds, etas = zip(*(one_sample() for _ in range(n)), strict=True)
    x, delta, etas = np.stack(xs), np.stack(ds), np.asarray(etas)
    return x, delta, effective_norm(x, delta, etas, p, 0.0, 1.0), etas


@pytest.mark.parametrize("method", ["newton", "sort", "naive"])
@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, math.inf])
def test_gradcheck(p, method):
    for seed in range(2):
        x_np, d_np, eps_np, eta_np = smooth_case(p, seed)
        x = torch.tensor(x_np, requires_grad=True)
        delta = torch.tensor(d_np, requires_grad=True)
        eps = torch.tensor(eps_np, requires_grad=True)
        if method != "naive":  # sanity: the construction hits the intended solution
            got = car(x, delta, eps, p=p, method=method).detach().numpy().reshape(-1)
            np.testing.assert_allclose(got, eta_np, rtol=1e-10)

        def f(x, delta, eps, p=p, method=method):
            return car(x, delta, eps, p=p, method=method)

        assert torch.autograd.gradcheck(
            f, (x, delta, eps), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
        )


@pytest.mark.parametrize("method", ["newton", "sort", "naive"])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("situation", ["zero_delta_coords", "x_on_bounds", "saturated"])
def test_gradient_is_finite(p, method, situation):
    rng = np.random.default_rng(19)
    shape = (3, 2, 5, 5)
    x_np = make_x(rng, shape, 0.0, 1.0, on_bounds=0.2 if situation == "x_on_bounds" else 0.0)
    d_np = make_delta(rng, shape, "gauss", zeros=0.3 if situation == "zero_delta_coords" else 0.0)
    frac = 5.0 if situation == "saturated" else 0.4
    eps_np = frac * reachable_norm(x_np, d_np, p, 0.0, 1.0)
    x = torch.tensor(x_np, requires_grad=True)
    delta = torch.tensor(d_np, requires_grad=True)
    eps = torch.tensor(eps_np, requires_grad=True)
    eta = car(x, delta, eps, p=p, method=method)
    assert eta.requires_grad
    eta.sum().backward()
    for name, t in (("x", x), ("delta", delta), ("eps", eps)):
        if method == "naive" and name == "x":  # eps / ||delta||_p does not depend on x
            assert t.grad is None or torch.all(t.grad == 0)
            continue
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all(), (name, t.grad)
    assert delta.grad.abs().sum() > 0
    if situation != "saturated":
        assert eps.grad.abs().min() > 0  # d eta / d eps > 0 below saturation


def test_gradient_of_effective_norm_wrt_eps_is_one():
    """d/d eps of || clip(x + eta(eps) delta) - x || is 1 (chain rule through eta)."""
    rng = np.random.default_rng(20)
    x_np = make_x(rng, (2, 30), 0.0, 1.0)
    d_np = make_delta(rng, (2, 30), "gauss")
    for p in (1.5, 2.0, 3.0):
        for method in EXACT:
            x, delta = torch.tensor(x_np), torch.tensor(d_np)
            eps = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)
            eta = car(x, delta, eps, p=p, method=method)
            pert = torch.clamp(x + eta.reshape(2, 1) * delta, 0, 1) - x
            norms = pert.abs().pow(p).sum(1).pow(1 / p)
            norms.sum().backward()
            torch.testing.assert_close(eps.grad, torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("method", METHODS + ["naive"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "np-float16"])
def test_half_precision(dtype, p, method):
    rng = np.random.default_rng(22)
    shape = (3,) + CIFAR
    x64 = make_x(rng, shape, 0.0, 1.0)
    d64 = make_delta(rng, shape, "gauss")
    eps = [0.5, 3.0, 1e4] if p != math.inf else [0.01, 0.2, 5.0]
    if dtype == "np-float16":
        x, delta = x64.astype(np.float16), d64.astype(np.float16)
        eps_t = np.asarray(eps, dtype=np.float16)
        eta = car(x, delta, eps_t, p=p, method=method)
        assert isinstance(eta, np.ndarray) and eta.dtype == np.float16
        ref = car(
            x.astype(np.float32),
            delta.astype(np.float32),
            eps_t.astype(np.float32),
            p=p,
            method=method,
        )
        rtol = 2e-3
    else:
        tdt = getattr(torch, dtype)
        x, delta = torch.tensor(x64, dtype=tdt), torch.tensor(d64, dtype=tdt)
        eps_t = torch.tensor(eps, dtype=tdt)
        eta = car(x, delta, eps_t, p=p, method=method)
        assert isinstance(eta, torch.Tensor) and eta.dtype == tdt
        ref = car(x.float(), delta.float(), eps_t.float(), p=p, method=method)
        rtol = 2e-3 if dtype == "float16" else 1.6e-2
    assert tuple(eta.shape) == (3, 1, 1, 1)
    got, want = as64(eta), as64(ref)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


# --------------------------------------------------------------------------- properties


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    feat=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    p=st.one_of(st.sampled_from(P_VALUES), st.floats(1.0, 12.0)),
    lo=st.floats(-100.0, 100.0),
    width=st.floats(1e-2, 300.0),
    frac=st.one_of(st.sampled_from([0.0, 1.0, 1.0 + 1e-9]), st.floats(1e-9, 2.0)),
    zeros=st.sampled_from([0.0, 0.3]),
    on_bounds=st.sampled_from([0.0, 0.1, 0.5]),
    method=st.sampled_from(EXACT),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_effective_norm_is_min_eps_reachable(
    n, feat, p, lo, width, frac, zeros, on_bounds, method, seed
):
    rng = np.random.default_rng(seed)
    shape = (n, *feat)
    hi = lo + width
    x = make_x(rng, shape, lo, hi, on_bounds=on_bounds)
    delta = make_delta(rng, shape, "gauss", zeros=zeros) * rng.uniform(0.01, 100)
    case = Case(x, delta, [frac] * n, p, (lo, hi))
    eta = case.run(method)
    e = as64(eta).reshape(-1)
    assert np.all(np.isfinite(e)) and np.all(e >= 0)
    np.testing.assert_allclose(case.norm_of(e), case.target, rtol=1e-10, atol=1e-13 * width)
    # and it is the smallest such eta, up to the problem's conditioning: near the reachable
    # norm (p < inf) the norm is flat to rounding, up to the saturating eta
    slack = 1e-9
    lower = case.oracle_eta(case.target * (1 - slack))
    upper = case.oracle_eta(np.minimum(case.target * (1 + slack), case.reach))
    if p != math.inf:
        saturating = eta_upper_bracket(case.x64, case.d64, lo, hi)
        upper = np.where(case.target * (1 + slack) >= case.reach, saturating, upper)
    assert np.all(e >= lower * (1 - 1e-7)) and np.all(e <= upper * (1 + 1e-7)), (e, lower, upper)


# --------------------------------------------------------------------------- foolbox


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # foolbox imports scipy.ndimage.filters
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.0, 255.0), (-5.0, 5.0)])
@pytest.mark.parametrize("frac", [0.01, 0.5, 0.99, 3.0])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_l2_agrees_with_foolbox(bounds, frac, dtype):
    from foolbox.external.clipping_aware_rescaling import l2_clipping_aware_rescaling

    rng = np.random.default_rng(23)
    shape = (4,) + CIFAR
    lo, hi = bounds
    x_np = make_x(rng, shape, lo, hi)
    d_np = make_delta(rng, shape, "gauss")  # no zero coordinates (foolbox's eta is not
    # minimal for saturated samples whose delta has zeros)
    x, delta = to_frame(x_np, "torch", dtype), to_frame(d_np, "torch", dtype)
    reach = reachable_norm(as64(x), as64(delta), 2.0, lo, hi)
    eps = float(frac * (reach.min() if frac < 1 else reach.max()))
    ours = car(x, delta, eps, p=2, bounds=bounds)
    theirs = l2_clipping_aware_rescaling(x, delta, eps, lo, hi)
    assert ours.shape == theirs.shape
    rtol = 1e-9 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(as64(ours), as64(theirs), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_hot_path_solves_half_precision_in_float32(dtype: torch.dtype, p: float) -> None:
    """``solve_eta`` (what the attacks call) on half-precision ImageNet-sized inputs: the
    sums exceed float16's range (65,504), so it solves in float32 like the public API and
    returns ``eta`` in the input's dtype, equal to the float32 solve rounded to it."""
    from car_attacks.core.rescaling import solve_eta

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 224, 224, generator=gen).to(dtype)
    delta = torch.randn(2, 3, 224, 224, generator=gen).to(dtype)
    eps = torch.tensor([10.0, 40.0])  # L1 eta ~1e-4: normal in float16 (from 6.1e-5)
    eta = solve_eta(
        ep.astensor(x), ep.astensor(delta), ep.astensor(eps.to(dtype)), p=p, lo=0.0, hi=1.0
    ).raw
    assert eta.dtype == dtype
    ref = solve_eta(
        ep.astensor(x.float()), ep.astensor(delta.float()), ep.astensor(eps), p=p, lo=0.0, hi=1.0
    ).raw
    assert torch.equal(eta, ref.to(dtype))
    reached = (x.double() + eta.double().view(-1, 1, 1, 1) * delta.double()).clamp(0, 1)
    norms = (reached - x.double()).flatten(1).norm(p=p, dim=1)
    reachable = 1.0 if p == math.inf else math.inf  # L-inf: eps 10 is past the box
    expected = torch.minimum(eps.double(), torch.tensor(reachable, dtype=torch.float64))
    rel = 2.0 ** -(7 if dtype == torch.bfloat16 else 10)  # eta's rounding to the dtype
    assert torch.allclose(norms, expected, rtol=2 * rel)
