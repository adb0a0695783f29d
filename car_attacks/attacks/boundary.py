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

import logging
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
from foolbox.attacks.base import (
    Criterion,
    MinimizationAttack,
    Model,
    T,
    get_criterion,
    get_is_adversarial,
    raise_if_kwargs,
    verify_input_bounds,
)
from foolbox.attacks.blended_noise import LinearSearchBlendedUniformNoiseAttack
from foolbox.distances import l2

from ..core.tensors import batch_view, clip_to_bounds, flatten_batch, lp_norms
from .rescale import Rescaling, check_rescaling, model_bounds, rescale_eta
from .sampling import draw

IsAdversarial = Callable[[ep.Tensor], ep.Tensor]
Box = tuple[float, float]

INIT_STREAM = 2**31
"""First random stream of the seeded initialisation (attack steps use streams below it)."""


def blended_noise_init(
    is_adversarial: IsAdversarial,
    originals: ep.Tensor,
    bounds: Box,
    *,
    seed: int,
    directions: int = 1000,
    steps: int = 50,
) -> ep.Tensor:
    """Per-sample seeded version of foolbox's ``LinearSearchBlendedUniformNoiseAttack``.

    Draws uniform noise in ``bounds`` until it is adversarial (stream ``INIT_STREAM + j``
    for the j-th draw), then returns the smallest blend ``(1 - e) x + e noise`` on a grid
    of ``steps + 1`` values that is adversarial. Samples without an adversarial draw
    are returned unchanged (the caller reports them).
    """
    lo, hi = bounds
    noise = originals
    found = ep.zeros(originals, len(originals)).bool()
    for j in range(directions):
        u = draw(originals, "uniform", seed=seed, stream=INIT_STREAM + j)
        candidate = lo + (u + 1.0) * ((hi - lo) / 2.0)
        is_adv = is_adversarial(candidate)
        take = ep.logical_and(is_adv, found.logical_not())
        noise = ep.where(batch_view(take, originals.ndim), candidate, noise)
        found = ep.logical_or(found, is_adv)
        if found.all().item():
            break
    best = ep.ones(originals, len(originals))
    for e in np.linspace(0, 1, num=steps + 1, dtype=np.float32):
        blend = (1 - e.item()) * originals + e.item() * noise
        best = ep.minimum(ep.where(is_adversarial(blend), e.item(), 1.0), best)
        if (best < 1).all().item():
            break
    best = batch_view(best, originals.ndim)
    blend = clip_to_bounds((1 - best) * originals + best * noise, lo, hi)  # rounding
    return ep.where(batch_view(found, originals.ndim), blend, originals)


