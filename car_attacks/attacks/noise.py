"""Random-noise attacks whose clipped perturbation has exactly the requested size.

Each attack draws a noise direction ``n`` (Gaussian or uniform) and returns

    x' = clip(x + eta * n, lo, hi)   with   eta such that   ||x' - x||_p = eps,

for p in {1, 2, inf}. With ``rescaling="car"`` (default) ``eta`` is the exact
clipping-aware scale; ``"bisection"`` finds it iteratively; ``"naive"`` uses
``eta = eps / ||n||_p`` as foolbox's ``*AdditiveNoiseAttack`` do, so the clipped
perturbation falls short of ``eps`` wherever clipping bites. Where even a
saturating ``eta`` cannot reach ``eps`` the exact variants return the largest
attainable perturbation along ``n`` (see :func:`car_attacks.reachable_norm`).

The attacks subclass foolbox's :class:`~foolbox.attacks.base.FixedEpsilonAttack`
and keep its call contract: ``attack(fmodel, inputs, criterion_or_labels,
epsilons=[...])`` returns ``raw, clipped, success``. Subclasses change one step
by overriding :meth:`ClippingAwareAdditiveNoiseAttack.sample_noise` or
:meth:`ClippingAwareAdditiveNoiseAttack.perturb`.

With ``seed=None`` noise comes from the backend's global generator exactly as
foolbox draws it, so under the same ``torch.manual_seed``
``L2ClippingAwareAdditiveGaussianNoiseAttack(rescaling="naive")`` reproduces
``foolbox.attacks.L2AdditiveGaussianNoiseAttack`` and ``rescaling="car"``
reproduces ``foolbox.attacks.L2ClippingAwareAdditiveGaussianNoiseAttack``. With
an integer ``seed`` every sample draws from its own stream, so its result does
not depend on the rest of the batch.

Reference: J. Rauber, M. Bethge, "Fast Differentiable Clipping-Aware
Normalization and Rescaling", arXiv:2007.07677, 2020.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import eagerpy as ep
from foolbox.attacks.base import (
    Criterion,
    FixedEpsilonAttack,
    Model,
    T,
    get_criterion,
    get_is_adversarial,
    raise_if_kwargs,
    verify_input_bounds,
)
from foolbox.distances import LpDistance

from ..core.tensors import batch_view, stop_gradient
from .rescale import Rescaling, check_rescaling, clipped_step, model_bounds
from .sampling import Distribution, draw

__all__ = [
    "ClippingAwareAdditiveNoiseAttack",
    "ClippingAwareRepeatedAdditiveNoiseAttack",
    "L1ClippingAwareAdditiveGaussianNoiseAttack",
    "L1ClippingAwareAdditiveUniformNoiseAttack",
    "L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "L1ClippingAwareRepeatedAdditiveUniformNoiseAttack",
    "L2ClippingAwareAdditiveGaussianNoiseAttack",
    "L2ClippingAwareAdditiveUniformNoiseAttack",
    "L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "L2ClippingAwareRepeatedAdditiveUniformNoiseAttack",
    "LinfClippingAwareAdditiveGaussianNoiseAttack",
    "LinfClippingAwareAdditiveUniformNoiseAttack",
    "LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack",
    "LinfClippingAwareRepeatedAdditiveUniformNoiseAttack",
]


@contextlib.contextmanager
def _no_grad(x: ep.Tensor) -> Iterator[None]:
    """``torch.no_grad()`` for PyTorch tensors, nothing for other backends."""
    if isinstance(x, ep.PyTorchTensor):
        import torch

        with torch.no_grad():
            yield
    else:
        yield


class ClippingAwareAdditiveNoiseAttack(FixedEpsilonAttack):
    """Additive noise ``n`` rescaled so that ``||clip(x + eta n, lo, hi) - x||_p = eps``.

    Concrete attacks set the class attributes ``p`` (1, 2 or ``math.inf``) and
    ``distribution`` (``"normal"`` or ``"uniform"``).

    Args:
        rescaling: ``"car"`` (exact, default), ``"bisection"`` (iterative
            baseline) or ``"naive"`` (``eta = eps / ||n||_p``).
        seed: ``None`` draws from the backend's global generator (as foolbox);
            an integer gives every sample its own reproducible stream. A seeded
            attack draws the same noise on every call, so ``repeat(k)`` repeats
            identical runs: use the ``Repeated`` classes or ``seed=None`` for that.
    """

    p: ClassVar[float]
    distribution: ClassVar[Distribution]

    def __init__(self, *, rescaling: Rescaling = "car", seed: int | None = None) -> None:
        if not hasattr(type(self), "p") or not hasattr(type(self), "distribution"):
            raise TypeError(
                f"{type(self).__name__} must set the class attributes p and distribution"
            )
        self.rescaling: Rescaling = check_rescaling(rescaling)
        self.seed = seed

    @property
    def distance(self) -> LpDistance:
        return LpDistance(self.p)

    def sample_noise(self, x: ep.Tensor, stream: int = 0) -> ep.Tensor:
        """A noise direction of the shape of ``x``; ``stream`` numbers independent draws."""
        return draw(x, self.distribution, seed=self.seed, stream=stream)

    def perturb(
        self, x: ep.Tensor, noise: ep.Tensor, eps: ep.Tensor, bounds: tuple[float, float]
    ) -> ep.Tensor:
        """``clip(x + eta * noise)`` with ``eta`` from the chosen rescaling; ``eps`` is (N,)."""
        return clipped_step(x, noise, eps, p=self.p, bounds=bounds, rescaling=self.rescaling)

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Criterion | Any = None,
        *,
        epsilon: float,
        **kwargs: Any,
    ) -> T:
        raise_if_kwargs(kwargs)
        x, restore_type = ep.astensor_(inputs)
        del inputs, criterion, kwargs
        x = stop_gradient(x)
        verify_input_bounds(x, model)
        with _no_grad(x):
            eps = _eps_tensor(x, epsilon)
            result = self.perturb(x, self.sample_noise(x, 0), eps, model_bounds(model))
        return restore_type(result)


class ClippingAwareRepeatedAdditiveNoiseAttack(ClippingAwareAdditiveNoiseAttack):
    """Draws up to ``repeats`` noise directions and keeps each sample's first success.

    Every draw is rescaled as in :class:`ClippingAwareAdditiveNoiseAttack`; the
    loop stops once every sample is adversarial. Draw ``k`` uses stream ``k``.

    Args:
        repeats: How many noise directions to try at most.
        check_trivial: Whether an input that is already adversarial counts as found.
        rescaling: ``"car"`` (default), ``"bisection"`` or ``"naive"``.
        seed: ``None`` for the backend's global generator, else per-sample streams.
    """

    def __init__(
        self,
        *,
        repeats: int = 100,
        check_trivial: bool = True,
        rescaling: Rescaling = "car",
        seed: int | None = None,
    ) -> None:
        super().__init__(rescaling=rescaling, seed=seed)
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got repeats={repeats!r}")
        self.repeats = repeats
        self.check_trivial = check_trivial

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Criterion | Any = None,
        *,
        epsilon: float,
        **kwargs: Any,
    ) -> T:
        raise_if_kwargs(kwargs)
        x, restore_type = ep.astensor_(inputs)
        is_adversarial = get_is_adversarial(get_criterion(criterion), model)
        del inputs, criterion, kwargs
        x = stop_gradient(x)
        verify_input_bounds(x, model)
        bounds = model_bounds(model)
        with _no_grad(x):
            eps = _eps_tensor(x, epsilon)
            result = x
            if self.check_trivial:
                found = is_adversarial(x)
            else:
                found = ep.zeros(x, len(x)).bool()
            for stream in range(self.repeats):
                if found.all().item():
                    break
                candidate = self.perturb(x, self.sample_noise(x, stream), eps, bounds)
                is_adv = is_adversarial(candidate)
                new = ep.logical_and(is_adv, ep.logical_not(found))
                result = ep.where(batch_view(new, x.ndim), candidate, result)
                found = ep.logical_or(found, is_adv)
        return restore_type(result)


def _eps_tensor(x: ep.Tensor, epsilon: float) -> ep.Tensor:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got epsilon={epsilon!r}")
    return ep.full(x, (len(x),), float(epsilon))


class _L1:
    p: ClassVar[float] = 1.0


class _L2:
    p: ClassVar[float] = 2.0


class _Linf:
    p: ClassVar[float] = math.inf


class _Gaussian:
    distribution: ClassVar[Distribution] = "normal"


class _Uniform:
    distribution: ClassVar[Distribution] = "uniform"


class L1ClippingAwareAdditiveGaussianNoiseAttack(_L1, _Gaussian, ClippingAwareAdditiveNoiseAttack):
    """``clip(x + eta n)``, ``n ~ N(0, I)``, with ``||clip(x + eta n) - x||_1 = eps``."""


class L1ClippingAwareAdditiveUniformNoiseAttack(_L1, _Uniform, ClippingAwareAdditiveNoiseAttack):
    """``clip(x + eta n)``, ``n ~ U(-1, 1)^d``, with ``||clip(x + eta n) - x||_1 = eps``."""


class L2ClippingAwareAdditiveGaussianNoiseAttack(_L2, _Gaussian, ClippingAwareAdditiveNoiseAttack):
    """``clip(x + eta n)``, ``n ~ N(0, I)``, with ``||clip(x + eta n) - x||_2 = eps``."""


class L2ClippingAwareAdditiveUniformNoiseAttack(_L2, _Uniform, ClippingAwareAdditiveNoiseAttack):
    """``clip(x + eta n)``, ``n ~ U(-1, 1)^d``, with ``||clip(x + eta n) - x||_2 = eps``."""


class LinfClippingAwareAdditiveGaussianNoiseAttack(
    _Linf, _Gaussian, ClippingAwareAdditiveNoiseAttack
):
    """``clip(x + eta n)``, ``n ~ N(0, I)``, with ``||clip(x + eta n) - x||_inf = eps``."""


class LinfClippingAwareAdditiveUniformNoiseAttack(
    _Linf, _Uniform, ClippingAwareAdditiveNoiseAttack
):
    """``clip(x + eta n)``, ``n ~ U(-1, 1)^d``, with ``||clip(x + eta n) - x||_inf = eps``."""


class L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack(
    _L1, _Gaussian, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ N(0, I)`` with ``||clip(x + eta n) - x||_1 = eps``."""


class L1ClippingAwareRepeatedAdditiveUniformNoiseAttack(
    _L1, _Uniform, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ U(-1, 1)^d`` with ``||clip(x + eta n) - x||_1 = eps``."""


class L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(
    _L2, _Gaussian, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ N(0, I)`` with ``||clip(x + eta n) - x||_2 = eps``."""


class L2ClippingAwareRepeatedAdditiveUniformNoiseAttack(
    _L2, _Uniform, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ U(-1, 1)^d`` with ``||clip(x + eta n) - x||_2 = eps``."""


class LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack(
    _Linf, _Gaussian, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ N(0, I)`` with ``||clip(x + eta n) - x||_inf = eps``."""


class LinfClippingAwareRepeatedAdditiveUniformNoiseAttack(
    _Linf, _Uniform, ClippingAwareRepeatedAdditiveNoiseAttack
):
    """Repeated draws ``n ~ U(-1, 1)^d`` with ``||clip(x + eta n) - x||_inf = eps``."""
