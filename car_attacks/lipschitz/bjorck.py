"""Björck orthonormalisation with power-iteration scaling.

Björck & Bowie (1971), "An iterative algorithm for computing the best estimate
of an orthogonal matrix"; used for Lipschitz networks by Anil et al. (2019),
"Sorting out Lipschitz function approximation", and Li et al. (2019), "Preventing
Gradient Attenuation in Lipschitz Constrained Convolutional Networks" (BCOP).

For a matrix ``A`` (``m >= n``) with singular values in ``(0, sqrt(2))`` the
order-``p`` iteration

    A <- A (I + sum_{j=1..p} c_j Q^j),   Q = I - A^T A,   c_j = binom(2j, j) / 4^j

(the Taylor series of ``(A^T A)^{-1/2}``) converges to the orthogonal polar factor
``U V^T`` of ``A = U S V^T``; order 1 is ``A <- A (3/2 I - 1/2 A^T A)`` and converges
for singular values in ``(0, sqrt(3))``.  The input is therefore first divided by an
estimate of its spectral norm (power iteration) or by its Frobenius norm (always
safe, slower to converge when the matrix is ill-conditioned).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bjorck",
    "orthogonality_error",
    "orthonormalize",
    "power_iteration",
    "scale_for_bjorck",
]


def _taylor_coefficients(order: int) -> list[float]:
    """Coefficients ``c_1..c_p`` of ``(1 - q)^{-1/2} = sum_j c_j q^j`` (``c_0 = 1``)."""
    return [math.comb(2 * j, j) / 4.0**j for j in range(1, order + 1)]


def power_iteration(w: Tensor, iters: int = 10, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Estimate the largest singular value of (a batch of) matrices ``w``.

    ``v <- W^T u / ||W^T u||``, ``u <- W v / ||W v||``, ``sigma = u^T W v``.

    Args:
        w: tensor of shape ``(..., m, n)``.
        iters: number of power iterations (>= 1).
        u: optional warm start of shape ``(..., m)``; random if ``None``.

    Returns:
        ``(sigma, u)``: the estimate of shape ``(...)`` (a lower bound on the true
        spectral norm, computed without gradient) and the final left vector, which can
        be fed back as a warm start.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    with torch.no_grad():
        if u is None:
            u = torch.randn(w.shape[:-1], dtype=w.dtype, device=w.device)
        u = F.normalize(u.to(w.dtype), dim=-1)
        v = u.new_zeros(w.shape[:-2] + w.shape[-1:])
        for _ in range(iters):
            v = F.normalize((w.mT @ u.unsqueeze(-1)).squeeze(-1), dim=-1)
            u = F.normalize((w @ v.unsqueeze(-1)).squeeze(-1), dim=-1)
        sigma = (u * (w @ v.unsqueeze(-1)).squeeze(-1)).sum(-1)
    return sigma, u


def scale_for_bjorck(
    w: Tensor, power_iters: int = 10, u: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Divide ``w`` by an estimate of its spectral norm so that Björck converges.

    With ``power_iters > 0`` the scale is the power-iteration estimate of
    ``sigma_max`` (treated as a constant for the gradient); with ``power_iters == 0``
    it is the Frobenius norm ``||W||_F >= sigma_max`` (always safe).

    Returns:
        The scaled matrix and the updated power-iteration vector (``None`` when the
        Frobenius scaling is used).
    """
    if power_iters < 0:
        raise ValueError(f"power_iters must be >= 0, got {power_iters}")
    if power_iters == 0:
        scale = torch.linalg.matrix_norm(w.detach(), ord="fro")
        new_u: Tensor | None = None
    else:
        scale, new_u = power_iteration(w.detach(), power_iters, u)
    tiny = torch.finfo(w.dtype).tiny
    return w / scale.clamp_min(tiny)[..., None, None], new_u


def bjorck(w: Tensor, iters: int = 20, order: int = 1) -> Tensor:
    """Björck-orthonormalise (a batch of) matrices ``w`` of shape ``(..., m, n)``.

    Iterates ``A <- A (I + sum_j c_j (I - A^T A)^j)`` on the smaller Gram matrix, so
    the result has orthonormal columns when ``m >= n`` and orthonormal rows when
    ``m < n``.  The input must already be scaled so that its singular values lie in
    ``(0, sqrt(3))`` (order 1) or ``(0, sqrt(2))`` (higher orders); see
    :func:`scale_for_bjorck`.
    """
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    transpose = w.shape[-2] < w.shape[-1]
    a = w.mT if transpose else w
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    coeffs = _taylor_coefficients(order)
    for _ in range(iters):
        q = eye - a.mT @ a
        # Horner: S = q (c_1 + q (c_2 + ... + q c_p)).
        s = coeffs[-1] * q
        for c in reversed(coeffs[:-1]):
            s = (s + c * eye) @ q
        a = a + a @ s
    return a.mT if transpose else a


def orthonormalize(
    w: Tensor,
    iters: int = 20,
    order: int = 1,
    power_iters: int = 10,
    u: Tensor | None = None,
) -> Tensor:
    """Scale ``w`` (power iteration or Frobenius) and Björck-orthonormalise it."""
    scaled, _ = scale_for_bjorck(w, power_iters, u)
    return bjorck(scaled, iters, order)


def orthogonality_error(w: Tensor) -> Tensor:
    """``max |G - I|`` with ``G`` the smaller Gram matrix of ``w`` (``W^T W`` or ``W W^T``)."""
    a = w.mT if w.shape[-2] < w.shape[-1] else w
    gram = a.mT @ a
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return (gram - eye).abs().amax(dim=(-2, -1))
