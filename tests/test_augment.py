"""car_attacks.data.augment.ClippingAwareNoise: training-time noise whose clipped Lp norm is
exactly eps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from car_attacks import reachable_norm
from car_attacks.data.augment import ClippingAwareNoise

P_VALUES = [1.0, 2.0, math.inf]
DISTRIBUTIONS = ["gaussian", "uniform"]
BOUNDS = [(0.0, 1.0), (0.0, 255.0)]
REL = 1e-5  # float32


def _images(bounds: tuple[float, float], n: int = 16, seed: int = 0) -> torch.Tensor:
    """Fashion-MNIST-like batch: a background at the lower bound, some saturated pixels,
    the rest in between (so clipping bites)."""
    lo, hi = bounds
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 28, 28), generator=g)
    x[:, :, :6] = 0.0
    x[:, :, 6:9] = 1.0
    x[:, :, :, :4] = 0.0
    return (lo + (hi - lo) * x).float()


def _norms(out: torch.Tensor, x: torch.Tensor, p: float) -> torch.Tensor:
    return (out.double() - x.double()).flatten(1).norm(p=p, dim=1)


def _eps_for(p: float, bounds: tuple[float, float]) -> float:
    scale = bounds[1] - bounds[0]
    # a size that needs clipping in every case but is reachable
    return {1.0: 60.0, 2.0: 3.0, math.inf: 0.3}[p] * scale


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("p", P_VALUES)
def test_clipped_norm_is_exactly_eps(
    p: float, distribution: str, bounds: tuple[float, float]
) -> None:
    x = _images(bounds)
    eps = _eps_for(p, bounds)
    noise = ClippingAwareNoise(eps, p=p, distribution=distribution, bounds=bounds, seed=1)  # type: ignore[arg-type]
    out = noise.train()(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
    norms = _norms(out, x, p)
    torch.testing.assert_close(norms, torch.full_like(norms, eps), rtol=REL, atol=0.0)
    # clipping did bite: the unclipped noise would have been longer than eps
    assert bool(((out == bounds[0]) | (out == bounds[1])).flatten(1).any(1).all())


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_per_sample_eps_range(p: float, bounds: tuple[float, float]) -> None:
    x = _images(bounds, n=32)
    hi_eps = _eps_for(p, bounds)
    lo_eps = 0.25 * hi_eps
    noise = ClippingAwareNoise(
        (lo_eps, hi_eps), p=p, distribution="gaussian", bounds=bounds, seed=3
    )
    out = noise(x)
    assert noise.last_eps is not None
    eps = noise.last_eps.double()
    assert bool((eps >= lo_eps).all()) and bool((eps <= hi_eps).all())
    assert float(eps.std()) > 0.1 * (hi_eps - lo_eps)  # really drawn per sample
    torch.testing.assert_close(_norms(out, x, p), eps, rtol=REL, atol=0.0)


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_unreachable_eps_gives_reachable_maximum(p: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    x = _images(bounds, n=8)
    x[:, :, 9:] = hi  # almost everything saturated: little room
    g = torch.Generator().manual_seed(5)
    direction = torch.randn(x.shape, generator=g)
    noise = ClippingAwareNoise(1.0, p=p, bounds=bounds)
    huge = torch.full((len(x),), 1e6 * (hi - lo))
    out = noise.perturb(x, direction, huge)
    expected = reachable_norm(x, direction, p=p, bounds=bounds).double()
    assert bool((expected < 1e6 * (hi - lo)).all())
    torch.testing.assert_close(_norms(out, x, p), expected, rtol=REL, atol=0.0)
    # and a reachable eps is met exactly through the same method
    half = expected.float() / 2
    torch.testing.assert_close(
        _norms(noise.perturb(x, direction, half), x, p), half.double(), rtol=REL, atol=0.0
    )


def test_identity_in_eval_mode_unless_always() -> None:
    x = _images((0.0, 1.0), n=4)
    noise = ClippingAwareNoise(2.0, seed=0).eval()
    assert noise(x) is x
    assert noise.last_eps is None
    always = ClippingAwareNoise(2.0, seed=0, always=True).eval()
    out = always(x)
    torch.testing.assert_close(_norms(out, x, 2.0), torch.full((4,), 2.0, dtype=torch.float64))
    # inside a model: nn.Module.eval() switches it off, train() on
    model = nn.Sequential(ClippingAwareNoise(2.0, seed=0), nn.Flatten())
    model.eval()
    assert torch.equal(model(x), x.flatten(1))
    model.train()
    assert not torch.equal(model(x), x.flatten(1))


def test_deterministic_with_seed() -> None:
    x = _images((0.0, 1.0), n=8)
    a = ClippingAwareNoise((0.5, 2.0), distribution="uniform", seed=7)
    b = ClippingAwareNoise((0.5, 2.0), distribution="uniform", seed=7)
    c = ClippingAwareNoise((0.5, 2.0), distribution="uniform", seed=8)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(first, c(x))
    assert not torch.equal(a(x), first)  # the stream advances between calls
    # an explicit generator gives the same stream as the seed
    gen = torch.Generator().manual_seed(7)
    d = ClippingAwareNoise((0.5, 2.0), distribution="uniform", generator=gen)
    assert torch.equal(d(x), first)


def test_works_under_no_grad_and_passes_gradients() -> None:
    x = _images((0.0, 1.0), n=4)
    noise = ClippingAwareNoise(1.5, p=2, seed=0)
    with torch.no_grad():
        out = noise(x)
    assert not out.requires_grad
    torch.testing.assert_close(_norms(out, x, 2.0), torch.full((4,), 1.5, dtype=torch.float64))
    xg = x.clone().requires_grad_(True)
    out = noise(xg)
    out.sum().backward()
    assert xg.grad is not None
    torch.testing.assert_close(xg.grad, torch.ones_like(x))


def test_dtypes() -> None:
    x = _images((0.0, 1.0), n=4)
    out64 = ClippingAwareNoise(2.0, p=1, seed=0)(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(
        _norms(out64, x.double(), 1.0),
        torch.full((4,), 2.0, dtype=torch.float64),
        rtol=1e-10,
        atol=0.0,
    )
    out16 = ClippingAwareNoise(2.0, p=2, seed=0)(x.half())
    assert out16.dtype == torch.float16
    assert float(out16.min()) >= 0.0 and float(out16.max()) <= 1.0


def test_training_transform_on_batches() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(784, 10)
    model = nn.Sequential(ClippingAwareNoise((0.0, 2.0), p=2, seed=0), nn.Flatten(), linear)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _images((0.0, 1.0), n=16), torch.arange(16) % 10
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert linear.weight.grad is not None and bool(linear.weight.grad.abs().sum() > 0)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="p must be"):
        ClippingAwareNoise(1.0, p=0.5)
    with pytest.raises(ValueError, match="distribution"):
        ClippingAwareNoise(1.0, distribution="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        ClippingAwareNoise(-1.0)
    with pytest.raises(ValueError, match="eps"):
        ClippingAwareNoise((2.0, 1.0))
    with pytest.raises(ValueError, match="bounds"):
        ClippingAwareNoise(1.0, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="bounds"):
        ClippingAwareNoise(1.0)(torch.full((2, 3), 2.0))


def test_old_module_path_reexports_the_class() -> None:
    from car_attacks import augment

    assert augment.ClippingAwareNoise is ClippingAwareNoise
