"""Hostile-input fuzzing of the public maths API (issue 6).

``clipping_aware_rescaling``, ``reachable_norm``, ``lp_norm`` and ``project_lp_ball_box``
get adversarial values: magnitudes from 1e-30 to 1e30 (``eps``, ``delta``, bounds such
as (0, 255), (-1e6, 1e6), (0, 1e30) and ranges as narrow as 1e-30), entries of one
sample up to 1e40 apart, float32 subnormals and exact zeros (zero rows) in ``delta``,
float32 ``x`` with float64 ``delta``, ``eps`` and bounds, NumPy and PyTorch,
per-channel and 0-d bounds, samples saturated at the bounds with ``delta`` pushing
outwards, ``eps`` of 0, exactly reachable or beyond, p in {1, 1.5, 2, 3, inf} and
random p in [1, 1e6], batches of 1 to 4. Each call either satisfies the invariants
below (checked in float64 against ``tests/oracles.py``) or raises a ValueError that
names the argument; any other exception fails. Invalid input (NaN / inf anywhere,
``x`` outside the bounds, negative ``eps``, p < 1, shape mismatch, empty batch, ...)
must raise a ValueError naming the argument. Examples are derandomized (same in CI).

What is in spec (decisions):

* The computation runs in ``x``'s dtype: ``delta``, ``eps`` and tensor bounds are cast
  to it, so the reference problem is the cast one. Values that overflow that dtype on
  the cast (``delta = 1e39`` for float32 ``x``) raise ValueError; values that
  underflow become subnormal or zero, as the cast makes them.
* float32 problems for p = 1 and 2 whose scales leave float32's range (non-zero
  ``|delta|`` of a sample more than 1e12 apart, non-zero ``eps`` below 1e-12, bounds
  wider than 1e12; see ``car_attacks.core.rescaling.FLOAT32_RANGE``) and every p other than
  1, 2 and inf are solved in float64; the latter are checked against the float64
  clipped norm and fall back to bisection where ``|delta|^p`` spans more than float64
  (large p, entries decades apart). The result is returned in ``x``'s dtype.
* An ``eta`` that does not fit that dtype raises ValueError naming ``delta`` and
  ``eps``: above its largest value (float32 ``delta`` of 1e-45, room 1: ``eta`` about
  1e45; at or beyond the reachable norm ``eta`` saturates every moving coordinate) or
  below its smallest normal number where the answer is not 0 (``delta`` 1e30, ``eps``
  1e-10). Subnormal norms (``lp_norm``, ``reachable_norm``) are returned as rounded.
* Out of spec, not fuzzed: float64 inputs whose ``|delta|`` spans more than about 1e150
  within a sample for p = 1 and 2 (float64 subnormals), gradients that overflow, and
  the baselines' accuracy (``bisection`` stops after ``bisection_max_steps``, ``naive``
  ignores clipping): for those only "finite or ValueError" is checked.

Invariants: output of the input's type and dtype, finite, ``eta >= 0``;
``clip(x + eta delta)`` in the bounds; ``||clip(x + eta delta) - x||_p ==
min(eps, reachable)`` to 1e-8 (float64) or 2e-5 (float32) relative, and ``eta`` no
larger than the oracle's smallest such ``eta`` for a target larger by that tolerance
(up to the saturating ``eta`` where that reaches the reachable norm); ``eta == 0``
where that norm is 0; a sample's ``eta`` does not depend on the other samples.
Projections: in the box exactly, in the ball, idempotent and no farther from ``z``
than the feasible points ``x0`` and project-then-clip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

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
    project_then_clip,
    reachable_norm,
)

import car_attacks

# NumPy reports the overflows to inf that the extreme inputs are meant to cause (an eps^p
# beyond float64 marks an unreachable target; an eta beyond float32 raises ValueError)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NORM_RTOL = {"float32": 2e-5, "float64": 1e-8}
SUBNORMALS = (1.4e-45, -2.8e-45, 1e-42, -1e-40, 1.1e-38)
FIXED_BOUNDS = {
    "unit": (0.0, 1.0),
    "byte": (0.0, 255.0),
    "wide": (-1e6, 1e6),
    "huge": (0.0, 1e30),
    "0-d": (-1.0, 1.0),  # passed as 0-d arrays
}


def word(name: str) -> str:
    """Regex for ``name`` as a whole identifier (``x`` must not match ``x0`` or ``max``)."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


