"""Lipschitz upper bounds and l2 certified radii for sequential Lipschitz networks.

For a composition ``f = f_L o ... o f_1``, ``Lip(f) <= prod_i ||f_i||``.  Layer norms
are computed exactly rather than assumed:

* circular stride-1 convolution on an ``h x w`` grid: the operator is block
  diagonalised by the 2-D DFT, so its singular values are those of the
  ``c_out x c_in`` matrices ``K_hat(u, v) = sum_{p,q} K[:, :, p, q] e^{-2 pi i (pu/h + qv/w)}``
  (Sedghi, Gupta & Long, ICLR 2019);
* zero-padded convolution: a restriction of the circular convolution on the
  ``(h + k - 1) x (w + k - 1)`` grid, whose norm is therefore an upper bound;
* linear layers: largest singular value (SVD);
* MaxMin, pixel unshuffle, flatten, identity, ReLU: 1; ``Normalize``: ``1 / min(std)``.

A prediction with logit margin ``M = f_y(x) - max_{j != y} f_j(x)`` cannot change
within l2 radius ``M / (sqrt(2) L)``: each difference ``f_y - f_j`` is
``sqrt(2) L``-Lipschitz (Tsuzuku, Sato & Sugiyama, NeurIPS 2018).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from car_attacks.lipschitz.bcop import BCOPConv2d
from car_attacks.lipschitz.layers import BjorckLinear, InvertibleDownsampling, MaxMin, Normalize

__all__ = [
    "certified_accuracy",
    "certified_radius",
    "conv_singular_values",
    "layer_lipschitz",
    "lipschitz_bound",
    "prediction_margin",
]

_ONE_LIPSCHITZ = (
    MaxMin,
    InvertibleDownsampling,
    nn.PixelUnshuffle,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.ReLU,
)


def conv_singular_values(
    kernel: Tensor, input_size: Sequence[int], circular: bool = True
) -> Tensor:
    """Singular values of the stride-1 2-D convolution with ``kernel`` (float64).

    Args:
        kernel: ``(c_out, c_in, k_h, k_w)``.
        input_size: spatial size ``(h, w)`` of the input.
        circular: ``True`` gives the exact singular values of the circular
            convolution (any padding offset); ``False`` those of the circular
            convolution on ``(h + k_h - 1, w + k_w - 1)``, whose maximum bounds the
            norm of the zero-padded convolution.

    Returns:
        Tensor of shape ``(h', w', min(c_out, c_in))``: the singular values at each
        spatial frequency.
    """
    k = kernel.detach().to(torch.float64)
    c_out, c_in, kh, kw = k.shape
    h, w = (int(s) for s in input_size)
    if not circular:
        h, w = h + kh - 1, w + kw - 1
    grid = k.new_zeros(c_out, c_in, h, w)
    for p in range(kh):  # fold taps onto the grid (aliasing if the kernel is larger)
        for q in range(kw):
            grid[:, :, p % h, q % w] += k[:, :, p, q]
    symbol = torch.fft.fft2(grid).permute(2, 3, 0, 1)
    singular_values: Tensor = torch.linalg.svdvals(symbol)
    return singular_values


def _matrix_norm(weight: Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2))


def layer_lipschitz(layer: nn.Module, input_shape: Sequence[int]) -> float:
    """Upper bound on the l2 Lipschitz constant of one layer at ``input_shape``.

    ``input_shape`` excludes the batch dimension.  Raises ``TypeError`` for layers
    whose norm is not known (so the product stays a true bound).
    """
    shape = tuple(int(s) for s in input_shape)
    with torch.no_grad():
        if isinstance(layer, BCOPConv2d):
            _, h, w = shape
            s = layer.stride
            sv = conv_singular_values(
                layer.orthogonal_kernel(), (h // s, w // s), layer.padding_mode == "circular"
            )
            return float(sv.max())
        if isinstance(layer, BjorckLinear):
            return _matrix_norm(layer.orthogonal_weight())
        if isinstance(layer, nn.Linear):
            return _matrix_norm(layer.weight)
        if isinstance(layer, Normalize):
            return layer.lipschitz_constant()
        if isinstance(layer, _ONE_LIPSCHITZ):
            return 1.0
    raise TypeError(f"no Lipschitz bound known for layer {type(layer).__name__}")


def _output_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(layer, BCOPConv2d):
        _, h, w = shape
        return (layer.out_channels, h // layer.stride, w // layer.stride)
    if isinstance(layer, BjorckLinear | nn.Linear):
        return (*shape[:-1], layer.out_features)
    if isinstance(layer, InvertibleDownsampling | nn.PixelUnshuffle):
        f = layer.factor if isinstance(layer, InvertibleDownsampling) else layer.downscale_factor
        c, h, w = shape
        return (c * f * f, h // f, w // f)
    if isinstance(layer, nn.Flatten | nn.Unflatten):
        # Shape-only, parameter-free: evaluate on the meta device (no compute).
        return tuple(layer(torch.empty((1, *shape), device="meta")).shape[1:])
    return shape  # elementwise / channel-wise layers keep the shape


def _leaves(model: nn.Module) -> Iterator[nn.Module]:
    if isinstance(model, nn.Sequential):
        for child in model:
            yield from _leaves(child)
    else:
        yield model


def lipschitz_bound(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Product of the exact layer norms of a (nested) ``nn.Sequential`` model.

    ``Lip(f) <= prod_i ||f_i||``; ``input_shape`` excludes the batch dimension (e.g.
    ``(3, 32, 32)``).  Kernels are taken in the model's current mode (use eval mode,
    as for inference).  Raises ``TypeError`` for unsupported layers or non-sequential
    containers.
    """
    shape = tuple(int(s) for s in input_shape)
    bound = 1.0
    for layer in _leaves(model):
        bound *= layer_lipschitz(layer, shape)
        shape = _output_shape(layer, shape)
    return bound


def prediction_margin(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(prediction, margin)``: argmax and top logit minus runner-up, per sample."""
    top2 = logits.topk(2, dim=1)
    return top2.indices[:, 0], top2.values[:, 0] - top2.values[:, 1]


def certified_radius(model: nn.Module, x: Tensor, lipschitz: float | None = None) -> Tensor:
    """Per-sample certified l2 radius ``margin / (sqrt(2) L)`` of the predicted class.

    ``L`` defaults to :func:`lipschitz_bound` at ``x.shape[1:]``.  No perturbation
    ``delta`` with ``||delta||_2 < radius`` changes the prediction.
    """
    if lipschitz is None:
        lipschitz = lipschitz_bound(model, x.shape[1:])
    with torch.no_grad():
        _, margin = prediction_margin(model(x))
    return margin / (math.sqrt(2.0) * lipschitz)


def certified_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, lipschitz: float | None = None
) -> Tensor:
    """Per-sample booleans: prediction equals ``y`` and certified radius ``>= eps``."""
    if lipschitz is None:
        lipschitz = lipschitz_bound(model, x.shape[1:])
    with torch.no_grad():
        pred, margin = prediction_margin(model(x))
    radius = margin / (math.sqrt(2.0) * lipschitz)
    return (pred == y) & (radius >= eps)
