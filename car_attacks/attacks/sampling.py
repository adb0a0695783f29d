"""Random draws for attacks: the backend's global RNG, or per-sample streams.

With ``seed=None`` draws come from the backend's global generator in one call
for the whole batch, exactly as foolbox draws them (so ``torch.manual_seed``
reproduces foolbox's attacks). With an integer seed, each sample gets its own
generator keyed by ``(seed, stream, fingerprint of the sample's values)``: a
sample's noise is then the same whatever else is in the batch, in whichever
order, on however many processes.
"""

from __future__ import annotations

import zlib
from typing import Literal

import eagerpy as ep
import numpy as np

Distribution = Literal["normal", "uniform"]


def sample_fingerprint(x: np.ndarray) -> int:
    """A 32-bit fingerprint of one sample's values (its float32 bytes)."""
    return zlib.crc32(np.ascontiguousarray(x, dtype=np.float32).tobytes())


def draw(
    x: ep.Tensor,
    distribution: Distribution,
    *,
    seed: int | None,
    stream: int = 0,
    shape: tuple[int, ...] | None = None,
) -> ep.Tensor:
    """Standard normal or uniform(-1, 1) values, one row per sample of ``x``.

    ``shape`` defaults to ``x.shape``; its first entry must be ``len(x)``.
    ``stream`` separates independent draws for the same samples (restarts, steps).
    """
    shape = tuple(x.shape) if shape is None else shape
    if seed is None:
        if distribution == "normal":
            return ep.normal(x, shape)
        return ep.uniform(x, shape, -1.0, 1.0)
    rows = x.numpy().reshape((x.shape[0], -1))
    out = np.empty((shape[0],) + shape[1:], dtype=np.float64)
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, stream, sample_fingerprint(row)])
        if distribution == "normal":
            out[i] = rng.standard_normal(shape[1:])
        else:
            out[i] = rng.uniform(-1.0, 1.0, shape[1:])
    return ep.from_numpy(x, out).astype(x.dtype)