def assert_names(error: ValueError, *names: str) -> None:
    """The message of ``error`` names at least one of ``names``."""
    msg = str(error)
    assert any(re.search(word(n), msg) for n in names), f"{msg!r} names none of {names}"


def native(a: Any, frame: str, dtype: str) -> Any:
    """A float64 array (or number) as a NumPy array or torch tensor of ``dtype``."""
    arr = np.asarray(a, dtype=np.float64).astype(dtype)
    return torch.from_numpy(arr) if frame == "torch" else arr


def dtype_of(t: Any) -> str:
    return str(t.dtype).rsplit(".", 1)[-1]


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """Arguments in their native form plus the float64 values the library computes with."""

    x: Any
    delta: Any
    eps: Any
    bounds: tuple[Any, Any]
    p: float | str
    dtype: str  # of x: the compute dtype
    x64: np.ndarray
    d64: np.ndarray
    eps64: np.ndarray
    lo64: np.ndarray
    hi64: np.ndarray

    @property
    def p_float(self) -> float:
        return float(self.p)

    def sample(self, i: int) -> Problem:
        """Sample ``i`` alone (bounds have no batch dimension)."""
        one = slice(i, i + 1)
        return replace(
            self,
            x=self.x[one],
            delta=self.delta[one],
            eps=self.eps if isinstance(self.eps, float) else self.eps[one],
            x64=self.x64[one],
            d64=self.d64[one],
            eps64=self.eps64[one],
        )


def rounded(v: float, dtype: str) -> float:
    return float(np.asarray(v).astype(dtype))


@st.composite
def bounds_arrays(draw: st.DrawFn, c: int, dtype: str) -> tuple[Any, Any, str]:
    """(lo, hi) as floats or float64 arrays, already representable in ``dtype``."""
    kind = draw(
        st.sampled_from(["unit", "byte", "wide", "huge", "tiny", "channel", "channel4", "0-d"])
    )
    if kind in ("channel", "channel4"):
        lo = np.asarray(draw(st.lists(st.floats(-3.0, 1.0), min_size=c, max_size=c)))
        exps = np.asarray(draw(st.lists(st.floats(-3.0, 3.0), min_size=c, max_size=c)))
        hi = lo + 10.0**exps
        shape = (c, 1, 1) if kind == "channel" else (1, c, 1, 1)
        lo, hi = lo.astype(dtype).reshape(shape), hi.astype(dtype).reshape(shape)
        return lo.astype(np.float64), hi.astype(np.float64), kind
    if kind == "tiny":
        width = 10.0 ** draw(st.floats(-30.0, -3.0))
        lo = draw(st.sampled_from([0.0, -width / 2]))
        return rounded(lo, dtype), rounded(lo + width, dtype), kind
    lo, hi = FIXED_BOUNDS[kind]
    return rounded(lo, dtype), rounded(hi, dtype), kind


