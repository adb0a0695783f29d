"""Seeded draws (car_attacks.attacks.sampling): the counter-based generator against an
exact-integer reference, batch independence, distinct streams, the distributions (KS
against scipy), dtypes and shapes, and the unchanged ``seed=None`` path."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch
from scipy import stats

from car_attacks.attacks.sampling import draw, mix64, sample_fingerprints

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 (Vigna, splitmix64.c)
SALT = 0x6A09E667F3BCC909


def _mix(z: int) -> int:
    """splitmix64's finaliser on Python ints (the reference: exact, no wrapping int64)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _to_signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _reference_uniform(
    row: np.ndarray, seed: int, stream: int, count: int, bits: int
) -> list[float]:
    """The documented generator, element by element, on Python ints."""
    f32 = np.asarray(row, dtype=np.float32).ravel()
    if len(f32) % 2:
        f32 = np.append(f32, np.float32(0.0))
    raw = f32.tobytes()
    words = [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(len(f32) // 2)]
    total = sum(_mix(w ^ ((i + 1) * GOLDEN & M64)) for i, w in enumerate(words))
    fingerprint = _mix(total + SALT)
    digest = hashlib.blake2b(f"{seed},{stream}".encode(), digest_size=8).digest()
    key = _mix(int.from_bytes(digest, "little") ^ fingerprint)

    def hashed(c: int) -> int:
        return _mix(key ^ ((c + 1) * GOLDEN & M64))

    out = []
    for j in range(count):
        if bits <= 31:  # the j-th 32-bit half (little-endian memory order) of the hashes
            word, width = (hashed(j // 2) >> (32 * (j % 2))) & 0xFFFFFFFF, 32
        else:
            word, width = hashed(j), 64
        top = word >> (width - bits - 1)  # bits + 1 bits, read as a signed number
        signed = top - (1 << (bits + 1)) if top >= 1 << bits else top
        out.append((signed | 1) / 2**bits)
    return out


def test_mix64_is_splitmix64() -> None:
    """splitmix64 seeded with 0 (Vigna's reference outputs), on NumPy and PyTorch."""
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [_mix(GOLDEN * (i + 1)) for i in range(3)] == expected
    states = [_to_signed(GOLDEN * (i + 1) & M64) for i in range(3)]
    ours_np = mix64(np.array(states, dtype=np.int64))
    ours_torch = mix64(torch.tensor(states, dtype=torch.int64))
    assert [v & M64 for v in ours_np.tolist()] == expected
    assert [v & M64 for v in ours_torch.tolist()] == expected


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize(("dtype", "bits"), [("float32", 24), ("float64", 53), ("float16", 11)])
def test_uniform_matches_exact_integer_reference(backend: str, dtype: str, bits: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 7)).astype(dtype)  # odd length: the fingerprint pads a zero
    xt = ep.astensor(torch.from_numpy(x) if backend == "torch" else x)
    got = draw(xt, "uniform", seed=11, stream=4, shape=(3, 5)).numpy()
    assert got.dtype == np.dtype(dtype)
    for n in range(3):
        expected = _reference_uniform(x[n], 11, 4, 5, bits)
        assert got[n].astype(np.float64).tolist() == expected


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_is_box_muller_of_the_reference_uniforms(backend: str, dtype: str) -> None:
    x = np.random.default_rng(1).random((2, 6)).astype(dtype)
    xt = ep.astensor(torch.from_numpy(x) if backend == "torch" else x)
    got = draw(xt, "normal", seed=2, stream=9, shape=(2, 5)).numpy().astype(np.float64)
    bits = 24 if dtype == "float32" else 53
    for n in range(2):
        v = _reference_uniform(x[n], 2, 9, 6, bits)
        expected = []
        for q in range(3):
            radius = math.sqrt(-2.0 * math.log((1.0 + v[2 * q]) / 2.0))
            expected += [radius * math.cos(math.pi * v[2 * q + 1])]
            expected += [radius * math.sin(math.pi * v[2 * q + 1])]
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got[n], expected[:5], rtol=tol, atol=tol)


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_samples_draw_does_not_depend_on_the_batch(distribution: Any, backend: str) -> None:
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))

    def run(batch: torch.Tensor) -> np.ndarray:
        xt = ep.astensor(batch if backend == "torch" else batch.numpy())
        return draw(xt, distribution, seed=7, stream=3).numpy()

    full = run(x)
    assert np.array_equal(full, run(x))  # reproducible
    order = [4, 0, 5]
    assert np.array_equal(run(x[order]), full[order])
    assert np.array_equal(run(x[2:3]), full[2:3])
    repeated = run(torch.cat([x, x[:1]]))
    assert np.array_equal(repeated[:6], full) and np.array_equal(repeated[6], full[0])
    if backend == "torch" and distribution == "uniform":  # both backends draw the same
        assert np.array_equal(
            full, draw(ep.astensor(x.numpy()), distribution, seed=7, stream=3).numpy()
        )


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_seeds_streams_and_samples_give_different_values(distribution: Any) -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    base = draw(ep.astensor(x), distribution, seed=5, stream=0).raw
    variants = {
        "seed": draw(ep.astensor(x), distribution, seed=6, stream=0).raw,
        "stream": draw(ep.astensor(x), distribution, seed=5, stream=1).raw,
        "big stream": draw(ep.astensor(x), distribution, seed=5, stream=2**31).raw,
    }
    one_pixel = x.clone()
    one_pixel[:, 0, 0, 0] = torch.nextafter(one_pixel[:, 0, 0, 0], torch.tensor(2.0))
    variants["one ulp of one pixel"] = draw(ep.astensor(one_pixel), distribution, seed=5).raw
    swapped = x.clone()
    swapped[:, :, 0, [0, 1]] = x[:, :, 0, [1, 0]]
    variants["two pixels swapped"] = draw(ep.astensor(swapped), distribution, seed=5).raw
    for name, other in variants.items():
        assert float((other == base).float().mean()) < 0.01, name
    # different samples of one batch, and the elements of one sample, do not repeat
    flat = base.flatten()
    assert len(torch.unique(flat)) > 0.99 * len(flat)


