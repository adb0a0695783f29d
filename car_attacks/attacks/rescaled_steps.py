"""The rescaling choice (exact CAR, the bisection baseline, or naive) and the steps and
projections it makes.

``rescaling="car"`` (default) makes every perturbation the attack asks for
survive clipping with exactly the requested norm and projects exactly onto
ball ∩ box; ``"bisection"`` does the same with the iterative baseline;
``"naive"`` is what attack libraries do today (``eps / ||delta||_p``, then
project onto the ball and clip), so one code path is compared three ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import eagerpy as ep

from ..core.clock import rescaling_section
from ..core.projection import project_unchecked
from ..core.rescaling import solve_eta
from ..core.tensors import Bounds, batch_view, clip_to_bounds, lp_norms

__all__ = [
    "RESCALINGS",
    "SOLVER",
    "RescaledSteps",
    "Rescaling",
    "check_rescaling",
    "project_then_clip",
]

Rescaling = Literal["car", "bisection", "naive"]
"""``"car"``: exact clipping-aware rescaling; ``"bisection"``: the iterative baseline;
``"naive"``: ``eps / ||delta||_p`` then clip, as attack libraries do."""
RESCALINGS: tuple[Rescaling, ...] = ("car", "bisection", "naive")


def check_rescaling(rescaling: str) -> Rescaling:
    """``rescaling`` if it names a known choice, else a ValueError naming it."""
    for choice in RESCALINGS:
        if rescaling == choice:
            return choice
    raise ValueError(f"rescaling must be one of {RESCALINGS}, got rescaling={rescaling!r}")


SOLVER: dict[Rescaling, str] = {"car": "newton", "bisection": "bisection", "naive": "naive"}
"""The :func:`~car_attacks.core.rescaling.solve_eta` method behind each rescaling choice."""


@dataclass(frozen=True, kw_only=True)
class RescaledSteps:
    """Steps of Lp size and projections onto ball ∩ box, made the way ``rescaling`` says."""

    p: float
    bounds: Bounds
    rescaling: Rescaling

    def eta(self, x: ep.Tensor, direction: ep.Tensor, size: ep.Tensor) -> ep.Tensor:
        """Per-sample scale ``eta`` (N,) so that ``clip(x + eta*direction)`` moves ``x`` by
        ``size`` in the Lp norm (exactly for car, to ``BISECTION_RTOL`` for bisection,
        nominally for naive); timed as rescaling work (:mod:`car_attacks.core.clock`)."""
        lo, hi = self.bounds
        with rescaling_section(x):
            return solve_eta(
                x, direction, size, p=self.p, lo=lo, hi=hi, method=SOLVER[self.rescaling]
            )

    def clipped_step(self, x: ep.Tensor, direction: ep.Tensor, size: ep.Tensor) -> ep.Tensor:
        """``clip(x + eta*direction)`` with ``eta`` from :meth:`eta` (timed as rescaling work)."""
        with rescaling_section(x):
            eta = self.eta(x, direction, size)
            return clip_to_bounds(x + batch_view(eta, x.ndim) * direction, *self.bounds)

    def project(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
        """Onto ``{v : ||v - x0||_p <= eps} ∩ box``: exact for car and bisection (the L2 case
        solves its scale with the chosen method), project-then-clip for naive; timed as
        rescaling work."""
        if self.rescaling != "naive":
            return self.project_exact(x0, z, eps)
        with rescaling_section(x0):
            return project_then_clip(x0, z, eps, p=self.p, bounds=self.bounds)

    def project_exact(self, x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
        """Onto ``{v : ||v - x0||_p <= eps} ∩ box`` exactly whatever the rescaling (naive
        included: L1-APGD projects exactly in every variant, as the authors' code); the L2
        case solves its scale with the chosen method (Newton for naive); timed as
        rescaling work."""
        with rescaling_section(x0):
            lo, hi = self.bounds
            method = SOLVER["car" if self.rescaling == "naive" else self.rescaling]
            return project_unchecked(x0, z, eps, p=self.p, lo=lo, hi=hi, method=method)


def project_then_clip(
    x0: ep.Tensor, z: ep.Tensor, eps: ep.Tensor, *, p: float, bounds: Bounds
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