def as_bound_arg(b: Any, kind: str, frame: str, dtype: str) -> Any:
    """A bound in the form the caller passes: a float, a 0-d or a per-channel array."""
    if kind == "0-d":
        return native(b, frame, dtype)
    return b if isinstance(b, float) else native(b, frame, dtype)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """A valid rescaling problem with adversarial magnitudes, dtypes and saturation."""
    frame = draw(st.sampled_from(["torch", "numpy"]))
    xdt, ddt, edt = (draw(st.sampled_from(["float32", "float64"])) for _ in range(3))
    n = draw(st.integers(1, 4))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (n, c, h, w)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi, kind = draw(bounds_arrays(c, xdt))
    bframe = draw(st.sampled_from(["torch", "numpy"]))
    lo_b, hi_b = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)

    # x: inside the box, a fraction (up to all of it) exactly on the bounds
    on_bounds = draw(st.sampled_from([0.0, 0.3, 1.0]))
    x = lo_b + rng.uniform(size=shape) * (hi_b - lo_b)
    u = rng.uniform(size=shape)
    at_hi = rng.uniform(size=shape) < 0.5
    x = np.where(u < on_bounds, np.where(at_hi, hi_b, lo_b), x)
    x = np.clip(x.astype(xdt), lo_b.astype(xdt), hi_b.astype(xdt))

    # delta: per-sample scales 1e-30 .. 1e30, entries decades apart, zeros, zero rows,
    # subnormals, outward push
    exponent = draw(st.floats(-30.0, 30.0))
    spread = draw(st.sampled_from([0.0, 10.0, 40.0]))
    scales = 10.0 ** np.clip(exponent + rng.uniform(-spread, spread, n), -30, 30)
    d = rng.normal(size=shape)
    if draw(st.booleans()):  # sign-like directions: ties
        d = np.sign(d)
    d *= scales.reshape(-1, 1, 1, 1)
    if draw(st.booleans()):  # entries of one sample decades apart
        d *= np.where(rng.uniform(size=shape) < 0.5, 10.0 ** -rng.uniform(0, 40, shape), 1.0)
    d[rng.uniform(size=shape) < draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
    if draw(st.booleans()):
        d[rng.integers(n)] = 0.0
    if draw(st.booleans()):
        flat = d.reshape(-1)
        idx = rng.integers(flat.size, size=min(3, flat.size))
        flat[idx] = rng.choice(SUBNORMALS, size=idx.size)
    if draw(st.booleans()):  # push outwards where x is on a bound
        d = np.where(x == hi_b, np.abs(d), np.where(x == lo_b, -np.abs(d), d))
    delta = d.astype(ddt)

    x64 = x.astype(np.float64)
    d64 = delta.astype(xdt).astype(np.float64)  # the library casts delta to x's dtype
    p: float | str = draw(
        st.one_of(
            st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf, "inf"]),
            st.floats(1.0, 64.0),
            st.floats(64.0, 1e6),
        )
    )
    reach = reachable_norm(x64, d64, float(p), lo, hi)
    kinds = draw(
        st.lists(
            st.sampled_from(["zero", "frac", "exact", "above", "tiny", "huge"]),
            min_size=n,
            max_size=n,
        )
    )
    eps = np.array([_eps_of(k, r, rng) for k, r in zip(kinds, reach, strict=True)])
    if draw(st.booleans()):
        eps_arg: Any = rounded(float(eps[0]), xdt)
        eps64 = np.full(n, eps_arg)
    else:
        eps_arg = native(eps, draw(st.sampled_from(["torch", "numpy"])), edt)
        eps64 = as64(eps_arg).astype(xdt).astype(np.float64)
    return Problem(
        native(x, frame, xdt),
        native(delta, frame, ddt),
        eps_arg,
        (as_bound_arg(lo, kind, bframe, xdt), as_bound_arg(hi, kind, bframe, xdt)),
        p,
        xdt,
        x64,
        d64,
        eps64,
        np.asarray(lo, dtype=np.float64),
        np.asarray(hi, dtype=np.float64),
    )


def _eps_of(kind: str, reach: float, rng: np.random.Generator) -> float:
    """A target norm of the given kind relative to the reachable norm ``reach``."""
    if kind == "zero":
        return 0.0
    if kind == "frac":
        return reach * 10.0 ** rng.uniform(-6, 0)
    if kind == "exact":
        return reach
    if kind == "above":
        return reach * (1 + 10.0 ** rng.uniform(-9, 3))
    if kind == "tiny":
        return 10.0 ** rng.uniform(-30, -10)
    return 10.0 ** rng.uniform(10, 30)


# --------------------------------------------------------------------------- rescaling


