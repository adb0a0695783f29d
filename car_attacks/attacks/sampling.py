"""Random draws for attacks: the backend's global RNG, or per-sample counter-based streams.

With ``seed=None`` draws come from the backend's global generator in one call
for the whole batch, exactly as foolbox draws them (so ``torch.manual_seed``
reproduces foolbox's attacks).

With an integer seed every value is a pure function of ``(seed, stream, sample, index)``,
evaluated with tensor ops on the tensor's own backend and device (PyTorch: int64 ops on
its device; NumPy: NumPy; other EagerPy backends through NumPy), with no loop over samples.
``mix`` is splitmix64's finaliser (Stafford's variant 13) and ``gamma`` splitmix64's Weyl
step (the 64-bit golden ratio), in wrapping int64 arithmetic:

* ``K = blake2b("seed,stream")`` (64 bits, once per call);
* the sample's fingerprint ``f_n = mix(sum_i mix(w_i ^ (i + 1) gamma) + c)``, ``w_i`` the
  int64 words of its float32 bit patterns (two values a word);
* its key ``k_n = mix(K ^ f_n)`` and its hashes ``h_c = mix(k_n ^ (c + 1) gamma)``;
* element ``j`` reads a word: for float32 (and narrower) outputs the ``j``-th 32-bit half
  of the hashes (two per hash, memory order), for float64 hash ``j``; its top ``b + 1`` bits
  read signed, the lowest set to 1, give an odd ``k`` uniform in ``(-2^b, 2^b)`` and
  ``v = k / 2^b``: uniform(-1, 1), strictly inside, symmetric and exact in the dtype (``b``
  the significand bits: 24 for float32, 53 for float64, 11 for float16);
* normal: Box-Muller on the pair of elements ``(2 q, 2 q + 1)``: with ``u = (1 + v_2q) / 2``
  in (0, 1) and ``a = pi v_2q+1``, ``sqrt(-2 ln u) cos a`` at ``2 q`` and ``... sin a`` at
  ``2 q + 1`` (computed in float32, float64 for float64; float32 values stay within
  5.9 standard deviations, a tail of probability 4e-9).

A sample's noise is then the same whatever else is in the batch, in whichever order, on
however many processes (PyTorch and NumPy agree on the integers and the uniforms; normal
values may differ in the last bit between their libm). Seeded values changed (issue 12)
from the earlier per-sample NumPy generators (``default_rng([seed, stream, crc32(x)])``),
which looped over the batch on the host.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

import eagerpy as ep
import numpy as np

__all__ = ["Distribution", "draw", "mix64", "sample_fingerprints", "seeded_key"]

Distribution = Literal["normal", "uniform"]

_U64 = 1 << 64
GAMMA = 0x9E3779B97F4A7C15
"""splitmix64's Weyl increment, ``2^64 / golden ratio`` (odd)."""
MIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
MIX_SHIFTS = (30, 27, 31)
"""splitmix64's finaliser (Stafford's mix13): xor-shift, multiply, xor-shift, multiply,
xor-shift."""
FINGERPRINT_SALT = 0x6A09E667F3BCC909
"""Added to the fingerprint sum (the first 64 bits of sqrt(2)'s fraction)."""


def _signed(v: int) -> int:
    """The int64 with the bits of ``v mod 2^64``."""
    v %= _U64
    return v - _U64 if v >= 1 << 63 else v


def _logical_shift(z: Any, k: int, out: Any = None) -> Any:
    """``z >>> k`` on int64 (the arithmetic shift, its sign bits masked off), into ``out``."""
    if isinstance(z, np.ndarray):
        out = np.right_shift(z, k, out=out)
    else:
        import torch

        out = torch.bitwise_right_shift(z, k, out=out)
    out &= (1 << (64 - k)) - 1
    return out


def mix64(z: Any) -> Any:
    """splitmix64's finaliser on an int64 array or tensor (NumPy or PyTorch), in place:
    ``z ^= z >>> 30; z *= m1; z ^= z >>> 27; z *= m2; z ^= z >>> 31`` (wrapping)."""
    s1, s2, s3 = MIX_SHIFTS
    m1, m2 = (_signed(m) for m in MIX_MULTIPLIERS)
    scratch = _logical_shift(z, s1)
    z ^= scratch
    z *= m1
    z ^= _logical_shift(z, s2, out=scratch)
    z *= m2
    z ^= _logical_shift(z, s3, out=scratch)
    return z


