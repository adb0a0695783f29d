"""Small 1-Lipschitz building blocks for BCOP networks.

* :class:`BjorckLinear` -- ``y = W x + b`` with ``W`` Björck-orthonormalised (Anil et
  al., 2019, "Sorting out Lipschitz function approximation"): orthonormal rows or
  columns, so ``||W||_2 = 1``.
* :class:`MaxMin` -- GroupSort with group size 2 (Anil et al., 2019; Chernodub &
  Nowicki, 2016): ``[x_a, x_b] -> [max(x_a, x_b), min(x_a, x_b)]``, a per-pair
  permutation, hence 1-Lipschitz and gradient-norm preserving.
* :class:`InvertibleDownsampling` -- ``pixel_unshuffle`` (Jacobsen et al., 2018,
  "i-RevNet"), a permutation of the coordinates (orthogonal).
* :class:`Normalize` -- ``(x - mean) / std`` per channel, Lipschitz ``1 / min(std)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from car_attacks.lipschitz._cache import EvalCache
from car_attacks.lipschitz.bjorck import bjorck, scale_for_bjorck

__all__ = ["BjorckLinear", "InvertibleDownsampling", "MaxMin", "Normalize"]


class BjorckLinear(nn.Module):
    """Linear layer with a Björck-orthonormalised weight (``||W||_2 = 1``).

    The raw parameter ``weight`` (``out x in``) is scaled by a power-iteration
    estimate of its spectral norm (or its Frobenius norm if ``power_iters == 0``) and
    Björck-iterated; the result has orthonormal rows (``out <= in``) or columns
    (``out >= in``, an isometry).  In eval mode the orthonormal weight is cached.
    """

    u: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bjorck_iters: int = 20,
        eval_bjorck_iters: int | None = None,
        bjorck_order: int = 1,
        power_iters: int = 3,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bjorck_iters = bjorck_iters
        self.eval_bjorck_iters = bjorck_iters if eval_bjorck_iters is None else eval_bjorck_iters
        self.bjorck_order = bjorck_order
        self.power_iters = power_iters
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("u", torch.randn(out_features))
        self._cache = EvalCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random (semi-)orthogonal weight, zero bias."""
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _compute_weight(self) -> Tensor:
        iters = self.bjorck_iters if self.training else self.eval_bjorck_iters
        scaled, u = scale_for_bjorck(self.weight, self.power_iters, self.u)
        if u is not None and self.training:
            with torch.no_grad():
                self.u.copy_(u)
        return bjorck(scaled, iters, self.bjorck_order)

    def orthogonal_weight(self) -> Tensor:
        """The (cached in eval mode) orthonormalised ``out x in`` weight."""
        return self._cache.get(self, self._compute_weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x W^T + b``."""
        return F.linear(x, self.orthogonal_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bjorck_iters={self.bjorck_iters}, "
            f"power_iters={self.power_iters}"
        )


class MaxMin(nn.Module):
    """GroupSort-2 / MaxMin: split ``dim`` in halves ``a, b``; output ``[max(a,b), min(a,b)]``.

    Anil, Lucas & Grosse (ICML 2019).  1-Lipschitz in l2 (it permutes each pair).
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Apply MaxMin along ``self.dim`` (its size must be even)."""
        size = x.shape[self.dim]
        if size % 2:
            raise ValueError(f"MaxMin needs an even size along dim {self.dim}, got {size}")
        a, b = torch.chunk(x, 2, dim=self.dim)
        return torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class InvertibleDownsampling(nn.Module):
    """Invertible downsampling ``(N, C, H, W) -> (N, C f^2, H/f, W/f)`` by pixel unshuffle.

    A permutation of the coordinates, hence orthogonal (Lipschitz constant 1).
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        """``pixel_unshuffle(x, factor)``."""
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``(N, C, ...)`` inputs; Lipschitz ``1 / min(std)``.

    ``mean`` and ``std`` are floats or per-channel sequences (a single value is shared
    by all channels). With ``persistent=False`` they stay out of ``state_dict()``, so a
    model wrapped with its preprocessing (:class:`car_attacks.models.Preprocessed`)
    saves only its own weights; :func:`car_attacks.lipschitz.bcop_network` keeps them
    (keys ``<i>.mean`` and ``<i>.std``).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        *,
        persistent: bool = False,
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if len(mean_t) != len(std_t) and 1 not in (len(mean_t), len(std_t)):
            raise ValueError("mean and std must have the same length")
        if torch.any(std_t <= 0):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", mean_t, persistent=persistent)
        self.register_buffer("std", std_t, persistent=persistent)

    def forward(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` broadcast over the channel dimension 1."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def lipschitz_constant(self) -> float:
        """``1 / min(std)``."""
        return float(1.0 / self.std.double().min())

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