def rescale(prob: Problem, method: str) -> Any:
    return car_attacks.clipping_aware_rescaling(
        prob.x, prob.delta, prob.eps, p=prob.p, bounds=prob.bounds, method=method
    )


def check_rescaling(prob: Problem, eta: Any) -> np.ndarray:
    """All invariants of a returned ``eta``; returns it as float64 of shape (N,)."""
    n = len(prob.x64)
    assert type(eta) is type(prob.x) and dtype_of(eta) == prob.dtype
    assert tuple(eta.shape) == (n, 1, 1, 1)
    e = as64(eta).reshape(-1)
    assert np.all(np.isfinite(e)) and np.all(e >= 0), e

    moved = prob.x + eta * prob.delta
    if isinstance(prob.x, torch.Tensor):
        lo, hi = (torch.as_tensor(as64(b)).to(prob.x.dtype) for b in (prob.lo64, prob.hi64))
        clipped = as64(torch.minimum(torch.maximum(moved, lo), hi))
    else:
        clipped = as64(np.clip(moved, prob.lo64.astype(prob.dtype), prob.hi64.astype(prob.dtype)))
    assert np.all(np.isfinite(clipped))
    assert np.all(clipped >= prob.lo64) and np.all(clipped <= prob.hi64)

    p = prob.p_float
    reach = reachable_norm(prob.x64, prob.d64, p, prob.lo64, prob.hi64)
    target = np.minimum(prob.eps64, reach)
    norm = effective_norm(prob.x64, prob.d64, e, p, prob.lo64, prob.hi64)
    rtol = NORM_RTOL[prob.dtype]
    np.testing.assert_allclose(norm, target, rtol=rtol, atol=0)
    assert np.all(e[target == 0] == 0), e[target == 0]
    # the smallest eta: no larger than the oracle's for a slightly larger target
    ref = bisection_eta(prob.x64, prob.d64, prob.eps64, p, prob.lo64, prob.hi64)
    suspect = e > ref * (1 + rtol)
    if suspect.any():
        _, upper = eta_range(prob)
        assert np.all(e[suspect] <= upper[suspect] * (1 + 1e-7)), (e, ref, upper)
    return e


