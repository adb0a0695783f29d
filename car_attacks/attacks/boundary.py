"""The Boundary Attack (L2) with clipping-aware orthogonal and source steps.

Each step of the Boundary Attack draws a Gaussian direction orthogonal to the
line from the current adversarial to the original, takes an *orthogonal
(spherical) step* of relative size ``spherical_step`` and then a *source step*
of relative size ``source_step`` towards the original; the step sizes adapt to
the success rates of the two steps. In foolbox 3.3.4 both candidates are
computed and then clipped to the bounds, so near the box faces the orthogonal
step that survives clipping is shorter than the one asked for.

With ``rescaling="car"`` (default) the orthogonal perturbation is scaled with
the exact clipping-aware scale, so that the *clipped* perturbation has exactly
the intended L2 size ``spherical_step * ||x_adv - x||``, and the source step is
scaled so that its clipped version moves exactly the intended distance towards
the original. ``"bisection"`` finds the same scales iteratively;
``"naive"`` is foolbox's algorithm: under the same ``torch.manual_seed`` and the
same starting points it reproduces :class:`foolbox.attacks.BoundaryAttack`.

The steps are small overridable methods: :meth:`~ClippingAwareBoundaryAttack.proposal`,
:meth:`~ClippingAwareBoundaryAttack.orthogonal_step`,
:meth:`~ClippingAwareBoundaryAttack.step_towards_source` (and
:meth:`~ClippingAwareBoundaryAttack.orthogonal_noise`,
:meth:`~ClippingAwareBoundaryAttack.adapt_step_sizes`,
:meth:`~ClippingAwareBoundaryAttack.initialize`).

References:
    W. Brendel, J. Rauber, M. Bethge, "Decision-Based Adversarial Attacks:
    Reliable Attacks Against Black-Box Machine Learning Models", ICLR 2018,
    https://arxiv.org/abs/1712.04248.
    J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware Normalization and
    Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import eagerpy as ep
import numpy as np
from foolbox.attacks.base import MinimizationAttack

from ..core.tensors import batch_view, clip_to_bounds, flatten_batch, lp_norms
from .base import AttackCall, Bounds, DecisionBasedAttack, IsAdversarial, Rescaling
from .norms import L2
from .sampling import draw


class SuccessWindow:
    """The last ``maxlen`` outcomes (0/1) of a step, per sample; NaN marks empty slots."""

    def __init__(self, maxlen: int, n: int) -> None:
        self.data = np.full((maxlen, n), np.nan)
        self.next = 0

    def append(self, outcome: ep.Tensor) -> None:
        self.data[self.next] = outcome.numpy()
        self.next = (self.next + 1) % self.data.shape[0]

    def clear(self, samples: np.ndarray) -> None:
        self.data[:, samples] = np.nan

    def full(self) -> np.ndarray:
        return np.asarray(~np.isnan(self.data).any(axis=0))

    def rate(self) -> np.ndarray:
        """Success rate of full windows (NaN elsewhere)."""
        full = self.full()
        return np.where(full, np.where(full, self.data, 0.0).mean(axis=0), np.nan)


class ClippingAwareBoundaryAttack(DecisionBasedAttack):
    """The L2 Boundary Attack [Brendel et al. 2018] with clipping-aware step sizes.

    Args:
        init_attack: Attack that finds starting points when ``starting_points`` is not
            passed to the call (default: blended uniform noise, as in foolbox).
        steps: Maximum number of steps.
        spherical_step: Initial relative size of the orthogonal (spherical) step.
        source_step: Initial relative size of the step towards the original.
        source_step_convergance: The attack stops for a sample once its source step
            falls below this value (foolbox's spelling).
        step_adaptation: Factor by which the step sizes grow or shrink.
        update_stats_every_k: Test the spherical candidates and adapt the step sizes
            every k steps.
        rescaling: ``"car"`` (exact clipping-aware steps), ``"bisection"`` or ``"naive"``
            (foolbox's clip-after-step).
        seed: ``None`` draws from the backend's global generator as foolbox does; an int
            gives every sample its own random streams (batch-independent results, but
            ``repeat()`` then reruns identical attacks).
    """

    norm = L2

    def __init__(
        self,
        *,
        init_attack: MinimizationAttack | None = None,
        steps: int = 25000,
        spherical_step: float = 1e-2,
        source_step: float = 1e-2,
        source_step_convergance: float = 1e-7,
        step_adaptation: float = 1.5,
        update_stats_every_k: int = 10,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(init_attack=init_attack, rescaling=rescaling, seed=seed)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got steps={steps!r}")
        if not spherical_step > 0 or not source_step > 0:
            raise ValueError(
                "spherical_step and source_step must be > 0, got "
                f"spherical_step={spherical_step!r}, source_step={source_step!r}"
            )
        if not step_adaptation > 1:
            raise ValueError(
                f"step_adaptation must be > 1, got step_adaptation={step_adaptation!r}"
            )
        if update_stats_every_k < 1:
            raise ValueError(
                "update_stats_every_k must be >= 1, got "
                f"update_stats_every_k={update_stats_every_k!r}"
            )
        self.steps = steps
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.source_step_convergance = source_step_convergance
        self.step_adaptation = step_adaptation
        self.update_stats_every_k = update_stats_every_k

    def minimize(
        self, call: AttackCall, is_adversarial: IsAdversarial, starts: ep.Tensor
    ) -> ep.Tensor:
        """Minimise the L2 distance to ``call.x`` among adversarials; returns them."""
        originals, bounds, best_advs = call.x, call.bounds, starts
        n, ndim = len(originals), originals.ndim
        spherical_steps = ep.ones(originals, n) * self.spherical_step
        source_steps = ep.ones(originals, n) * self.source_step
        spherical_stats = SuccessWindow(maxlen=100, n=n)
        step_stats = SuccessWindow(maxlen=30, n=n)

        for step in range(1, self.steps + 1):
            converged = source_steps < self.source_step_convergance
            if converged.all().item():
                break
            source_norms = lp_norms(flatten_batch(originals - best_advs), 2)
            candidates, spherical_candidates = self.proposal(
                originals, best_advs, spherical_steps, source_steps, bounds=bounds, step=step
            )
            is_adv = is_adversarial(candidates)

            update_stats = step % self.update_stats_every_k == 0
            if update_stats:
                spherical_stats.append(is_adversarial(spherical_candidates))
                step_stats.append(is_adv)

            # closer by construction, but rounding could break it
            closer = lp_norms(flatten_batch(originals - candidates), 2) < source_norms
            improved = ep.logical_and(ep.logical_and(is_adv, closer), converged.logical_not())
            best_advs = ep.where(batch_view(improved, ndim), candidates, best_advs)

            if update_stats:
                spherical_steps, source_steps = self.adapt_step_sizes(
                    spherical_steps, source_steps, spherical_stats, step_stats
                )
        return best_advs

    # ------------------------------------------------------------------ the steps

    def proposal(
        self,
        originals: ep.Tensor,
        perturbed: ep.Tensor,
        spherical_steps: ep.Tensor,
        source_steps: ep.Tensor,
        *,
        bounds: Bounds,
        step: int,
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """``(candidates, spherical_candidates)`` for the current adversarials ``perturbed``:
        an orthogonal step followed by a source step, both inside ``bounds``."""
        shape = originals.shape
        x0 = flatten_batch(originals)
        adv = flatten_batch(perturbed)
        source = x0 - adv
        source_norms = lp_norms(source, 2)
        # (a zero distance only happens for an original that is itself adversarial)
        safe_norms = ep.where(source_norms > 0, source_norms, 1.0)
        source_directions = source / batch_view(safe_norms, 2)
        spherical = self.orthogonal_step(
            x0, adv, source_directions, source_norms, spherical_steps, bounds=bounds, step=step
        )
        candidates = self.step_towards_source(
            x0, spherical, source_norms, source_steps, bounds=bounds
        )
        return candidates.reshape(shape), spherical.reshape(shape)

    def orthogonal_noise(
        self, originals: ep.Tensor, source_directions: ep.Tensor, step: int
    ) -> ep.Tensor:
        """Gaussian directions orthogonal to ``source_directions`` (unit rows), shape (N, D).

        With ``seed=None`` one draw of shape (D, 1) is shared by the batch, as in foolbox.
        """
        n, d = source_directions.shape
        if self.seed is None:
            eta = ep.normal(source_directions, (d, 1))
            return eta.T - ep.matmul(source_directions, eta) * source_directions
        eta = draw(originals, "normal", seed=self.seed, stream=step, shape=(n, d))
        along = (eta * source_directions).sum(axis=1, keepdims=True)
        return eta - along * source_directions

    def orthogonal_step(
        self,
        originals: ep.Tensor,
        perturbed: ep.Tensor,
        source_directions: ep.Tensor,
        source_norms: ep.Tensor,
        spherical_steps: ep.Tensor,
        *,
        bounds: Bounds,
        step: int,
    ) -> ep.Tensor:
        """The spherical candidates (flat, N x D): ``perturbed`` moved orthogonally to the
        source direction by ``spherical_steps * source_norms`` and pulled back onto the sphere
        of radius ``source_norms`` around ``originals``.

        Naive: the perturbation has that size before clipping (foolbox). Otherwise the
        perturbation that survives clipping has exactly that L2 size.
        """
        eta = self.orthogonal_noise(originals, source_directions, step)
        size = spherical_steps * source_norms
        scale = self.rescaled(bounds).eta(perturbed, eta, size)
        eta = eta * batch_view(scale, 2)
        if self.rescaling == "naive":
            # Pythagoras: ||eta + (perturbed - originals)|| = source_norm * sqrt(1 + s^2)
            shrink = batch_view((spherical_steps.square() + 1).sqrt(), 2)
        else:
            eta = clip_to_bounds(perturbed + eta, *bounds) - perturbed
            # clipping breaks orthogonality: shrink onto the sphere from its actual norm,
            # never push outwards (that could leave the box)
            outer = lp_norms(eta - (originals - perturbed), 2)
            safe_norms = ep.where(source_norms > 0, source_norms, 1.0)
            shrink = batch_view(ep.maximum(outer / safe_norms, 1.0), 2)
        spherical = originals + (eta - (originals - perturbed)) / shrink
        return clip_to_bounds(spherical, *bounds)

    def step_towards_source(
        self,
        originals: ep.Tensor,
        spherical: ep.Tensor,
        source_norms: ep.Tensor,
        source_steps: ep.Tensor,
        *,
        bounds: Bounds,
    ) -> ep.Tensor:
        """The candidates (flat): ``spherical`` moved towards ``originals`` so that their
        distance to it becomes ``(1 - source_steps) * source_norms``."""
        direction = originals - spherical
        norms = lp_norms(direction, 2)
        # the step length, corrected for the deviation of ``spherical`` from the sphere
        lengths = ep.maximum(source_steps * source_norms + norms - source_norms, 0)
        if self.rescaling == "naive":
            candidates = spherical + batch_view(lengths / norms, 2) * direction
        else:
            # A step no longer than ``direction`` stays on the segment from ``spherical`` to
            # ``originals`` (both in the box): nothing is clipped, the plain scale is exact
            # and the solve is only needed for longer steps.
            scale = lengths / ep.where(norms > 0, norms, 1.0)
            within = lengths <= norms
            if not within.all().item():
                exact = self.rescaled(bounds).eta(spherical, direction, lengths)
                scale = ep.where(within, scale, exact)
            candidates = spherical + batch_view(scale, 2) * direction
        return clip_to_bounds(candidates, *bounds)

    def adapt_step_sizes(
        self,
        spherical_steps: ep.Tensor,
        source_steps: ep.Tensor,
        spherical_stats: SuccessWindow,
        step_stats: SuccessWindow,
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """Grow both steps if the spherical success rate is above 0.5, shrink them below 0.2;
        grow the source step if its success rate is above 0.25, shrink it below 0.1."""
        a = self.step_adaptation
        spherical_steps, source_steps = _adapt(
            spherical_stats, (0.5, 0.2), a, spherical_steps, source_steps
        )
        (source_steps,) = _adapt(step_stats, (0.25, 0.1), a, source_steps)
        return spherical_steps, source_steps


def _adapt(
    stats: SuccessWindow, thresholds: tuple[float, float], factor: float, *steps: ep.Tensor
) -> tuple[ep.Tensor, ...]:
    """``steps`` times ``factor`` where the full windows' success rate is above
    ``thresholds[0]``, divided by it where below ``thresholds[1]``; those windows restart."""
    full = stats.full()
    if not full.any():
        return steps
    rate = stats.rate()
    grow, shrink = full & (rate > thresholds[0]), full & (rate < thresholds[1])
    grow_, shrink_ = ep.from_numpy(steps[-1], grow), ep.from_numpy(steps[-1], shrink)
    grown = [ep.where(grow_, s * factor, s) for s in steps]
    stats.clear(grow | shrink)
    return tuple(ep.where(shrink_, s / factor, s) for s in grown)
