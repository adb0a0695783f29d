#!/usr/bin/env python
"""Benchmark clipping-aware rescaling (newton, sort, bisection, naive, paper's L2 sort).

Thin wrapper around :func:`car_attacks.benchmarks.rescaling_timing.main`; see ``--help``.
Example: ``python scripts/bench_rescaling.py --out bench_results/rescaling.json``.
"""

from __future__ import annotations

import sys

from car_attacks.benchmarks.rescaling_timing import main

if __name__ == "__main__":
    sys.exit(main())
