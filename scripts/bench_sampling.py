"""Time of a seeded ``sampling.draw`` against the per-sample NumPy loop it replaced (issue 12).

For each batch shape and distribution: the counter-based generator on the tensor's device
and the old loop (``default_rng([seed, stream, crc32(sample)])`` per sample on the host,
then back to the device). CPU: process time on one thread (``--threads``); CUDA: wall time
with the device synchronised.

Usage: python scripts/bench_sampling.py [--device cpu|cuda] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections.abc import Callable
from functools import partial

import eagerpy as ep
import numpy as np
import torch

from car_attacks.attacks.sampling import Distribution, draw

SHAPES = ((128, 3, 32, 32), (16, 3, 224, 224))


def loop_draw(x: ep.Tensor, distribution: Distribution, *, seed: int, stream: int) -> ep.Tensor:
    """The replaced implementation: one NumPy generator per sample, on the host."""
    rows = x.numpy().reshape((x.shape[0], -1))
    out = np.empty(tuple(x.shape), dtype=np.float64)
    for i, row in enumerate(rows):
        fingerprint = zlib.crc32(np.ascontiguousarray(row, dtype=np.float32).tobytes())
        rng = np.random.default_rng([seed, stream, fingerprint])
        if distribution == "normal":
            out[i] = rng.standard_normal(tuple(x.shape[1:]))
        else:
            out[i] = rng.uniform(-1.0, 1.0, tuple(x.shape[1:]))
    return ep.from_numpy(x, out).astype(x.dtype)


def call(fn: Callable[..., ep.Tensor], x: ep.Tensor, distribution: str, stream: int) -> object:
    return fn(x, distribution, seed=0, stream=stream)


def seconds_per_call(fn: Callable[[int], object], device: str, reps: int) -> float:
    """Mean time of ``fn(stream)`` after one warm-up call (CPU: process time)."""
    fn(reps)
    cuda = device == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    t0 = clock()
    for stream in range(reps):
        fn(stream)
    if cuda:
        torch.cuda.synchronize()
    return (clock() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"device={args.device} threads={args.threads} reps={args.reps}")
    for shape in SHAPES:
        x = ep.astensor(torch.rand(shape, generator=generator).to(args.device))
        for distribution in ("uniform", "normal"):
            times = {
                name: seconds_per_call(partial(call, f, x, distribution), args.device, args.reps)
                for name, f in (("counter", draw), ("numpy loop", loop_draw))
            }
            print(
                f"{'x'.join(map(str, shape)):>14} {distribution:>7}: "
                f"counter {times['counter'] * 1e3:7.1f} ms, "
                f"numpy loop {times['numpy loop'] * 1e3:7.1f} ms"
            )


if __name__ == "__main__":
    main()
