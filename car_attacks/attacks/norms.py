"""What an attack does differently per Lp norm: one object per norm, asked by every family.

A :class:`Norm` holds ``p`` and the foolbox distance, the steepest-ascent direction of a
gradient (gradient family, HopSkipJump's update), a random point of the ball (the PGD
start), and HopSkipJump's probe distribution and binary search. Attacks hold a norm
(``norm = L2``) instead of switching on strings or mixing in per-norm classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import eagerpy as ep
from foolbox.attacks.gradient_descent_base import uniform_l1_n_balls, uniform_l2_n_balls
from foolbox.distances import LpDistance

from ..core.tensors import Bounds, batch_view, flatten_batch, lp_norms, room_along
from .sampling import Distribution, draw

__all__ = ["L1", "L2", "LINF", "Norm", "norm_named", "sparse_sign_direction"]


@dataclass(frozen=True, kw_only=True)
class Norm:
    """The Lp norm an attack measures perturbations in, and what depends on it."""

    name: str
    p: float

    @property
    def distance(self) -> LpDistance:
        """The foolbox distance ``||x - x0||_p``."""
        return LpDistance(self.p)

    def direction(
        self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds, sparsity: float = 1.0
    ) -> ep.Tensor:
        """The steepest-ascent direction of ``gradient`` in this norm (any scale).
        ``sparsity`` is the fraction of coordinates an L1 direction moves."""
        raise NotImplementedError(f"no ascent direction for {self.name}")

    def ball_sample(self, x0: ep.Tensor, epsilon: ep.Tensor, *, seed: int | None) -> ep.Tensor:
        """A random point of the ball of radius ``epsilon`` (N,) around 0, shaped like ``x0``."""
        raise NotImplementedError(f"no ball sample for {self.name}")

    def probe_distribution(self) -> Distribution:
        """HopSkipJump's probe noise."""
        raise NotImplementedError(f"HopSkipJump does not support {self.name}")

    def search_range(self, originals: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        """Upper end (N,) of HopSkipJump's binary search parameter ``t`` (lower end 0)."""
        raise NotImplementedError(f"HopSkipJump does not support {self.name}")

    def search_resolution(self, d: int) -> float:
        """Divisor of ``gamma`` in the binary search threshold for inputs of ``d`` entries."""
        raise NotImplementedError(f"HopSkipJump does not support {self.name}")

    def towards(self, originals: ep.Tensor, perturbed: ep.Tensor, t: ep.Tensor) -> ep.Tensor:
        """The point of parameter ``t`` (N,) between ``originals`` and ``perturbed``."""
        raise NotImplementedError(f"HopSkipJump does not support {self.name}")


@dataclass(frozen=True, kw_only=True)
class L1Norm(Norm):
    """L1: the sparse sign direction; a uniform L1-ball sample."""

    def direction(
        self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds, sparsity: float = 1.0
    ) -> ep.Tensor:
        return sparse_sign_direction(gradient, x, bounds, sparsity)

    def ball_sample(self, x0: ep.Tensor, epsilon: ep.Tensor, *, seed: int | None) -> ep.Tensor:
        n, dim = flatten_batch(x0).shape
        if seed is None:
            ball = uniform_l1_n_balls(x0, n, dim)
        else:  # exponential spacings: e_1..e_n / (e_1 + ... + e_{n+1}), random signs
            u = draw(x0, "uniform", seed=seed, shape=(n, dim + 1))
            spacings = -ep.log(ep.maximum((u + 1) / 2, 1e-12))
            signs = draw(x0, "uniform", seed=seed, stream=1, shape=(n, dim)).sign()
            ball = signs * spacings[:, :dim] / spacings.sum(axis=1, keepdims=True)
        return ball.reshape(x0.shape) * batch_view(epsilon, x0.ndim)


@dataclass(frozen=True, kw_only=True)
class L2Norm(Norm):
    """L2: the gradient itself; a uniform L2-ball sample; Gaussian probes; a search along
    the segment ``(1 - t) x + t x'``, ``t`` in [0, 1]."""

    def direction(
        self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds, sparsity: float = 1.0
    ) -> ep.Tensor:
        return gradient

    def ball_sample(self, x0: ep.Tensor, epsilon: ep.Tensor, *, seed: int | None) -> ep.Tensor:
        n, dim = flatten_batch(x0).shape
        if seed is None:
            ball = uniform_l2_n_balls(x0, n, dim)
        else:  # Voelker et al. (2017): the first n of n + 2 normal coordinates, normalised
            g = draw(x0, "normal", seed=seed, shape=(n, dim + 2))
            ball = (g / lp_norms(g, 2.0).reshape((-1, 1)))[:, :dim]
        return ball.reshape(x0.shape) * batch_view(epsilon, x0.ndim)

    def probe_distribution(self) -> Distribution:
        return "normal"

    def search_range(self, originals: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        return ep.ones(perturbed, len(perturbed))

    def search_resolution(self, d: int) -> float:
        return d * math.sqrt(d)

    def towards(self, originals: ep.Tensor, perturbed: ep.Tensor, t: ep.Tensor) -> ep.Tensor:
        t_ = batch_view(t, originals.ndim)
        return (1.0 - t_) * originals + t_ * perturbed


@dataclass(frozen=True, kw_only=True)
class LinfNorm(Norm):
    """L-inf: the gradient sign; a uniform cube sample; uniform probes; a search over the
    radius ``t`` of the L-inf box around the original that ``x'`` is clamped to."""

    def direction(
        self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds, sparsity: float = 1.0
    ) -> ep.Tensor:
        return gradient.sign()

    def ball_sample(self, x0: ep.Tensor, epsilon: ep.Tensor, *, seed: int | None) -> ep.Tensor:
        return draw(x0, "uniform", seed=seed) * batch_view(epsilon, x0.ndim)

    def probe_distribution(self) -> Distribution:
        return "uniform"

    def search_range(self, originals: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        return self.distance(originals, perturbed)

    def search_resolution(self, d: int) -> float:
        return d * d

    def towards(self, originals: ep.Tensor, perturbed: ep.Tensor, t: ep.Tensor) -> ep.Tensor:
        t_ = batch_view(t, originals.ndim)
        return ep.minimum(ep.maximum(perturbed, originals - t_), originals + t_)


L1 = L1Norm(name="l1", p=1.0)
L2 = L2Norm(name="l2", p=2.0)
LINF = LinfNorm(name="linf", p=math.inf)


def norm_named(name: str, choices: tuple[Norm, ...] = (L1, L2, LINF)) -> Norm:
    """The norm called ``name`` among ``choices``, else a ValueError naming it."""
    for norm in choices:
        if norm.name == name:
            return norm
    names = " or ".join(repr(norm.name) for norm in choices)
    raise ValueError(f"constraint must be {names}, got constraint={name!r}")


def sparse_sign_direction(
    gradient: ep.Tensor, x: ep.Tensor, bounds: Bounds, top_fraction: float
) -> ep.Tensor:
    """``sign(g_i)`` on the ``ceil(q n)`` largest ``|g_i|`` whose coordinate can still move
    in that direction (room to the box > 0), zero elsewhere."""
    lo, hi = bounds
    g = flatten_batch(gradient)
    movable = flatten_batch(room_along(x, gradient, lo, hi)) > 0
    score = ep.where(movable, g.abs(), 0.0)
    k = max(1, math.ceil(top_fraction * g.shape[1]))
    if k >= g.shape[1]:
        return ep.where(movable, g.sign(), 0.0).reshape(gradient.shape)
    kth = ep.topk(score, k)[0][:, -1:]
    chosen = ep.logical_and(score >= kth, score > 0)
    return ep.where(chosen, g.sign(), 0.0).reshape(gradient.shape)
