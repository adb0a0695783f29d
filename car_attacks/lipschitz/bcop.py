"""BCOP: Block Convolution Orthogonal Parameterization of convolutions.

Li, Haque, Anil, Lucas, Grosse & Jacobsen (NeurIPS 2019), "Preventing Gradient
Attenuation in Lipschitz Constrained Convolutional Networks"; the construction is
from Xiao et al. (ICML 2018), "Dynamical Isometry and a Mean Field Theory of CNNs".

A ``c x c`` kernel of size ``k x k`` is the block (matrix) convolution

    W = H  □  [P_1, I - P_1]  □ ... □  [P_{k-1}, I - P_{k-1}]            (1 x 2 blocks)
           □  [P_k; I - P_k]  □ ... □  [P_{2k-2}; I - P_{2k-2}]          (2 x 1 blocks)

with ``(A □ B)[p, q] = sum_{p', q'} A[p', q'] B[p - p', q - q']`` (matrix products),
``H`` orthogonal and ``P_i = Q_i Q_i^T`` symmetric projectors, ``Q_i`` a ``c x c/2``
matrix with orthonormal columns.  ``H`` and the ``Q_i`` are Björck-orthonormalised
free parameters.  The 2-D DFT symbol of a block convolution is the product of the
symbols, and ``P + (I - P) z`` is unitary for ``|z| = 1``, so the circularly padded
convolution is exactly orthogonal.  With zero padding the operator is a restriction
of a larger circular one and has norm ``<= 1``.

Unequal channels use the ``max(c_in, c_out)`` kernel restricted to its first
``c_out`` rows and ``c_in`` columns (an isometry when ``c_out >= c_in``, norm 1
otherwise).  Strides are invertible downsampling (``pixel_unshuffle``, a permutation)
followed by a stride-1 BCOP convolution on ``c_in * stride**2`` channels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from car_attacks.lipschitz._cache import EvalCache
from car_attacks.lipschitz.bjorck import bjorck, scale_for_bjorck

__all__ = ["BCOPConv2d", "block_conv", "bcop_kernel", "same_padding"]

PaddingMode = Literal["circular", "zeros"]


def same_padding(kernel_size: int) -> tuple[int, int]:
    """``(before, after)`` padding keeping the spatial size: ``((k-1)//2, k//2)``."""
    return (kernel_size - 1) // 2, kernel_size // 2


def block_conv(a: Tensor, p: Tensor, dim: int) -> Tensor:
    """Block-convolve kernel ``a`` (``c, c, h, w``) with ``[P, I - P]`` along ``dim``.

    ``dim = -1`` uses the 1 x 2 block ``[P, I - P]`` (kernel width grows by one),
    ``dim = -2`` the 2 x 1 block ``[P; I - P]`` (height grows by one):
    ``out[..., t] = a[..., t] P + a[..., t - 1] (I - P)``.
    """
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    ap = torch.einsum("ojhw,ji->oihw", a, p)
    rest = a - ap
    if dim == -1:
        return F.pad(ap, (0, 1)) + F.pad(rest, (1, 0))
    return F.pad(ap, (0, 0, 0, 1)) + F.pad(rest, (0, 0, 1, 0))


def bcop_kernel(ortho: Tensor, projectors: Tensor | None) -> Tensor:
    """Assemble a ``c x c x k x k`` BCOP kernel.

    Args:
        ortho: orthogonal ``c x c`` matrix ``H``.
        projectors: ``(2(k-1), c, c)`` symmetric projectors (``None`` for ``k = 1``);
            the first ``k-1`` extend the width, the rest the height.
    """
    c = ortho.shape[0]
    kernel = ortho.reshape(c, c, 1, 1)
    if projectors is None:
        return kernel
    n = projectors.shape[0]
    if n % 2:
        raise ValueError(f"need an even number of projectors, got {n}")
    for i in range(n // 2):
        kernel = block_conv(kernel, projectors[i], dim=-1)
    for i in range(n // 2, n):
        kernel = block_conv(kernel, projectors[i], dim=-2)
    return kernel


class BCOPConv2d(nn.Module):
    """Orthogonal 2-D convolution parameterised by BCOP (Li et al., 2019).

    ``y = conv(pad(pixel_unshuffle(x, s)), W[:c_out, :c_in s^2]) + b`` with ``W`` the
    BCOP kernel of size ``max(c_out, c_in s^2)``.  Output spatial size is
    ``input // stride``.  In eval mode the orthogonalised kernel is cached (and
    computed without gradient); train mode recomputes it on every call.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: ``k >= 1`` (even sizes pad ``(k-1)//2`` before, ``k//2`` after),
            applied on the downsampled grid when ``stride > 1``.
        stride: invertible-downsampling factor (the input size must be divisible by it).
        padding_mode: ``"circular"`` (exactly orthogonal) or ``"zeros"`` (norm <= 1).
        bias: add a learnable bias (does not change the Lipschitz constant).
        bjorck_iters: Björck iterations in training mode.
        eval_bjorck_iters: Björck iterations for the cached eval kernel (default:
            ``bjorck_iters``).
        bjorck_order: order of the Björck iteration.
        power_iters: power iterations per call for the Björck scaling (warm-started
            from a persistent buffer); ``0`` uses the Frobenius norm instead.
    """

    ortho_u: Tensor
    proj_u: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding_mode: PaddingMode = "circular",
        bias: bool = True,
        bjorck_iters: int = 20,
        eval_bjorck_iters: int | None = None,
        bjorck_order: int = 1,
        power_iters: int = 3,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError("channel counts must be positive")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if padding_mode not in ("circular", "zeros"):
            raise ValueError(f"padding_mode must be 'circular' or 'zeros', got {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding_mode: PaddingMode = padding_mode
        self.bjorck_iters = bjorck_iters
        self.eval_bjorck_iters = bjorck_iters if eval_bjorck_iters is None else eval_bjorck_iters
        self.bjorck_order = bjorck_order
        self.power_iters = power_iters

        c = max(out_channels, in_channels * stride * stride)
        self.max_channels = c
        rank = max(c // 2, 1)
        n_proj = 2 * (kernel_size - 1)
        self.ortho_param = nn.Parameter(torch.empty(c, c))
        self.proj_param: nn.Parameter | None = (
            nn.Parameter(torch.empty(n_proj, c, rank)) if n_proj else None
        )
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("ortho_u", torch.randn(c))
        self.register_buffer("proj_u", torch.randn(n_proj, c))
        self._cache = EvalCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random orthogonal ``H`` and orthonormal-column ``Q_i``; zero bias."""
        nn.init.orthogonal_(self.ortho_param)
        if self.proj_param is not None:
            for q in self.proj_param:
                nn.init.orthogonal_(q)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _orthonormal(self, param: Tensor, u_buf: Tensor, iters: int) -> Tensor:
        scaled, u = scale_for_bjorck(param, self.power_iters, u_buf)
        if u is not None and self.training:
            with torch.no_grad():
                u_buf.copy_(u)
        return bjorck(scaled, iters, self.bjorck_order)

    def _compute_kernel(self) -> Tensor:
        iters = self.bjorck_iters if self.training else self.eval_bjorck_iters
        h = self._orthonormal(self.ortho_param, self.ortho_u, iters)
        projectors: Tensor | None = None
        if self.proj_param is not None:
            q = self._orthonormal(self.proj_param, self.proj_u, iters)
            projectors = q @ q.mT
        kernel = bcop_kernel(h, projectors)
        return kernel[: self.out_channels, : self.in_channels * self.stride * self.stride]

    def orthogonal_kernel(self) -> Tensor:
        """The (cached in eval mode) ``c_out x c_in s^2 x k x k`` kernel."""
        return self._cache.get(self, self._compute_kernel)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the orthogonal convolution to ``x`` of shape ``(N, C, H, W)``."""
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        before, after = same_padding(self.kernel_size)
        pad = (before, after, before, after)
        if self.padding_mode == "circular":
            x = F.pad(x, pad, mode="circular")
        else:
            x = F.pad(x, pad)
        return F.conv2d(x, self.orthogonal_kernel(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding_mode={self.padding_mode!r}, "
            f"bias={self.bias is not None}, bjorck_iters={self.bjorck_iters}, "
            f"power_iters={self.power_iters}"
        )