def seeded_key(seed: int, stream: int) -> int:
    """``K``: 64 bits of ``blake2b("seed,stream")`` as an int64 (any int seed and stream)."""
    digest = hashlib.blake2b(f"{seed},{stream}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


class _Backend:
    """The few array ops the generator needs, on one backend (PyTorch or NumPy)."""

    def __init__(self, like: Any) -> None:
        self.torch = not isinstance(like, np.ndarray)
        if self.torch:
            import torch

            self.xp: Any = torch
            self.device = like.device
        else:
            self.xp = np
            self.device = None

    def weyl(self, n: int, gamma: int = GAMMA) -> Any:
        """``(i + 1) gamma`` (wrapping) for ``i < n``, int64."""
        if self.torch:
            i = self.xp.arange(1, n + 1, dtype=self.xp.int64, device=self.device)
        else:
            i = np.arange(1, n + 1, dtype=np.int64)
        i *= _signed(gamma)
        return i

    def float_words(self, rows: Any) -> Any:
        """``rows`` (N, D) as float32, zero-padded to even D, each two values' bits read
        as one int64 word (N, ceil(D / 2))."""
        xp = self.xp
        if self.torch:
            f32 = rows.to(xp.float32)
            if f32.shape[1] % 2:
                f32 = xp.nn.functional.pad(f32, (0, 1))
            return f32.contiguous().view(xp.int64)
        f32 = np.ascontiguousarray(rows, dtype=np.float32)
        if f32.shape[1] % 2:
            f32 = np.pad(f32, ((0, 0), (0, 1)))
        return f32.view(np.int64)

    def int32_halves(self, h: Any) -> Any:
        """The int64 words ``h`` (N, n) read as 32-bit halves (N, 2 n), in memory order."""
        return h.view(self.xp.int32)

    def is_float(self, dtype: Any) -> bool:
        return bool(dtype.is_floating_point if self.torch else np.issubdtype(dtype, np.floating))

    def to_float(self, ints: Any, dtype: Any) -> Any:
        return ints.to(dtype) if self.torch else ints.astype(dtype)

    def interleave(self, a: Any, b: Any) -> Any:
        """``a[:, 0], b[:, 0], a[:, 1], b[:, 1], ...`` (N, 2 n)."""
        stacked = self.xp.stack((a, b), -1)
        return stacked.reshape(stacked.shape[0], 2 * stacked.shape[1])


def sample_fingerprints(rows: Any, backend: _Backend | None = None) -> Any:
    """``f_n`` (N,) int64 of each row of ``rows`` (N, D), NumPy or PyTorch: the words
    ``w_i`` of its float32 bits (two values a word) hashed with their positions,
    ``f = mix(sum_i mix(w_i ^ (i + 1) gamma) + c)`` (wrapping sum). Any change of a value
    or of their order changes it (up to 64-bit collisions)."""
    be = backend or _Backend(rows)
    h = be.float_words(rows) ^ be.weyl((rows.shape[1] + 1) // 2).reshape(1, -1)
    total = mix64(h).sum(1)
    total += _signed(FINGERPRINT_SALT)
    return mix64(total)


def _bits_of(dtype: Any, backend: _Backend) -> int:
    """The significand bits (implicit one included) of a float dtype: 24 for float32."""
    return round(-math.log2(float(backend.xp.finfo(dtype).eps))) + 1


def _hashes(keys: Any, n: int, be: _Backend) -> Any:
    """``mix(k_n ^ (c + 1) gamma)`` (N, n) for the counters ``c < n``."""
    return mix64(keys.reshape(-1, 1) ^ be.weyl(n).reshape(1, -1))


def _odd_ints(keys: Any, count: int, bits: int, be: _Backend) -> Any:
    """``k`` (N, count): odd integers uniform in ``(-2^bits, 2^bits)``: the top ``bits + 1``
    bits of a word read signed, the lowest set to 1. ``bits <= 31``: element ``j``'s word is
    the ``j``-th 32-bit half of the hashes (memory order, two per hash), else hash ``j``."""
    if bits <= 31:
        words = be.int32_halves(_hashes(keys, (count + 1) // 2, be))[:, :count]
        k = words >> (31 - bits)
    else:
        k = _hashes(keys, count, be) >> (63 - bits)
    k |= 1
    return k


def _seeded_values(
    rows: Any, distribution: Distribution, seed: int, stream: int, count: int, dtype: Any
) -> Any:
    """``count`` values per row of ``rows`` (N, D) on its backend, in float32 (float64 for
    a float64 ``dtype``)."""
    be = _Backend(rows)
    xp = be.xp
    keys = mix64(sample_fingerprints(rows, be) ^ seeded_key(seed, stream))
    compute = xp.float64 if dtype == xp.float64 else xp.float32
    bits = _bits_of(compute, be)
    if distribution == "uniform":
        if be.is_float(dtype):  # exact in the output dtype (float16: 11 bits), so never +-1
            bits = min(bits, _bits_of(dtype, be))
        return be.to_float(_odd_ints(keys, count, bits, be), compute) * 2.0**-bits
    # Box-Muller: u = (1 + v) / 2 in (0, 1) from element 2q, angle pi v from element 2q + 1
    v = be.to_float(_odd_ints(keys, count + count % 2, bits, be), compute) * 2.0**-bits
    radius = xp.sqrt(-2.0 * xp.log(0.5 + 0.5 * v[:, 0::2]))
    angle = math.pi * v[:, 1::2]
    return be.interleave(radius * xp.cos(angle), radius * xp.sin(angle))[:, :count]


def draw(
    x: ep.Tensor,
    distribution: Distribution,
    *,
    seed: int | None,
    stream: int = 0,
    shape: tuple[int, ...] | None = None,
) -> ep.Tensor:
    """Standard normal or uniform(-1, 1) values, one row per sample of ``x``, in ``x``'s
    dtype and on its device.

    ``shape`` defaults to ``x.shape``; its first entry must be ``len(x)``.
    ``stream`` separates independent draws for the same samples (restarts, steps).
    """
    shape = tuple(x.shape) if shape is None else tuple(shape)
    if seed is None:
        if distribution == "normal":
            return ep.normal(x, shape)
        return ep.uniform(x, shape, -1.0, 1.0)
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    if not shape or shape[0] != len(x):
        raise ValueError(f"shape must start with len(x) = {len(x)}, got shape={shape}")
    count, size = math.prod(shape[1:]), math.prod(x.shape[1:])
    if isinstance(x, ep.PyTorchTensor):
        rows = x.raw.detach().reshape(len(x), size)
        values = _seeded_values(rows, distribution, seed, stream, count, x.raw.dtype)
        return ep.astensor(values.to(x.raw.dtype).reshape(shape))
    rows_np = x.numpy().reshape(len(x), size)
    values_np = _seeded_values(rows_np, distribution, seed, stream, count, rows_np.dtype)
    return ep.from_numpy(x, values_np.reshape(shape)).astype(x.dtype)
