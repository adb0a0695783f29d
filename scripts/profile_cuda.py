#!/usr/bin/env python
"""Where the time of one public CAR call goes on a CUDA device.

For the benchmark's CIFAR and ImageNet inputs and p in {2, 1, inf}, one call of
``clipping_aware_rescaling`` and of ``project_lp_ball_box`` under ``torch.profiler``:
the kernels run, the GPU's busy time, the kernel launches and the copies/syncs, beside the
median wall time of 20 calls (``torch.cuda.synchronize()`` around each). The fused kernels
are compiled (``CAR_ATTACKS_COMPILE=1``) unless the environment says otherwise.
Example: ``python scripts/profile_cuda.py`` (on a machine with a GPU).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from car_attacks.benchmarks.rescaling_cases import SIZES, choose_eps, make_inputs
from car_attacks.core import fused
from car_attacks.core.projection import project_lp_ball_box
from car_attacks.core.rescaling import clipping_aware_rescaling

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")


def profile_call(fn: Callable[[], Any], repeats: int = 20) -> str:
    """One profiled call of ``fn`` (after warm-up) and the median wall time of ``repeats``."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.device_time for e in kernels) / 1e3
    launches = sum(1 for e in events if e.name in LAUNCHES)
    syncs = sum(1 for e in events if e.name in SYNCS)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return (
        f"wall {statistics.median(times):.3f} ms, kernels {len(kernels)}, GPU busy "
        f"{busy_ms:.3f} ms, launches {launches}, memcpy/sync calls {syncs}"
    )


def main() -> int:
    if not torch.cuda.is_available():
        raise SystemExit("profile_cuda.py: CUDA is not available here")
    os.environ.setdefault(fused.COMPILE_ENV, "1")
    for size, shape in SIZES.items():
        x64, d64 = make_inputs(shape, 0)
        x = torch.from_numpy(x64).float().cuda()
        d = torch.from_numpy(d64).float().cuda()
        for p in (2.0, 1.0, math.inf):
            eps = choose_eps(x64, d64, p)
            z = x + d
            calls: dict[str, Callable[[], Any]] = {
                "api": functools.partial(
                    clipping_aware_rescaling, x, d, eps, p=p, bounds=(0.0, 1.0)
                ),
                "project": functools.partial(
                    project_lp_ball_box, x, z, eps, p=p, bounds=(0.0, 1.0)
                ),
            }
            for name, fn in calls.items():
                print(f"{size:8s} p={p:<4} {name:8s} {profile_call(fn)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
