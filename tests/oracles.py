"""Independent float64 reference solvers used by the tests.

Nothing in here imports ``car_attacks``: these are deliberately simple, slow and
straightforward implementations (clip-then-norm, plain bisection, Dykstra's
alternating projections) that the exact solvers of the package are checked
against.

Conventions: every function takes numpy arrays (anything ``np.asarray`` accepts)
with a leading batch dimension ``N``; ``lo`` / ``hi`` are scalars or arrays
broadcastable to ``x``; ``eps`` is a scalar or a length-``N`` array; ``p`` is a
float ``>= 1`` or ``math.inf``.  All computations are done in float64.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "as64",
    "lp_norm",
    "effective_perturbation",
    "effective_norm",
    "eta_upper_bracket",
    "reachable_norm",
    "bisection_eta",
    "project_box",
    "project_l2_ball",
    "project_linf_ball",
    "project_l1_ball",
    "dykstra_projection",
    "project_then_clip",
]


def as64(a) -> np.ndarray:
    """Convert a numpy array / torch tensor / eagerpy tensor / scalar to float64 numpy."""
    raw = getattr(a, "raw", a)  # eagerpy tensor -> native tensor
    if hasattr(raw, "detach"):  # torch tensor (also bfloat16 / float16)
        raw = raw.detach().cpu().double().numpy()
    return np.asarray(raw, dtype=np.float64)


def _per_sample(v, n: int) -> np.ndarray:
    """A scalar or length-n value as a float64 array of shape (n,)."""
    arr = as64(v).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, arr.item())
    if arr.shape != (n,):
        raise ValueError(f"expected a scalar or {n} values, got shape {arr.shape}")
    return arr


def _expand(v, n: int, ndim: int) -> np.ndarray:
    """Per-sample values of shape (n,) reshaped to (n, 1, ..., 1)."""
    return _per_sample(v, n).reshape((n,) + (1,) * (ndim - 1))


def lp_norm(v, p: float) -> np.ndarray:
    """Per-sample Lp norm of a batch, computed with max-scaling (no over/underflow)."""
    v = np.abs(as64(v)).reshape(len(as64(v)), -1)
    m = v.max(axis=1) if v.shape[1] else np.zeros(len(v))
    if math.isinf(p):
        return m
    safe = np.where(m > 0, m, 1.0)
    s = ((v / safe[:, None]) ** p).sum(axis=1)
    return np.where(m > 0, safe * s ** (1.0 / p), 0.0)


def effective_perturbation(x, delta, eta, lo, hi) -> np.ndarray:
    """``clip(x + eta * delta, lo, hi) - x`` in float64.

    Computed as ``clip(eta * delta, lo - x, hi - x)``, which is the same quantity
    without the cancellation of ``(x + small) - x`` (matters for tiny eps).
    """
    x, delta = as64(x), as64(delta)
    lo = np.broadcast_to(as64(lo), x.shape)
    hi = np.broadcast_to(as64(hi), x.shape)
    eta = _expand(eta, len(x), x.ndim)
    return np.clip(eta * delta, lo - x, hi - x)


def effective_norm(x, delta, eta, p, lo, hi) -> np.ndarray:
    """Per-sample ``|| clip(x + eta * delta, lo, hi) - x ||_p`` in float64, shape (N,)."""
    return lp_norm(effective_perturbation(x, delta, eta, lo, hi), p)


def eta_upper_bracket(x, delta, lo, hi) -> np.ndarray:
    """Per sample ``max over delta != 0 of room / |delta|`` (0 if delta is all zero).

    ``room`` is the distance from x to the bound that delta points to.  For every
    eta at or beyond this value every coordinate is saturated, so the clipped
    perturbation (and its norm) no longer changes.
    """
    x, delta = as64(x), as64(delta)
    lo = np.broadcast_to(as64(lo), x.shape)
    hi = np.broadcast_to(as64(hi), x.shape)
    room = np.where(delta > 0, hi - x, x - lo)
    nz = delta != 0
    t = np.where(nz, room / np.where(nz, np.abs(delta), 1.0), 0.0)
    return t.reshape(len(x), -1).max(axis=1)


def reachable_norm(x, delta, p, lo, hi) -> np.ndarray:
    """Largest attainable clipped norm per sample (the norm at the upper bracket)."""
    return effective_norm(x, delta, eta_upper_bracket(x, delta, lo, hi), p, lo, hi)


def bisection_eta(x, delta, eps, p, lo, hi, max_iter: int = 3000) -> np.ndarray:
    """Smallest eta >= 0 with ``effective_norm(eta) >= min(eps, reachable)``, per sample.

    Plain bisection on the monotone (non-decreasing, continuous) function
    ``eta -> effective_norm(eta)``, run until the bracket consists of two adjacent
    float64 numbers.  Returns shape (N,).
    """
    x, delta = as64(x), as64(delta)
    n = len(x)
    eps = _per_sample(eps, n)
    upper = eta_upper_bracket(x, delta, lo, hi)
    target = np.minimum(eps, effective_norm(x, delta, upper, p, lo, hi))
    a = np.zeros(n)
    b = np.where(target > 0, upper, 0.0)  # target 0 is reached at eta = 0
    done = b <= 0
    for _ in range(max_iter):
        if done.all():
            break
        mid = 0.5 * (a + b)
        # converged once the midpoint coincides with an end of the bracket
        done |= (mid <= a) | (mid >= b)
        ok = effective_norm(x, delta, mid, p, lo, hi) >= target
        upd = ~done
        b = np.where(upd & ok, mid, b)
        a = np.where(upd & ~ok, mid, a)
    else:  # pragma: no cover - would mean the oracle itself is broken
        raise RuntimeError("oracle bisection did not converge")
    return b


# --------------------------------------------------------------------------- projections


def project_box(v, lo, hi) -> np.ndarray:
    return np.clip(v, lo, hi)


def project_l2_ball(v, x0, eps: float) -> np.ndarray:
    """Euclidean projection of a single vector onto the L2 ball around x0."""
    d = v - x0
    n = float(np.sqrt((d * d).sum()))
    return v if n <= eps else x0 + d * (eps / n)


def project_linf_ball(v, x0, eps: float) -> np.ndarray:
    return x0 + np.clip(v - x0, -eps, eps)


def project_l1_ball(v, x0, eps: float) -> np.ndarray:
    """Euclidean projection onto the L1 ball around x0 (Duchi et al. 2008, sort based)."""
    d = v - x0
    a = np.abs(d)
    if a.sum() <= eps:
        return v
    if eps <= 0:
        return x0.copy()
    u = np.sort(a)[::-1]
    css = np.cumsum(u) - eps
    j = np.arange(1, len(u) + 1)
    # j = 1 always qualifies (eps > 0), though rounding can hide it when eps << u[0]
    rho = max(np.nonzero(u - css / j > 0)[0], default=0)
    theta = css[rho] / (rho + 1.0)
    return x0 + np.sign(d) * np.maximum(a - theta, 0.0)


_BALLS = {1.0: project_l1_ball, 2.0: project_l2_ball, math.inf: project_linf_ball}


def _dykstra_single(z, x0, eps, lo, hi, ball, tol, max_iter):
    if eps == 0:
        return x0.copy()
    x = z.copy()
    pa = np.zeros_like(z)
    pb = np.zeros_like(z)
    for _ in range(max_iter):
        y = ball(x + pa, x0, eps)
        pa = x + pa - y
        x_new = project_box(y + pb, lo, hi)
        pb = y + pb - x_new
        change = np.abs(x_new - x).max()
        gap = np.abs(x_new - y).max()
        x = x_new
        if change <= tol and gap <= tol:
            return x
    raise RuntimeError("Dykstra did not converge")  # pragma: no cover


def dykstra_projection(
    x0, z, eps, p, lo, hi, tol: float = 1e-15, max_iter: int = 200_000
) -> np.ndarray:
    """Projection of z onto ``{v: ||v - x0||_p <= eps} ∩ [lo, hi]`` via Dykstra's algorithm.

    Alternates the exact projection onto the ball (L1: Duchi's sort-based
    projection, L2: radial scaling, Linf: clipping) with the box clip, with
    Dykstra's correction terms, per sample and in float64, until the iterates
    stop moving.  ``p`` must be 1, 2 or inf.
    """
    x0, z = as64(x0), as64(z)
    n = len(x0)
    ball = _BALLS[float(p)]
    eps = _per_sample(eps, n)
    lo = np.broadcast_to(as64(lo), x0.shape).reshape(n, -1)
    hi = np.broadcast_to(as64(hi), x0.shape).reshape(n, -1)
    xf, zf = x0.reshape(n, -1), z.reshape(n, -1)
    out = np.stack(
        [_dykstra_single(zf[i], xf[i], eps[i], lo[i], hi[i], ball, tol, max_iter) for i in range(n)]
    )
    return out.reshape(x0.shape)


def project_then_clip(x0, z, eps, p, lo, hi) -> np.ndarray:
    """The common (wrong) approach: project onto the ball, then clip to the box."""
    x0, z = as64(x0), as64(z)
    n = len(x0)
    ball = _BALLS[float(p)]
    eps = _per_sample(eps, n)
    xf, zf = x0.reshape(n, -1), z.reshape(n, -1)
    out = np.stack([ball(zf[i], xf[i], eps[i]) for i in range(n)]).reshape(x0.shape)
    return np.clip(out, as64(lo), as64(hi))