def eta_range(prob: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the etas whose clipped norm is ``min(eps, reachable)`` to the dtype's
    tolerance: from the oracle's smallest eta for the target less the tolerance to that
    for the target plus it, or (p < inf) the saturating eta where that reaches the
    reachable norm, which the norm, flat to rounding there, cannot tell apart."""
    p, lo, hi, rtol = prob.p_float, prob.lo64, prob.hi64, NORM_RTOL[prob.dtype]
    reach = reachable_norm(prob.x64, prob.d64, p, lo, hi)
    target = np.minimum(prob.eps64, reach)
    lower = bisection_eta(prob.x64, prob.d64, target * (1 - rtol), p, lo, hi)
    loose = target * (1 + rtol)
    upper = bisection_eta(prob.x64, prob.d64, np.minimum(loose, reach), p, lo, hi)
    if p < math.inf:
        saturating = eta_upper_bracket(prob.x64, prob.d64, lo, hi)
        upper = np.where(loose >= reach, saturating, upper)
    return lower, upper


@FUZZ
@given(prob=problems(), method=st.sampled_from(["newton", "sort"]))
def test_rescaling_invariants(prob: Problem, method: str) -> None:
    try:
        eta = rescale(prob, method)
    except ValueError as error:
        # only in spec where an acceptable eta does not fit the dtype (too large, not normal)
        assert_names(error, "delta")
        assert_names(error, "eps")
        lower, upper = eta_range(prob)
        info = np.finfo(prob.dtype)
        too_small = (lower > 0) & (lower < 1.001 * info.tiny)
        assert np.any(too_small | (upper > 0.999 * info.max)), (str(error), lower, upper)
        return
    e = check_rescaling(prob, eta)
    if len(e) > 1:  # per-sample independence
        alone = as64(rescale(prob.sample(0), method)).reshape(-1)
        np.testing.assert_allclose(alone, e[:1], rtol=NORM_RTOL[prob.dtype], atol=0)


@FUZZ
@given(prob=problems(), method=st.sampled_from(["bisection", "naive"]))
def test_baselines_are_finite_or_raise(prob: Problem, method: str) -> None:
    try:
        eta = rescale(prob, method)
    except ValueError as error:
        assert_names(error, "delta")
        return
    e = as64(eta).reshape(-1)
    assert type(eta) is type(prob.x) and dtype_of(eta) == prob.dtype
    assert np.all(np.isfinite(e)) and np.all(e >= 0), e


@FUZZ
@given(prob=problems())
def test_reachable_norm_and_lp_norm(prob: Problem) -> None:
    """Both to the dtype's precision (subnormal results: to a few of its smallest steps)."""
    p = prob.p_float
    reach = car_attacks.reachable_norm(prob.x, prob.delta, p=prob.p, bounds=prob.bounds)
    assert type(reach) is type(prob.x) and tuple(reach.shape) == (len(prob.x64),)
    want = reachable_norm(prob.x64, prob.d64, p, prob.lo64, prob.hi64)
    atol = 4 * float(np.finfo(prob.dtype).smallest_subnormal)
    np.testing.assert_allclose(as64(reach), want, rtol=NORM_RTOL[prob.dtype], atol=atol)
    norms = car_attacks.lp_norm(prob.delta, p=prob.p)
    own = dtype_of(norms)  # lp_norm keeps delta's own dtype
    atol = 4 * float(np.finfo(own).smallest_subnormal)
    np.testing.assert_allclose(as64(norms), lp_norm(as64(prob.delta), p), NORM_RTOL[own], atol)


# --------------------------------------------------------------------------- projection


@FUZZ
@given(prob=problems(), p=st.sampled_from([1.0, 2.0, math.inf]), push=st.floats(0.0, 3.0))
def test_projection_invariants(prob: Problem, p: float, push: float) -> None:
    x0 = prob.x
    frame = "torch" if isinstance(x0, torch.Tensor) else "numpy"
    z = x0 + native(push * as64(prob.delta), frame, prob.dtype)
    z64 = as64(z)
    v = car_attacks.project_lp_ball_box(x0, z, prob.eps, p=p, bounds=prob.bounds)
    assert type(v) is type(x0) and dtype_of(v) == prob.dtype and v.shape == x0.shape
    v64 = as64(v)
    lo, hi = np.broadcast_to(prob.lo64, v64.shape), np.broadcast_to(prob.hi64, v64.shape)
    assert np.all(np.isfinite(v64)) and np.all(v64 >= lo) and np.all(v64 <= hi)

    rtol = NORM_RTOL[prob.dtype]
    ulp = float(np.finfo(prob.dtype).eps)
    scale = np.abs(np.stack([v64, prob.x64])).reshape(2, len(v64), -1).max(axis=(0, 2))
    slack = 4 * v64[0].size * ulp * scale  # v = x0 + (v - x0) rounds, per sample
    norms = lp_norm(v64 - prob.x64, p)
    assert np.all(norms <= prob.eps64 * (1 + rtol) + slack), (norms, prob.eps64)

    again = as64(car_attacks.project_lp_ball_box(x0, v, prob.eps, p=p, bounds=prob.bounds))
    change = np.abs(again - v64).reshape(len(v64), -1).max(axis=1)
    assert np.all(change <= slack + rtol * scale), change

    dist = np.linalg.norm((v64 - z64).reshape(len(v64), -1), axis=1)
    ptc = project_then_clip(prob.x64, z64, prob.eps64, p, prob.lo64, prob.hi64)
    for feasible in (prob.x64, ptc):
        other = np.linalg.norm((feasible - z64).reshape(len(v64), -1), axis=1)
        assert np.all(dist <= other * (1 + rtol) + slack), (dist, other)


# --------------------------------------------------------------------------- hostile input


CORRUPTIONS = [
    ("nan-x", "x"),
    ("inf-delta", "delta"),
    ("nan-eps", "eps"),
    ("inf-bound", "bounds"),
    ("nan-bound-array", "bounds"),
    ("x-outside", "x"),
    ("negative-eps", "eps"),
    ("p-below-1", "p"),
    ("p-nan", "p"),
    ("p-text", "p"),
    ("shape-mismatch", "delta"),
    ("empty-batch", "x"),
    ("no-features", "x"),
    ("eps-length", "eps"),
    ("bounds-reversed", "bounds"),
    ("bounds-shape", "bounds"),
    ("mixed-frames", "delta"),
    ("eps-overflows-float32", "eps"),
    ("delta-overflows-float32", "delta"),
    ("bound-overflows-float32", "bounds"),
    ("x-list", "x"),
]


def corrupt(prob: Problem, how: str, rng: np.random.Generator) -> dict[str, Any]:
    """Arguments of ``clipping_aware_rescaling`` with one of them made invalid."""
    args: dict[str, Any] = {
        "x": prob.x,
        "delta": prob.delta,
        "eps": prob.eps,
        "p": prob.p,
        "bounds": prob.bounds,
    }
    torch_frame = isinstance(prob.x, torch.Tensor)
    frame = "torch" if torch_frame else "numpy"
    index = tuple(int(rng.integers(s)) for s in prob.x64.shape)

    def put(name: str, value: float) -> None:
        t = args[name].clone() if torch_frame else args[name].copy()
        t[index] = value
        args[name] = t

    lo, hi = prob.lo64, prob.hi64
    if how == "nan-x":
        put("x", math.nan)
    elif how == "inf-delta":
        put("delta", -math.inf)
    elif how == "nan-eps":
        args["eps"] = native(np.full(len(prob.x64), math.nan), frame, "float64")
    elif how == "inf-bound":
        args["bounds"] = (-math.inf, prob.bounds[1])
    elif how == "nan-bound-array":
        args["bounds"] = (native(np.full((1,) * prob.x64.ndim, math.nan), frame, "float64"), 1.0)
    elif how == "x-outside":
        width = float((np.broadcast_to(hi, prob.x64.shape) - lo)[index])
        put("x", float(np.broadcast_to(hi, prob.x64.shape)[index]) + 0.5 * width)
    elif how == "negative-eps":
        args["eps"] = -float(rng.uniform(1e-30, 1.0))
    elif how == "p-below-1":
        args["p"] = float(rng.uniform(-3.0, 0.999))
    elif how == "p-nan":
        args["p"] = math.nan
    elif how == "p-text":
        args["p"] = "two"
    elif how == "shape-mismatch":
        d = args["delta"]
        args["delta"] = torch.cat([d, d], 3) if torch_frame else np.concatenate([d, d], 3)
    elif how == "empty-batch":
        args["x"], args["delta"] = args["x"][:0], args["delta"][:0]
    elif how == "no-features":
        args["x"], args["delta"] = args["x"][:, :0], args["delta"][:, :0]
    elif how == "eps-length":
        args["eps"] = native(np.ones(len(prob.x64) + 1), frame, "float64")
    elif how == "bounds-reversed":
        args["bounds"] = (prob.bounds[1], prob.bounds[0])
    elif how == "bounds-shape":
        args["bounds"] = (native(np.zeros((7, 1, 1, 1, 1)), frame, "float64"), prob.bounds[1])
    elif how == "mixed-frames":
        args["delta"] = as64(prob.delta) if torch_frame else torch.from_numpy(prob.delta)
    elif how == "eps-overflows-float32":
        args["x"] = args["x"].float() if torch_frame else args["x"].astype(np.float32)
        args["eps"] = 1e39
    elif how == "delta-overflows-float32":
        args["x"] = args["x"].float() if torch_frame else args["x"].astype(np.float32)
        args["delta"] = native(np.full(prob.x64.shape, 1e39), frame, "float64")
    elif how == "bound-overflows-float32":
        args["x"] = args["x"].float() if torch_frame else args["x"].astype(np.float32)
        args["bounds"] = (-1e39, 1e39)
    elif how == "x-list":
        args["x"] = prob.x64.tolist()
    return args


@FUZZ
@given(
    prob=problems(),
    corruption=st.sampled_from(CORRUPTIONS),
    api=st.sampled_from(["rescale", "reachable", "project"]),
    seed=st.integers(0, 2**16),
)
def test_hostile_input_raises_value_error_naming_the_argument(
    prob: Problem, corruption: tuple[str, str], api: str, seed: int
) -> None:
    how, name = corruption
    args = corrupt(prob, how, np.random.default_rng(seed))
    if api == "rescale":
        call = car_attacks.clipping_aware_rescaling
    elif api == "reachable":
        if how in ("nan-eps", "negative-eps", "eps-length", "eps-overflows-float32"):
            return  # reachable_norm takes no eps
        del args["eps"]
        call = car_attacks.reachable_norm
    else:
        if not how.startswith("p-"):
            args["p"] = 2.0
        elif how == "p-below-1":
            args["p"] = 1.5  # not a projection norm either
        args["x0"], args["z"] = args.pop("x"), args.pop("delta")
        name = {"x": "x0", "delta": "z"}.get(name, name)
        call = car_attacks.project_lp_ball_box
    with pytest.raises(ValueError) as info:
        call(**args)
    assert_names(info.value, name)


# --------------------------------------------------------------------------- regressions

F32, F64 = torch.float32, torch.float64


def _t(values: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# (x, delta, eps, p, bounds, dtype): found by the fuzzing above, silently wrong before
SOLVED = {
    "tiny eps, float32 L2 (eps^2 underflowed: eta 0)": (
        [[0.5, 0.5]],
        [[1.0, 1.0]],
        1e-30,
        2.0,
        (0.0, 1.0),
        F32,
    ),
    "huge bounds, float32 L2 (room^2 overflowed)": (
        [[0.0, 0.0]],
        [[1.0, 1.0]],
        1e25,
        2.0,
        (-1e30, 1e30),
        F32,
    ),
    "delta 1e25 apart, float32 L2 (small coordinate dropped)": (
        [[0.5, 1.0]],
        [[1e-25, 1.0]],
        0.3,
        2.0,
        (0.0, 1.0),
        F32,
    ),
    "tiny eps, p = 20 (eps^p underflowed: eta 0)": (
        [[0.5, 0.5]],
        [[1.0, 1.0]],
        1e-30,
        20.0,
        (0.0, 1.0),
        F64,
    ),
    "delta 1e20 apart, p = 20 (|delta|^p underflowed: saturating eta)": (
        [[0.99, 0.5]],
        [[1.0, 1e-20]],
        0.4999,
        20.0,
        (0.0, 1.0),
        F64,
    ),
    "float32 p = 1, Newton step below the subnormals (eta 0)": (
        [[5.118216e-29, 9.504637e-29]],
        [[2.0812118e17, -2.8e-45]],
        1.4e-28,
        1.0,
        (0.0, 1.0000000031710769e-28),
        F32,
    ),
    "eps = 0 with every room^2 underflowing (saturating eta)": (
        [[6.3696e-24]],
        [[-0.5357]],
        0.0,
        2.0,
        (0.0, 9.999999998199587e-24),
        F32,
    ),
}


@pytest.mark.parametrize("method", ["newton", "sort"])
@pytest.mark.parametrize("case", list(SOLVED))
def test_regression_solved(case: str, method: str) -> None:
    x, delta, eps, p, (lo, hi), dtype = SOLVED[case]
    eta = car_attacks.clipping_aware_rescaling(
        _t(x, dtype), _t(delta, dtype), eps, p=p, bounds=(lo, hi), method=method
    )
    x64, d64 = as64(_t(x, dtype)), as64(_t(delta, dtype))
    e = as64(eta).reshape(-1)
    target = np.minimum(eps, reachable_norm(x64, d64, p, lo, hi))
    np.testing.assert_allclose(effective_norm(x64, d64, e, p, lo, hi), target, rtol=2e-5)


RAISES = {
    "eta overflows float32": (
        lambda: car_attacks.clipping_aware_rescaling(_t([[0.5]], F32), _t([[1e-44]], F32), 0.5),
        "delta",
    ),
    "eta below float32's normal numbers": (
        lambda: car_attacks.clipping_aware_rescaling(_t([[0.5]], F32), _t([[1e30]], F32), 1e-10),
        "delta",
    ),
    "float eps overflows float32 (was RuntimeError)": (
        lambda: car_attacks.clipping_aware_rescaling(_t([[0.5]], F32), _t([[1.0]], F32), 1e39),
        "eps",
    ),
    "float64 delta overflows float32 x (was inf)": (
        lambda: car_attacks.clipping_aware_rescaling(_t([[0.5]], F32), _t([[1e39]], F64), 0.1),
        "delta",
    ),
    "NumPy delta for a torch x (was TypeError)": (
        lambda: car_attacks.clipping_aware_rescaling(_t([[0.5]], F32), np.ones((1, 1)), 0.1),
        "delta",
    ),
    "bounds broadcasting to a larger shape (was RuntimeError)": (
        lambda: car_attacks.reachable_norm(
            _t([[0.5]], F32), _t([[1.0]], F32), bounds=(np.zeros((3, 1, 1)), 1.0)
        ),
        "bounds",
    ),
    "no values per sample (was IndexError)": (
        lambda: car_attacks.clipping_aware_rescaling(torch.zeros(2, 0), torch.zeros(2, 0), 0.1),
        "x",
    ),
    "complex x (imaginary part silently dropped)": (
        lambda: car_attacks.lp_norm(torch.ones(1, 2, dtype=torch.complex64)),
        "v",
    ),
    "eps that is not a number (was TypeError)": (
        lambda: car_attacks.project_lp_ball_box(_t([[0.5]], F32), _t([[1.0]], F32), 1j, p=2),
        "eps",
    ),
    "norm overflows float32": (
        lambda: car_attacks.lp_norm(_t([[3e38, 3e38]], F32), p=1),
        "v",
    ),
}


@pytest.mark.parametrize("case", list(RAISES))
def test_regression_raises(case: str) -> None:
    call, name = RAISES[case]
    with pytest.raises(ValueError) as info:
        call()
    assert_names(info.value, name)


def test_regression_float32_norms_do_not_over_or_underflow() -> None:
    """lp_norm / reachable_norm squared float32 values unscaled: 1e20 gave inf, 1e-25 gave 0."""
    v = _t([[1e20, 1e20], [1e-25, 1e-25]], F32)
    np.testing.assert_allclose(as64(car_attacks.lp_norm(v)), [2**0.5 * 1e20, 2**0.5 * 1e-25], 1e-6)
    reach = car_attacks.reachable_norm(_t([[0.0]], F32), _t([[1.0]], F32), bounds=(0.0, 1e-25))
    np.testing.assert_allclose(as64(reach), [1e-25], rtol=1e-6)


def test_regression_projection_feasible_in_float32() -> None:
    """L1: |w| - lam carried ulps of a far z past eps; L2: tiny moves squared to 0 (inside)."""
    x0 = _t([[0.04097353]], F32)
    v = car_attacks.project_lp_ball_box(x0, x0 - 1.245911, 4.003e-5, p=1)
    ulp = float(np.spacing(np.float32(0.04097353)))  # v = x0 + (v - x0) rounds (was 7 ulps)
    assert lp_norm(as64(v) - as64(x0), 1.0)[0] <= 4.003e-5 + ulp
    x0 = _t([[6.3696e-24]], F32)
    v = car_attacks.project_lp_ball_box(x0, x0 - 0.5, 0.0, p=2, bounds=(0.0, 1e-23))
    assert torch.equal(v, x0)
