"""The rescaling choice every attack takes: exact CAR, the bisection baseline, or naive.

``rescaling="car"`` (default) makes every perturbation the attack asks for
survive clipping with exactly the requested norm and projects exactly onto
ball ∩ box; ``"bisection"`` does the same with the iterative baseline;
``"naive"`` is what attack libraries do today (``eps / ||delta||_p``, then
project onto the ball and clip), so one code path is compared three ways.
"""

from __future__ import annotations

import math
from typing import Literal

import eagerpy as ep
from foolbox.models import Model

from ..core.projection import project_l1, project_l2, project_linf
from ..core.rescaling import solve_eta
from ..core.tensors import Bound, batch_view, clip_to_bounds, flatten_batch, lp_norms

Rescaling = Literal["car", "bisection", "naive"]
RESCALINGS: tuple[str, ...] = ("car", "bisection", "naive")
_SOLVER = {"car": "newton", "bisection": "bisection", "naive": "naive"}
BISECTION_RTOL = 1e-7
"""Bracket width of the bisection baseline; gives clipped norms within ~1e-7 relative."""


def model_bounds(model: Model) -> tuple[float, float]:
    """A foolbox model's input bounds as two floats (the box every attack clips to)."""
    lo, hi = model.bounds
    return float(lo), float(hi)


def check_rescaling(rescaling: str) -> Rescaling:
    """``rescaling`` if it names a known choice, else a ValueError naming it."""
    if rescaling not in RESCALINGS:
        raise ValueError(f"rescaling must be one of {RESCALINGS}, got rescaling={rescaling!r}")
    return rescaling  # type: ignore[return-value]


def rescale_eta(
    x: ep.Tensor,
    direction: ep.Tensor,
    size: ep.Tensor,
    *,
    p: float,
    bounds: tuple[Bound, Bound],
    rescaling: Rescaling,
) -> ep.Tensor:
    """Per-sample scale ``eta`` (N,) so that ``clip(x + eta*direction)`` moves ``x`` by ``size``
    in the Lp norm (exactly for car, to tolerance for bisection, nominally for naive)."""
    lo, hi = bounds
    return solve_eta(
        x,
        direction,
        size,
        p=p,
        lo=lo,
        hi=hi,
        method=_SOLVER[rescaling],
        bisection_rtol=BISECTION_RTOL,
    )


def clipped_step(
    x: ep.Tensor,
    direction: ep.Tensor,
    size: ep.Tensor,
    *,
    p: float,
    bounds: tuple[Bound, Bound],
    rescaling: Rescaling,
) -> ep.Tensor:
    """``clip(x + eta*direction)`` with ``eta`` from :func:`rescale_eta`."""
    eta = rescale_eta(x, direction, size, p=p, bounds=bounds, rescaling=rescaling)
    return clip_to_bounds(x + batch_view(eta, x.ndim) * direction, *bounds)


def project(
    x0: ep.Tensor,
    z: ep.Tensor,
    eps: ep.Tensor,
    *,
    p: float,
    bounds: tuple[Bound, Bound],
    rescaling: Rescaling,
) -> ep.Tensor:
    """Onto ``{v : ||v - x0||_p <= eps} ∩ box``: exact for car and bisection (the L2 case
    solves its scale with the chosen method), project-then-clip for naive."""
    lo, hi = bounds
    if rescaling == "naive":
        return project_then_clip(x0, z, eps, p=p, bounds=bounds)
    if p == math.inf:
        return project_linf(x0, z, eps, lo, hi)
    if p == 2:
        return project_l2(x0, z, eps, lo, hi, method=_SOLVER[rescaling])
    if p == 1:
        return project_l1(x0, z, eps, lo, hi)
    raise ValueError(f"p must be 1, 2 or inf for projections, got p={p!r}")


def project_then_clip(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, *, p: float, bounds: tuple[Bound, Bound]
) -> ep.Tensor:
    """The common approximation: shrink ``z - x0`` onto the Lp ball, then clip to the box.

    For p = inf this is the exact projection; for p = 2 it is not; for p = 1 the
    shrinking is a rescaling, not the L1 projection (foolbox 3.3.4 does this).
    """
    w = z - x0
    e = batch_view(eps, x0.ndim)
    if p == math.inf:
        shrunk = ep.minimum(ep.maximum(w, -e), e)
    else:
        norms = ep.maximum(lp_norms(w, p), 1e-12)
        shrunk = w * batch_view(ep.minimum(1.0, eps / norms), x0.ndim)
    return clip_to_bounds(x0 + shrunk, *bounds)


def perturbation_norms(x0: ep.Tensor, x: ep.Tensor, p: float) -> ep.Tensor:
    """``||x - x0||_p`` per sample, shape (N,)."""
    return lp_norms(flatten_batch(x - x0), p)
