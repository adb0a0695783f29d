"""Training on inputs with normalised perturbations: clipping-aware noise as a transform.

The second use of clipping-aware rescaling in Rauber & Bethge (2020) is data
augmentation whose perturbation size is exact *after* clipping:
:class:`ClippingAwareNoise` draws Gaussian or uniform noise ``n`` per sample and
returns

    clip(x + eta * n, lo, hi)   with   ||clip(x + eta * n, lo, hi) - x||_p == eps

for p = 1, 2 or inf (any p >= 1 works), ``eta`` from the exact Newton solve
(:func:`car_attacks.core.rescaling.solve_eta`). Where even a saturating ``eta`` cannot reach
``eps`` (a sample already at the box faces), the largest attainable norm along ``n`` is
used (see :func:`car_attacks.reachable_norm`).

>>> noise = ClippingAwareNoise(eps=(0.0, 2.0), p=2, distribution="gaussian", seed=0)
>>> noise.train()                     # active in training mode only
>>> x_noisy = noise(x)                # x: (N, C, H, W) in [0, 1]

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware Normalization and
Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import eagerpy as ep
import torch
from torch import Tensor, nn

from ..core.rescaling import solve_eta
from ..core.tensors import UNIT_BOUNDS
from ..core.validation import parse_p

__all__ = ["ClippingAwareNoise", "NoiseDistribution"]

NoiseDistribution = Literal["gaussian", "normal", "uniform"]
_DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "normal", "uniform")
_BOUNDS_SLACK = 1e-5
"""Inputs may lie this far (relative to ``hi - lo``) outside the bounds (rounding)."""


class ClippingAwareNoise(nn.Module):
    """Adds noise whose *clipped* Lp norm is exactly ``eps`` for every sample.

    Args:
        eps: Perturbation size in the units of ``bounds``: a float, or a range
            ``(lo, hi)`` from which each sample's size is drawn uniformly.
        p: Norm order, ``1``, ``2``, ``math.inf`` / ``"inf"`` (any ``p >= 1``).
        distribution: ``"gaussian"`` (alias ``"normal"``): ``n ~ N(0, I)``;
            ``"uniform"``: ``n ~ U(-1, 1)^d``.
        bounds: ``(lo, hi)`` of the inputs; outputs stay inside.
        seed: Seeds a private :class:`torch.Generator` (reproducible draws; the
            stream advances with every call). Ignored when ``generator`` is given.
        generator: A generator to draw from (its device is used for the draws).
        always: Also perturb in eval mode (by default the module is the identity in
            eval mode, like dropout).

    The transform needs no gradient (it runs under ``torch.no_grad()``). If the input
    requires grad the output is ``x + delta`` with ``delta`` detached, so gradients
    pass through unchanged. Floating inputs keep their dtype; half precision is
    computed in float32.
    """

    def __init__(
        self,
        eps: float | Sequence[float],
        p: float | str = 2,
        distribution: NoiseDistribution = "gaussian",
        bounds: tuple[float, float] = UNIT_BOUNDS,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        always: bool = False,
    ) -> None:
        super().__init__()
        self.eps_range = _parse_eps(eps)
        self.p = parse_p(p)
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {_DISTRIBUTIONS}, got distribution={distribution!r}"
            )
        self.distribution: NoiseDistribution = distribution
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be a pair of floats, got bounds={bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds must be finite with lower < upper, got bounds={bounds!r}")
        self.bounds = (lo, hi)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be None or an int, got seed={seed!r}")
        self.seed = seed
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
        self.generator = generator
        self.always = always
        #: Per-sample sizes used by the last perturbing call (``None`` before it).
        self.last_eps: Tensor | None = None

    @property
    def eps(self) -> float | tuple[float, float]:
        """The fixed size, or the ``(lo, hi)`` range sizes are drawn from."""
        lo, hi = self.eps_range
        return lo if lo == hi else (lo, hi)

    def extra_repr(self) -> str:
        p = "inf" if self.p == math.inf else f"{self.p:g}"
        return (
            f"eps={self.eps}, p={p}, distribution={self.distribution!r}, "
            f"bounds={self.bounds}, seed={self.seed}, always={self.always}"
        )

    # -- the draws -----------------------------------------------------------------------

    def _rand(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        gen = self.generator
        where = gen.device if gen is not None else device
        if self.distribution == "uniform":
            t = torch.rand(shape, generator=gen, dtype=dtype, device=where) * 2.0 - 1.0
        else:
            t = torch.randn(shape, generator=gen, dtype=dtype, device=where)
        return t.to(device)

    def sample_noise(self, x: Tensor) -> Tensor:
        """A noise direction of the shape of ``x`` (before rescaling)."""
        return self._rand(tuple(x.shape), _compute_dtype(x.dtype), x.device)

    def sample_eps(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Per-sample perturbation sizes, shape ``(n,)``."""
        lo, hi = self.eps_range
        if lo == hi:
            return torch.full((n,), lo, dtype=dtype, device=device)
        return lo + (hi - lo) * self._uniform01(n, dtype, device)

    def _uniform01(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        gen = self.generator
        where = gen.device if gen is not None else device
        return torch.rand((n,), generator=gen, dtype=dtype, device=where).to(device)

    # -- the transform -------------------------------------------------------------------

    def perturb(self, x: Tensor, noise: Tensor, eps: Tensor) -> Tensor:
        """``clip(x + eta * noise)`` with ``||clip(x + eta * noise) - x||_p == eps`` (or the
        largest attainable norm); ``eps`` has shape ``(N,)``. No gradient."""
        lo, hi = self.bounds
        with torch.no_grad():
            xc = x.detach().to(noise.dtype)
            eta = solve_eta(
                ep.astensor(xc),
                ep.astensor(noise),
                ep.astensor(eps.to(noise.dtype)),
                p=self.p,
                lo=lo,
                hi=hi,
                method="newton",
            ).raw
            eta = eta.reshape((-1,) + (1,) * (x.dim() - 1))
            return (xc + eta * noise).clamp_(lo, hi)

    def forward(self, x: Tensor) -> Tensor:
        """Perturb a batch ``(N, ...)`` in training mode (or with ``always``); else return it."""
        if not (self.training or self.always):
            return x
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"expected a non-empty batch (N, ...), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected floating-point inputs, got dtype {x.dtype}")
        lo, hi = self.bounds
        with torch.no_grad():
            slack = _BOUNDS_SLACK * (hi - lo)
            if bool(x.min() < lo - slack) or bool(x.max() > hi + slack):
                raise ValueError(
                    f"inputs must lie in bounds {self.bounds}, got values in "
                    f"[{float(x.min()):g}, {float(x.max()):g}]"
                )
            xin = x.detach().clamp(lo, hi)
            dtype = _compute_dtype(x.dtype)
            noise = self.sample_noise(xin)
            eps = self.sample_eps(x.shape[0], dtype, x.device)
            self.last_eps = eps
            out = self.perturb(xin, noise, eps).to(x.dtype)
        if x.requires_grad and torch.is_grad_enabled():
            return x + (out - x.detach())
        return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _parse_eps(eps: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a float or a range (lo, hi), got eps={eps!r}")
    if isinstance(eps, int | float):
        lo = hi = float(eps)
    else:
        try:
            lo, hi = (float(e) for e in eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a float or a range (lo, hi), got eps={eps!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"eps must be finite with 0 <= lo <= hi, got eps={eps!r}")
    return lo, hi
