"""The rescalings the benchmark times, by name, as zero-argument calls on a :class:`Case`.

``newton``, ``sort``, ``bisection`` and ``naive`` go through the validation-free core
:func:`~car_attacks.core.rescaling.solve_eta_with_info`; ``newton-api`` is ``newton`` through
the public :func:`~car_attacks.core.rescaling.clipping_aware_rescaling` (with input checks);
``paper-sort`` is an independent re-implementation of Rauber & Bethge's L2 sort algorithm and
``foolbox-vendored`` foolbox's copy of their code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
from foolbox.external.clipping_aware_rescaling import l2_clipping_aware_rescaling

from car_attacks.core.projection import PROJECTION_NORMS, project_lp_ball_box
from car_attacks.core.rescaling import METHODS, clipping_aware_rescaling, solve_eta_with_info
from car_attacks.core.solvers import SolveInfo

from .paper_car import paper_l2_rescaling_numpy, paper_l2_rescaling_torch
from .rescaling_cases import HI, LO, Case, achieved_rel_errors, to_numpy

SOLVER_METHODS: tuple[str, ...] = METHODS
NEWTON_API = "newton-api"
PAPER = "paper-sort"
VENDORED = "foolbox-vendored"
EXACT_METHODS = frozenset({"newton", NEWTON_API, "sort", PAPER, VENDORED})
ITERATIVE_METHODS = frozenset({"newton", "bisection"})
ONE_PASS = "one-pass"
"""Reference timing: ``clip(x + delta, lo, hi)``, one elementwise pass (read two, write one)."""
PROJECT = "project"
"""Reference timing: the public ``project_lp_ball_box`` of ``x + delta`` (p = 1, 2, inf
only)."""
BISECTION_RTOLS = (1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 1e-9, 1e-10, 1e-12)
"""Candidate ``bisection_rtol`` values, loosest first; the first meeting the accuracy wins."""


def methods_for(p: float) -> list[str]:
    """The methods timed for norm order ``p`` (the L2-only ones for p = 2), in the order
    of a timing round: ``newton-api`` right after ``newton``, so that the API and the core
    solve it wraps find the same cache state (after ``naive`` or ``bisection`` the API's
    call measured ~0.2 ms slower at CIFAR size than later in the same round)."""
    methods = [SOLVER_METHODS[0], NEWTON_API, *SOLVER_METHODS[1:]]
    if p == 2:
        methods += [PAPER, VENDORED]
    return methods


def solve(case: Case, method: str, rtol: float, max_steps: int) -> tuple[ep.Tensor, SolveInfo]:
    """``eta`` of shape ``(N,)`` by one of :data:`SOLVER_METHODS`, and what the solve did."""
    return solve_eta_with_info(
        case.x_ep,
        case.delta_ep,
        case.eps_ep,
        p=case.p,
        lo=LO,
        hi=HI,
        method=method,
        bisection_rtol=rtol,
        bisection_max_steps=max_steps,
    )


def method_call(case: Case, method: str, rtol: float, max_steps: int) -> Callable[[], Any]:
    """A zero-argument call computing ``eta`` with ``method`` on ``case``."""
    if method == PAPER:
        if case.backend == "torch":
            return lambda: paper_l2_rescaling_torch(case.x, case.delta, case.eps, LO, HI)
        return lambda: paper_l2_rescaling_numpy(case.x, case.delta, case.eps, LO, HI)
    if method == VENDORED:
        return lambda: l2_clipping_aware_rescaling(case.x, case.delta, case.eps, LO, HI)
    if method == NEWTON_API:
        return lambda: clipping_aware_rescaling(
            case.x, case.delta, case.eps, p=case.p, bounds=(LO, HI)
        )
    return lambda: solve(case, method, rtol, max_steps)


def match_bisection(case: Case, target_rel_err: float, max_steps: int) -> float:
    """The loosest of :data:`BISECTION_RTOLS` whose achieved error is <= ``target_rel_err``
    (else the tightest)."""
    for rtol in BISECTION_RTOLS:
        eta, _ = solve(case, "bisection", rtol, max_steps)
        err = achieved_rel_errors(case.x64, case.d64, to_numpy(eta), case.eps, case.p).max()
        if err <= target_rel_err:
            return rtol
    return BISECTION_RTOLS[-1]


def reference_calls(case: Case) -> dict[str, Callable[[], Any]]:
    """Zero-argument calls timed beside the methods: :data:`ONE_PASS` and, for p = 1, 2 and
    inf, :data:`PROJECT`."""
    if case.backend == "torch":
        calls: dict[str, Callable[[], Any]] = {
            ONE_PASS: lambda: (case.x + case.delta).clamp_(LO, HI)
        }
    else:
        calls = {ONE_PASS: lambda: np.clip(case.x + case.delta, LO, HI)}
    if case.p in PROJECTION_NORMS:  # (the exact projection exists for these only)
        calls[PROJECT] = lambda: project_lp_ball_box(
            case.x, case.x + case.delta, case.eps, p=case.p, bounds=(LO, HI)
        )
    return calls
