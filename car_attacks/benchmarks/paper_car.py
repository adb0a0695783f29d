"""Re-implementation of the L2 sort-based clipping-aware rescaling of Rauber & Bethge (2020).

"Fast Differentiable Clipping-Aware Normalization and Rescaling", arXiv:2007.07677. For
each sample, find ``eta >= 0`` with ``||clip(x + eta * delta, a, b) - x||_2 == eps``:

1. ``f_i = space_i^2 / delta_i^2`` is the value of ``eta^2`` at which coordinate ``i``
   hits the box (``space_i = b - x_i`` if ``delta_i >= 0`` else ``x_i - a``);
2. sort the breakpoints ``f``; suffix sums ``m_k`` of ``delta^2`` (in sorted order) give
   the slope of ``y(eta^2) = ||clip(...) - x||_2^2`` between consecutive breakpoints;
3. ``y`` at the breakpoints is the cumulative sum of ``m_k (f_k - f_{k-1})``;
4. the first breakpoint with ``y_j >= eps^2`` fixes the linear piece, and
   ``eta^2 = f_j - (y_j - eps^2) / m_j``. If no breakpoint reaches ``eps^2``, the
   largest breakpoint is returned (the norm is then maximal).

Written independently of ``foolbox.external.clipping_aware_rescaling`` (used only as a
reference in the tests), in plain PyTorch and plain NumPy, vectorised over the batch.
``eps`` may be a float or a per-sample vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["paper_l2_rescaling", "paper_l2_rescaling_numpy", "paper_l2_rescaling_torch"]

_TINY = 1e-20  # floor on delta^2, as in the paper's code


def paper_l2_rescaling_torch(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: float | torch.Tensor,
    a: float = 0.0,
    b: float = 1.0,
) -> torch.Tensor:
    """The paper's algorithm in PyTorch; returns eta of shape ``(N, 1, ..., 1)``."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    df = delta.reshape(n, -1)
    eps2 = torch.as_tensor(eps, dtype=x.dtype, device=x.device).reshape(-1, 1).square()

    delta2 = df.square()
    space = torch.where(df >= 0, b - xf, xf - a)
    f2 = space.square() / delta2.clamp_min(_TINY)
    f2_sorted, ks = torch.sort(f2, dim=1)
    m = delta2.gather(1, ks).flip(1).cumsum(1).flip(1)  # m_k = sum_{i >= k} delta2_sorted_i
    dx = torch.cat((f2_sorted[:, :1], f2_sorted[:, 1:] - f2_sorted[:, :-1]), dim=1)
    y = (m * dx).cumsum(1)  # ||clip(x + sqrt(f_k) delta) - x||^2
    c = y >= eps2
    j = c.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True (0 if none)
    f_j = f2_sorted.gather(1, j)
    eta2 = f_j - (y.gather(1, j) - eps2) / m.gather(1, j)
    eta2 = torch.where(c[:, -1:], eta2, f2_sorted[:, -1:])
    return eta2.sqrt().reshape((n,) + (1,) * (x.ndim - 1))


def paper_l2_rescaling_numpy(
    x: npt.NDArray[np.floating[Any]],
    delta: npt.NDArray[np.floating[Any]],
    eps: float | npt.ArrayLike,
    a: float = 0.0,
    b: float = 1.0,
) -> npt.NDArray[np.floating[Any]]:
    """The paper's algorithm in NumPy; returns eta of shape ``(N, 1, ..., 1)``."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    df = delta.reshape(n, -1)
    eps2 = np.square(np.asarray(eps, dtype=x.dtype).reshape(-1, 1))

    delta2 = np.square(df)
    space = np.where(df >= 0, x.dtype.type(b) - xf, xf - x.dtype.type(a))
    f2 = np.square(space) / np.maximum(delta2, x.dtype.type(_TINY))
    ks = np.argsort(f2, axis=1)
    f2_sorted = np.take_along_axis(f2, ks, axis=1)
    m = np.cumsum(np.take_along_axis(delta2, ks, axis=1)[:, ::-1], axis=1)[:, ::-1]
    dx = np.concatenate((f2_sorted[:, :1], np.diff(f2_sorted, axis=1)), axis=1)
    y = np.cumsum(m * dx, axis=1)
    c = y >= eps2
    j = np.argmax(c, axis=1)[:, None]  # first True (0 if none)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = np.take_along_axis(f2_sorted, j, 1) - (
            np.take_along_axis(y, j, 1) - eps2
        ) / np.take_along_axis(m, j, 1)
    eta2 = np.where(c[:, -1:], eta2, f2_sorted[:, -1:])
    return np.sqrt(eta2).reshape((n,) + (1,) * (x.ndim - 1))


def paper_l2_rescaling(x: Any, delta: Any, eps: Any, a: float = 0.0, b: float = 1.0) -> Any:
    """Dispatch on the type of ``x`` (torch tensor, NumPy array or EagerPy tensor of either)."""
    import eagerpy as ep

    if isinstance(x, ep.Tensor):
        raw_eps = eps.raw if isinstance(eps, ep.Tensor) else eps
        return ep.astensor(paper_l2_rescaling(x.raw, ep.astensor(delta).raw, raw_eps, a, b))
    if isinstance(x, torch.Tensor):
        return paper_l2_rescaling_torch(x, delta, eps, a, b)
    if isinstance(x, np.ndarray):
        return paper_l2_rescaling_numpy(x, delta, eps, a, b)
    raise TypeError(f"unsupported tensor type {type(x).__name__}")