class DecisionBasedAttack(MinimizationAttack):
    """What the decision-based attacks here share: the rescaling choice, the seed and
    the adversarial starting points."""

    def __init__(
        self,
        *,
        init_attack: MinimizationAttack | None,
        rescaling: Rescaling,
        seed: int | None,
    ) -> None:
        if init_attack is not None and not isinstance(init_attack, MinimizationAttack):
            raise ValueError(
                f"init_attack must be a foolbox MinimizationAttack, got init_attack={init_attack!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got seed={seed!r}")
        self.init_attack = init_attack
        self.rescaling: Rescaling = check_rescaling(rescaling)
        self.seed = seed

    def start(
        self,
        model: Model,
        originals: ep.Tensor,
        criterion: Any,
        *,
        early_stop: float | None,
        starting_points: Any,
    ) -> tuple[IsAdversarial, Box, ep.Tensor]:
        """The common start of ``run``: checks the inputs, and returns the adversarial
        test, the model's bounds and the adversarial starting points."""
        verify_input_bounds(originals, model)
        criterion_ = get_criterion(criterion)
        is_adversarial = get_is_adversarial(criterion_, model)
        advs = self.initialize(
            model,
            originals,
            criterion_,
            is_adversarial,
            early_stop=early_stop,
            starting_points=starting_points,
        )
        return is_adversarial, model_bounds(model), advs

    def initialize(
        self,
        model: Model,
        originals: ep.Tensor,
        criterion: Criterion,
        is_adversarial: IsAdversarial,
        *,
        early_stop: float | None,
        starting_points: Any,
    ) -> ep.Tensor:
        """Adversarial starting points: ``starting_points`` if given, else ``init_attack``,
        else foolbox's ``LinearSearchBlendedUniformNoiseAttack(steps=50)`` (``seed=None``) or
        its per-sample seeded equivalent. Raises ValueError if any is not adversarial."""
        if starting_points is not None:
            advs = ep.astensor(starting_points)
            source = "starting_points"
        elif self.init_attack is not None or self.seed is None:
            init = self.init_attack or LinearSearchBlendedUniformNoiseAttack(steps=50)
            if self.init_attack is None:
                logging.info(
                    f"Neither starting_points nor init_attack given; initialising with {init!r}."
                )
            advs = ep.astensor(init.run(model, originals, criterion, early_stop=early_stop))
            source = "init_attack"
        else:
            advs = blended_noise_init(
                is_adversarial, originals, model_bounds(model), seed=self.seed
            )
            source = "the seeded blended-noise initialisation"
        if tuple(advs.shape) != tuple(originals.shape):
            raise ValueError(
                f"{source} must have the shape of the inputs {tuple(originals.shape)}, "
                f"got {tuple(advs.shape)}"
            )
        is_adv = is_adversarial(advs)
        if not is_adv.all().item():
            failed = int(is_adv.logical_not().astype(originals.dtype).sum().item())
            raise ValueError(f"{source}: {failed} of {len(is_adv)} inputs are not adversarial")
        return advs


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

    distance = l2

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

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Criterion | T,
        *,
        early_stop: float | None = None,
        starting_points: T | None = None,
        **kwargs: Any,
    ) -> T:
        """Minimise the L2 distance to ``inputs`` among adversarials; returns them."""
        raise_if_kwargs(kwargs)
        originals, restore_type = ep.astensor_(inputs)
        del inputs, kwargs
        is_adversarial, bounds, best_advs = self.start(
            model, originals, criterion, early_stop=early_stop, starting_points=starting_points
        )
        del starting_points

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
        return restore_type(best_advs)

    # ------------------------------------------------------------------ the steps

    def proposal(
        self,
        originals: ep.Tensor,
        perturbed: ep.Tensor,
        spherical_steps: ep.Tensor,
        source_steps: ep.Tensor,
        *,
        bounds: Box,
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
        bounds: Box,
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
        scale = rescale_eta(perturbed, eta, size, p=2, bounds=bounds, rescaling=self.rescaling)
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
        bounds: Box,
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
                exact = rescale_eta(
                    spherical, direction, lengths, p=2, bounds=bounds, rescaling=self.rescaling
                )
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
        full = spherical_stats.full()
        if full.any():
            rate = spherical_stats.rate()
            grow, shrink = full & (rate > 0.5), full & (rate < 0.2)
            grow_, shrink_ = ep.from_numpy(source_steps, grow), ep.from_numpy(source_steps, shrink)
            spherical_steps = ep.where(grow_, spherical_steps * a, spherical_steps)
            source_steps = ep.where(grow_, source_steps * a, source_steps)
            spherical_steps = ep.where(shrink_, spherical_steps / a, spherical_steps)
            source_steps = ep.where(shrink_, source_steps / a, source_steps)
            spherical_stats.clear(grow | shrink)
        full = step_stats.full()
        if full.any():
            rate = step_stats.rate()
            grow, shrink = full & (rate > 0.25), full & (rate < 0.1)
            grow_, shrink_ = ep.from_numpy(source_steps, grow), ep.from_numpy(source_steps, shrink)
            source_steps = ep.where(grow_, source_steps * a, source_steps)
            source_steps = ep.where(shrink_, source_steps / a, source_steps)
            step_stats.clear(grow | shrink)
        return spherical_steps, source_steps
