"""Builder for small BCOP networks (Li et al., NeurIPS 2019).

Layout (an ``nn.Sequential``, so :func:`car_attacks.lipschitz.certify.lipschitz_bound`
can multiply the layer norms)::

    [Normalize]                                   (only if mean/std are given)
    for each width w:  depth x (BCOPConv2d(c -> w, k), MaxMin)
                       BCOPConv2d(w -> w, k, stride=2), MaxMin   (invertible downsampling)
    Flatten
    for each hidden h: BjorckLinear(f -> h), MaxMin
    BjorckLinear(f -> num_classes)

Every layer is 1-Lipschitz in l2 except ``Normalize`` (``1 / min(std)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from car_attacks.lipschitz.bcop import BCOPConv2d, PaddingMode
from car_attacks.lipschitz.layers import BjorckLinear, MaxMin, Normalize

__all__ = ["bcop_network"]


def bcop_network(
    in_channels: int,
    num_classes: int,
    image_size: int,
    widths: Sequence[int] = (16, 32),
    depth: int = 1,
    kernel_size: int = 3,
    hidden: Sequence[int] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    padding_mode: PaddingMode = "circular",
    bjorck_iters: int = 20,
    eval_bjorck_iters: int | None = None,
    power_iters: int = 3,
) -> nn.Sequential:
    """Build a BCOP convolutional classifier for ``(N, in_channels, S, S)`` inputs.

    Args:
        in_channels: input channels.
        num_classes: number of logits.
        image_size: input height = width; must be divisible by ``2 ** len(widths)``.
        widths: channels of each stage (even, for MaxMin); each stage ends with a
            stride-2 BCOP convolution that halves the resolution.
        depth: stride-1 BCOP convolutions per stage (before the strided one).
        kernel_size: BCOP kernel size.
        hidden: widths (even) of hidden Björck linear layers.
        mean, std: optional input normalisation ``(x - mean) / std`` (per channel).
        padding_mode: ``"circular"`` (orthogonal convolutions) or ``"zeros"``.
        bjorck_iters, eval_bjorck_iters, power_iters: passed to every layer.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std or neither")
    if any(w % 2 for w in (*widths, *hidden)):
        raise ValueError("widths and hidden sizes must be even (MaxMin)")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    factor = 2 ** len(widths)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not divisible by {factor}")

    def conv(c_in: int, c_out: int, stride: int) -> BCOPConv2d:
        return BCOPConv2d(
            c_in,
            c_out,
            kernel_size,
            stride=stride,
            padding_mode=padding_mode,
            bjorck_iters=bjorck_iters,
            eval_bjorck_iters=eval_bjorck_iters,
            power_iters=power_iters,
        )

    def linear(f_in: int, f_out: int) -> BjorckLinear:
        return BjorckLinear(
            f_in,
            f_out,
            bjorck_iters=bjorck_iters,
            eval_bjorck_iters=eval_bjorck_iters,
            power_iters=power_iters,
        )

    layers: list[nn.Module] = []
    if mean is not None and std is not None:
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean/std must have one entry per input channel")
        layers.append(Normalize(mean, std, persistent=True))
    channels, size = in_channels, image_size
    for width in widths:
        for _ in range(depth):
            layers += [conv(channels, width, 1), MaxMin()]
            channels = width
        layers += [conv(channels, width, 2), MaxMin()]
        channels, size = width, size // 2
    layers.append(nn.Flatten())
    features = channels * size * size
    for h in hidden:
        layers += [linear(features, h), MaxMin()]
        features = h
    layers.append(linear(features, num_classes))
    return nn.Sequential(*layers)