def _draw_many(distribution: Any, dtype: torch.dtype = torch.float32) -> np.ndarray:
    x = torch.rand(100, 1000, generator=torch.Generator().manual_seed(2)).to(dtype)
    return draw(ep.astensor(x), distribution, seed=123, stream=0).numpy().astype(np.float64)


def test_uniform_distribution() -> None:
    v = _draw_many("uniform")
    n = v.size
    assert -1.0 < v.min() and v.max() < 1.0
    assert abs(v.mean()) < 5 * math.sqrt(1 / 3 / n)
    assert abs(v.var() - 1 / 3) < 5 * math.sqrt(4 / 45 / n)  # var of s^2: (m4 - s^4) / n
    assert stats.kstest(v.ravel(), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    lag = np.corrcoef(v[:, :-1].ravel(), v[:, 1:].ravel())[0, 1]  # neighbours independent
    rows = np.corrcoef(v[:-1].ravel(), v[1:].ravel())[0, 1]  # samples independent
    assert abs(lag) < 5 / math.sqrt(n) and abs(rows) < 5 / math.sqrt(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_distribution(dtype: torch.dtype) -> None:
    v = _draw_many("normal", dtype)
    n = v.size
    assert abs(v.mean()) < 5 / math.sqrt(n)
    assert abs(v.var() - 1.0) < 5 * math.sqrt(2 / n)
    assert stats.kstest(v.ravel(), stats.norm.cdf).pvalue > 1e-3
    assert abs(stats.kurtosis(v.ravel())) < 5 * math.sqrt(24 / n)
    pairs = np.corrcoef(v[:, 0::2].ravel() ** 2, v[:, 1::2].ravel() ** 2)[0, 1]  # Box-Muller pairs
    assert abs(pairs) < 5 / math.sqrt(n / 2)


def test_uniform_stays_strictly_inside_in_narrow_dtypes() -> None:
    x = torch.rand(64, 4096, generator=torch.Generator().manual_seed(3))
    for dtype in (torch.float16, torch.bfloat16):
        v = draw(ep.astensor(x.to(dtype)), "uniform", seed=0).raw
        assert v.dtype == dtype
        assert float(v.min()) > -1.0 and float(v.max()) < 1.0
        assert float(v.abs().max()) > 0.99  # but reaches close to the ends


def test_shapes_and_dtypes() -> None:
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    distribution: Any
    for distribution in ("uniform", "normal"):
        out = draw(ep.astensor(x), distribution, seed=0)
        assert isinstance(out, ep.PyTorchTensor) and out.raw.dtype == torch.float64
        assert tuple(out.shape) == (3, 2, 4, 4)
        wide = draw(ep.astensor(x), distribution, seed=0, shape=(3, 7, 5))
        assert tuple(wide.shape) == (3, 7, 5)
        # the first values of a longer draw are those of a shorter one (element-wise counters)
        short = draw(ep.astensor(x), distribution, seed=0, shape=(3, 10))
        assert torch.equal(wide.raw.reshape(3, -1)[:, :10], short.raw)
        xn = ep.astensor(x.numpy().astype(np.float32))
        assert draw(xn, distribution, seed=0).numpy().dtype == np.float32
    leaf = x.clone().requires_grad_(True)  # inputs that track gradients draw the same
    assert torch.equal(
        draw(ep.astensor(leaf), "normal", seed=0).raw, draw(ep.astensor(x), "normal", seed=0).raw
    )
    empty = draw(ep.astensor(torch.rand(0, 3)), "normal", seed=0)
    assert tuple(empty.shape) == (0, 3)
    with pytest.raises(ValueError, match="shape"):
        draw(ep.astensor(x), "normal", seed=0, shape=(2, 5))


def test_seed_none_draws_from_the_global_generator() -> None:
    """``seed=None``: one call of the backend's global RNG for the batch (as foolbox)."""
    x = ep.astensor(torch.rand(4, 3, 2, 2))
    torch.manual_seed(0)
    normal = draw(x, "normal", seed=None).raw
    uniform = draw(x, "uniform", seed=None, shape=(4, 5)).raw
    torch.manual_seed(0)
    assert torch.equal(normal, torch.randn(4, 3, 2, 2))
    assert torch.equal(uniform, torch.rand(4, 5) * 2 - 1)


def test_fingerprints_see_values_and_positions() -> None:
    x = np.random.default_rng(4).random((5, 9)).astype(np.float32)
    f = sample_fingerprints(x)
    assert len(set(f.tolist())) == 5
    assert np.array_equal(f, sample_fingerprints(torch.from_numpy(x)).numpy())
    reordered = x[:, ::-1].copy()
    assert not np.any(sample_fingerprints(reordered) == f)
