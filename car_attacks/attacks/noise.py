"""Random-noise attacks whose clipped perturbation has exactly the requested size.

Each attack draws a noise direction ``n`` (Gaussian or uniform) and returns

    x' = clip(x + eta * n, lo, hi)   with   eta such that   ||x' - x||_p = eps,

for p in {1, 2, inf}. With ``rescaling="car"`` (default) ``eta`` is the exact
clipping-aware scale; ``"bisection"`` finds it iteratively; ``"naive"`` uses
``eta = eps / ||n||_p`` as foolbox's ``*AdditiveNoiseAttack`` do, so the clipped
perturbation falls short of ``eps`` wherever clipping bites. Where even a
saturating ``eta`` cannot reach ``eps`` the exact variants return the largest
attainable perturbation along ``n`` (see :func:`car_attacks.reachable_norm`).

The attacks subclass the fixed-epsilon frame of :mod:`car_attacks.attacks.base`
and keep foolbox's call contract: ``attack(fmodel, inputs, criterion_or_labels,
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
from abc import abstractmethod
from collections.abc import Iterator

import eagerpy as ep
from foolbox.attacks.base import Model, get_is_adversarial

from ..core.tensors import stop_gradient
from .base import AttackCall, Bounds, ClippingAwareFixedEpsilonAttack, Rescaling
from .first_success import FirstSuccess
from .norms import L1, L2, LINF
from .sampling import Distribution, draw


@contextlib.contextmanager
def _no_grad(x: ep.Tensor) -> Iterator[None]:
    """``torch.no_grad()`` for PyTorch tensors, nothing for other backends."""
    if isinstance(x, ep.PyTorchTensor):
        import torch

        with torch.no_grad():
            yield
    else:
        yield


class ClippingAwareAdditiveNoiseAttack(ClippingAwareFixedEpsilonAttack):
    """Additive noise ``n`` rescaled so that ``||clip(x + eta n, lo, hi) - x||_p = eps``.

    Concrete attacks set the class attributes ``norm`` (``L1``, ``L2`` or ``LINF`` of
    :mod:`car_attacks.attacks.norms`) and ``distribution`` (``"normal"`` or ``"uniform"``).

    Args:
        rescaling: ``"car"`` (exact, default), ``"bisection"`` (iterative
            baseline) or ``"naive"`` (``eta = eps / ||n||_p``).
        seed: ``None`` draws from the backend's global generator (as foolbox);
            an integer gives every sample its own reproducible stream. A seeded
            attack draws the same noise on every call, so ``repeat(k)`` repeats
            identical runs: use the ``Repeated`` classes or ``seed=None`` for that.
    """

    @property
    @abstractmethod
    def distribution(self) -> Distribution:
        """The noise distribution (a class attribute)."""

    def sample_noise(self, x: ep.Tensor, stream: int = 0) -> ep.Tensor:
        """A noise direction of the shape of ``x``; ``stream`` numbers independent draws."""
        return draw(x, self.distribution, seed=self.seed, stream=stream)

    def perturb(self, x: ep.Tensor, noise: ep.Tensor, eps: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        """``clip(x + eta * noise)`` with ``eta`` from the chosen rescaling; ``eps`` is (N,)."""
        return self.rescaled(bounds).clipped_step(x, noise, eps)

    def perturbed_batch(self, model: Model, call: AttackCall, epsilon: float) -> ep.Tensor:
        """:meth:`attempts` on the detached inputs, without autograd."""
        x = stop_gradient(call.x)
        with _no_grad(x):
            return self.attempts(model, call, x, ep.full(x, (len(x),), float(epsilon)))

    def attempts(self, model: Model, call: AttackCall, x: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
        """The perturbed batch: one draw, rescaled."""
        return self.perturb(x, self.sample_noise(x, 0), eps, call.bounds)


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

    def attempts(self, model: Model, call: AttackCall, x: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
        """Up to ``repeats`` draws; each sample keeps its first adversarial one."""
        if call.criterion is None:
            raise ValueError("the repeated noise attacks need labels or a criterion, got None")
        is_adversarial = get_is_adversarial(call.criterion, model)
        first = FirstSuccess.starting_at(x, is_adversarial(x) if self.check_trivial else None)
        for stream in range(self.repeats):
            if first.all_found():
                break
            candidate = self.perturb(x, self.sample_noise(x, stream), eps, call.bounds)
            first.update(candidate, is_adversarial(candidate))
        return first.best


class _L1:
    norm = L1


class _L2:
    norm = L2


class _Linf:
    norm = LINF


class _Gaussian:
    distribution: Distribution = "normal"


class _Uniform:
    distribution: Distribution = "uniform"


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
