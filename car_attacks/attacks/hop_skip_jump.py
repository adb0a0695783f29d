"""HopSkipJump (L2 and L-inf) with clipping-aware probes and steps, in the model's bounds.

Each iteration of HopSkipJump sits on the decision boundary, estimates the
gradient direction of the decision function from the decisions at random
probes of size ``delta`` around the boundary point, takes a geometric step
along the estimate and returns to the boundary by a binary search towards the
original.

Differences to foolbox 3.3.4's ``HopSkipJumpAttack``:

* The model's bounds are used everywhere. foolbox clips probes and steps to
  (0, 1) whatever the bounds; with (0, 255) its step-size search never ends.
* The gradient estimate is normalised per sample (foolbox divides by the norm of
  the whole batch, so one sample's estimate scales the others').
* Probes and geometric steps are rescaled with ``rescaling``: with ``"car"``
  (default) each clipped probe perturbation has norm exactly ``delta`` in the
  constraint's norm (or the largest norm the box allows along it) and each
  clipped geometric step has exactly the requested size; ``"bisection"`` finds the
  same scales iteratively; ``"naive"`` scales before clipping.
* The binary searches stop per sample, step-size searches are capped, the best
  adversarial over the iterations is returned, and the grid search selects per
  sample.
* The first probe size is ``0.1 * (upper - lower)`` as in the reference code.
* For L-inf, probes are measured in the L-inf norm (foolbox and the reference code
  normalise every probe in L2); on the test CNN this gave smaller L-inf distances.
* With an int ``seed`` every sample's draws are fixed, so ``repeat()`` reruns the
  same attack; use ``seed=None`` (the global generator) for independent restarts.

The steps are overridable methods: :meth:`~ClippingAwareHopSkipJump.select_delta`,
:meth:`~ClippingAwareHopSkipJump.sample_probes`,
:meth:`~ClippingAwareHopSkipJump.estimate_gradient`,
:meth:`~ClippingAwareHopSkipJump.normalize_gradient`,
:meth:`~ClippingAwareHopSkipJump.geometric_step`,
:meth:`~ClippingAwareHopSkipJump.take_step`,
:meth:`~ClippingAwareHopSkipJump.grid_step`,
:meth:`~ClippingAwareHopSkipJump.binary_search`.

References:
    J. Chen, M. I. Jordan, M. J. Wainwright, "HopSkipJumpAttack: A Query-Efficient
    Decision-Based Attack", IEEE S&P 2020, https://arxiv.org/abs/1904.02144.
    J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware Normalization and
    Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import math
from typing import Literal

import eagerpy as ep
import numpy as np
from foolbox.attacks.base import MinimizationAttack

from ..core.tensors import batch_view, flatten_batch, lp_norms
from .base import AttackCall, Bounds, DecisionBasedAttack, IsAdversarial, Rescaling
from .norms import L2, LINF, Norm, norm_named
from .sampling import draw

Constraint = Literal["l2", "linf"]
StepsizeSearch = Literal["geometric_progression", "grid_search"]
MAX_HALVINGS = 64
"""Halvings of the geometric step before a sample keeps its point for this iteration."""
MAX_BISECTIONS = 100
"""Cap on the iterations of one binary search (each halves the bracket)."""


class ClippingAwareHopSkipJump(DecisionBasedAttack):
    """HopSkipJump [Chen et al. 2020] for L2 or L-inf with clipping-aware probes and steps.

    Args:
        init_attack: Attack that finds starting points when ``starting_points`` is not
            passed to the call (default: blended uniform noise, as in foolbox).
        steps: Number of iterations (gradient estimate, step, binary search).
        initial_gradient_eval_steps: Probes for the first gradient estimate; iteration
            ``t`` uses ``initial * sqrt(t + 1)`` of them.
        max_gradient_eval_steps: Upper limit on the probes per estimate.
        stepsize_search: ``"geometric_progression"`` (start at ``dist / sqrt(t + 1)`` and
            halve until adversarial) or ``"grid_search"`` (20 log-spaced sizes).
        gamma: Binary-search threshold ``gamma / d^1.5`` (L2) or ``gamma / d^2`` (L-inf),
            relative to the distance; probe size ``gamma / d`` times the distance.
        constraint: ``"l2"`` or ``"linf"``, the norm that is minimised.
        rescaling: ``"car"`` (exact clipping-aware), ``"bisection"`` or ``"naive"``.
        seed: ``None`` draws from the backend's global generator; an int gives every
            sample its own random streams (batch-independent results).
    """

    def __init__(
        self,
        *,
        init_attack: MinimizationAttack | None = None,
        steps: int = 64,
        initial_gradient_eval_steps: int = 100,
        max_gradient_eval_steps: int = 10000,
        stepsize_search: StepsizeSearch = "geometric_progression",
        gamma: float = 1.0,
        constraint: Constraint = "l2",
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(init_attack=init_attack, rescaling=rescaling, seed=seed)
        self.constraint_norm = norm_named(constraint, (L2, LINF))
        if stepsize_search not in ("geometric_progression", "grid_search"):
            raise ValueError(
                "stepsize_search must be 'geometric_progression' or 'grid_search', "
                f"got stepsize_search={stepsize_search!r}"
            )
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got steps={steps!r}")
        if initial_gradient_eval_steps < 1 or max_gradient_eval_steps < 1:
            raise ValueError(
                "initial_gradient_eval_steps and max_gradient_eval_steps must be >= 1, got "
                f"initial_gradient_eval_steps={initial_gradient_eval_steps!r}, "
                f"max_gradient_eval_steps={max_gradient_eval_steps!r}"
            )
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got gamma={gamma!r}")
        self.steps = steps
        self.initial_gradient_eval_steps = initial_gradient_eval_steps
        self.max_gradient_eval_steps = max_gradient_eval_steps
        self.stepsize_search: StepsizeSearch = stepsize_search
        self.gamma = gamma
        self.constraint: Constraint = constraint

    @property
    def norm(self) -> Norm:
        """The constraint's norm (L2 or L-inf)."""
        return self.constraint_norm

    def minimize(
        self, call: AttackCall, is_adversarial: IsAdversarial, starts: ep.Tensor
    ) -> ep.Tensor:
        """Minimise the distance to ``call.x`` among adversarials; returns the best found."""
        originals, bounds = call.x, call.bounds
        x_advs = self.binary_search(is_adversarial, originals, starts)
        distances = self.distance(originals, x_advs)
        best, best_distances = x_advs, distances

        for step in range(self.steps):
            delta = self.select_delta(originals, distances, step, bounds=bounds)
            num = int(
                min(
                    self.initial_gradient_eval_steps * math.sqrt(step + 1),
                    self.max_gradient_eval_steps,
                )
            )
            probes = self.sample_probes(
                x_advs, delta, num, bounds=bounds, key=originals, stream=step
            )
            decisions = ep.stack([is_adversarial(probe) for probe in probes], 0)
            perturbations = (probes - ep.expand_dims(x_advs, 0)) / batch_view(
                ep.where(delta > 0, delta, 1.0), x_advs.ndim
            )
            gradients = self.estimate_gradient(perturbations, decisions)
            update = self.norm.direction(gradients, x=x_advs, bounds=bounds)

            if self.stepsize_search == "geometric_progression":
                sizes = distances / math.sqrt(step + 1)
                x_advs = self.geometric_step(is_adversarial, x_advs, update, sizes, bounds=bounds)
                x_advs = self.binary_search(is_adversarial, originals, x_advs)
            else:
                x_advs = self.grid_step(
                    is_adversarial, originals, x_advs, update, distances, bounds=bounds
                )
            distances = self.distance(originals, x_advs)
            better = distances < best_distances
            best = ep.where(batch_view(better, x_advs.ndim), x_advs, best)
            best_distances = ep.where(better, distances, best_distances)
        return best

    # ------------------------------------------------------------------ the steps

    def select_delta(
        self, originals: ep.Tensor, distances: ep.Tensor, step: int, *, bounds: Bounds
    ) -> ep.Tensor:
        """Probe size per sample: ``0.1 * (upper - lower)`` first, then ``gamma / d`` times
        the current distance (``sqrt(d) theta`` resp. ``d theta`` in the paper's notation)."""
        if step == 0:
            lo, hi = bounds
            return ep.ones_like(distances) * (0.1 * (hi - lo))
        d = int(np.prod(originals.shape[1:]))
        return distances * (self.gamma / d)

    def sample_probes(
        self,
        x_advs: ep.Tensor,
        delta: ep.Tensor,
        num: int,
        *,
        bounds: Bounds,
        key: ep.Tensor,
        stream: int,
    ) -> ep.Tensor:
        """``num`` probe points per sample, shape ``(num, N, ...)``: ``clip(x_adv + eta * u)``
        with ``u`` Gaussian (L2) or uniform (L-inf) and ``eta`` such that the clipped
        perturbation has norm ``delta`` in the constraint's norm (car, bisection) or
        ``eta = delta / ||u||`` (naive). ``key`` (the originals) seeds per-sample streams."""
        n = len(x_advs)
        u = draw(
            key,
            self.norm.probe_distribution(),
            seed=self.seed,
            stream=stream,
            shape=(n, num, *x_advs.shape[1:]),
        )
        u = u.transpose((1, 0, *range(2, u.ndim))).reshape((num * n, *x_advs.shape[1:]))
        x = ep.tile(ep.expand_dims(x_advs, 0), (num,) + (1,) * x_advs.ndim)
        x = x.reshape((num * n, *x_advs.shape[1:]))
        sizes = ep.tile(delta, (num,))
        probes = self.rescaled(bounds).clipped_step(x, u, sizes)
        return probes.reshape((num, *x_advs.shape))

    def estimate_gradient(self, perturbations: ep.Tensor, decisions: ep.Tensor) -> ep.Tensor:
        """Monte-Carlo estimate of the gradient direction from probe ``perturbations``
        (shape ``(B, N, ...)``, divided by ``delta``) and their ``decisions`` (``(B, N)``
        bool): mean of ``(+-1 - baseline) * perturbation``, normalised per sample."""
        signs = ep.where(decisions, 1.0, -1.0).astype(perturbations.dtype)
        mean = signs.mean(axis=0, keepdims=True)
        # baseline: subtract the mean sign unless all probes agree (as in the paper)
        values = ep.where(mean.abs() == 1, signs, signs - mean)
        values = values.reshape(values.shape + (1,) * (perturbations.ndim - 2))
        grad = (values * perturbations).mean(axis=0)
        return self.normalize_gradient(grad)

    def normalize_gradient(self, grad: ep.Tensor) -> ep.Tensor:
        """``grad`` divided by each sample's own L2 norm (foolbox divides by the batch's)."""
        norms = lp_norms(flatten_batch(grad), 2)
        return grad / batch_view(norms + 1e-12, grad.ndim)

    def take_step(
        self, x_advs: ep.Tensor, update: ep.Tensor, sizes: ep.Tensor, *, bounds: Bounds
    ) -> ep.Tensor:
        """``clip(x_adv + eta * update)`` whose clipped step has size ``sizes`` in the
        constraint's norm (exact for car and bisection, before clipping for naive)."""
        return self.rescaled(bounds).clipped_step(x_advs, update, sizes)

    def geometric_step(
        self,
        is_adversarial: IsAdversarial,
        x_advs: ep.Tensor,
        update: ep.Tensor,
        sizes: ep.Tensor,
        *,
        bounds: Bounds,
    ) -> ep.Tensor:
        """Step along ``update`` from ``sizes``, halving per sample until adversarial; after
        ``MAX_HALVINGS`` halvings a sample keeps ``x_advs``."""
        proposals = x_advs
        success = ep.zeros(x_advs, len(x_advs)).bool()
        for _ in range(MAX_HALVINGS):
            proposals = self.take_step(x_advs, update, sizes, bounds=bounds)
            success = is_adversarial(proposals)
            if success.all().item():
                return proposals
            sizes = ep.where(success, sizes, sizes / 2.0)
        return ep.where(batch_view(success, x_advs.ndim), proposals, x_advs)

    def grid_step(
        self,
        is_adversarial: IsAdversarial,
        originals: ep.Tensor,
        x_advs: ep.Tensor,
        update: ep.Tensor,
        distances: ep.Tensor,
        *,
        bounds: Bounds,
    ) -> ep.Tensor:
        """Try 20 step sizes ``logspace(-4, 0) * distance``; binary-search each adversarial
        proposal back to the boundary and keep, per sample, the closest."""
        best, best_distances = x_advs, self.distance(originals, x_advs)
        for factor in np.logspace(-4, 0, num=20, endpoint=True):
            proposals = self.take_step(x_advs, update, distances * float(factor), bounds=bounds)
            mask = is_adversarial(proposals)
            if not mask.any().item():
                continue
            proposals = self.binary_search(is_adversarial, originals, proposals)
            proposal_distances = self.distance(originals, proposals)
            better = ep.logical_and(mask, proposal_distances < best_distances)
            best = ep.where(batch_view(better, x_advs.ndim), proposals, best)
            best_distances = ep.where(better, proposal_distances, best_distances)
        return best

    def binary_search(
        self, is_adversarial: IsAdversarial, originals: ep.Tensor, perturbed: ep.Tensor
    ) -> ep.Tensor:
        """The adversarial end of a bisection between ``originals`` and the adversarial
        ``perturbed``: along the segment (L2) or by shrinking the L-inf box around the
        original (L-inf), each sample to its own threshold. Stays inside the bounds."""
        d = int(np.prod(perturbed.shape[1:]))
        highs = self.norm.search_range(originals, perturbed)
        thresholds = highs * (self.gamma / self.norm.search_resolution(d))
        lows = ep.zeros_like(highs)
        for _ in range(MAX_BISECTIONS):
            mids = (lows + highs) / 2
            # a sample stops at its threshold or when the midpoint no longer moves
            active = ep.logical_and(
                highs - lows > thresholds, ep.logical_and(mids > lows, mids < highs)
            )
            if not active.any().item():
                break
            is_adv = is_adversarial(self.norm.towards(originals, perturbed, mids))
            highs = ep.where(ep.logical_and(active, is_adv), mids, highs)
            lows = ep.where(ep.logical_and(active, is_adv.logical_not()), mids, lows)
        return self.norm.towards(originals, perturbed, highs)
