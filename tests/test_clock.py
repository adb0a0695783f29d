"""The rescaling clock: counts only while active, nested sections once, and the attacks'
rescaling steps and projections are what it times."""

from __future__ import annotations

import time

import eagerpy as ep
import pytest
import torch

from car_attacks.attacks.rescaled_steps import RESCALINGS, RescaledSteps
from car_attacks.core.clock import Clock, rescaling_clock, rescaling_section, synchronize_like

PAUSE = 0.02


def test_sections_count_only_while_a_clock_is_active() -> None:
    with rescaling_section():
        time.sleep(PAUSE)  # no clock: nothing to count
    with rescaling_clock() as clock:
        time.sleep(PAUSE)  # outside any section: not counted
        assert clock.seconds == 0.0 and clock.sections == 0
        t0 = time.perf_counter()
        with rescaling_section():
            time.sleep(PAUSE)
        wall = time.perf_counter() - t0
    after = clock.seconds
    assert PAUSE <= after <= wall and clock.sections == 1
    with rescaling_section():
        time.sleep(PAUSE)  # the clock is no longer active
    assert clock.seconds == after and clock.sections == 1


def test_nested_sections_are_counted_once() -> None:
    with rescaling_clock() as clock:
        t0 = time.perf_counter()
        with rescaling_section():
            time.sleep(PAUSE)
            with rescaling_section():
                time.sleep(PAUSE)
                with rescaling_section():
                    time.sleep(PAUSE)
        wall = time.perf_counter() - t0
    assert clock.sections == 1
    assert 3 * PAUSE <= clock.seconds <= wall  # counted twice would be about 2 * wall


def test_nested_clocks_both_count_and_an_exception_still_counts() -> None:
    with rescaling_clock() as outer:
        with rescaling_section():
            time.sleep(PAUSE)
        with rescaling_clock() as inner:
            with pytest.raises(ValueError), rescaling_section():
                time.sleep(PAUSE)
                raise ValueError("x")
            with rescaling_section():  # the failed section left the clock usable
                time.sleep(PAUSE)
    assert inner.sections == 2 and outer.sections == 3
    assert 2 * PAUSE <= inner.seconds < outer.seconds
    assert outer.seconds >= 3 * PAUSE


def test_clock_timing_accumulates() -> None:
    clock = Clock()
    t0 = time.perf_counter()
    for _ in range(2):
        with clock.timing(torch.zeros(1)):
            time.sleep(PAUSE)
    wall = time.perf_counter() - t0
    assert clock.sections == 2 and 2 * PAUSE <= clock.seconds <= wall
    synchronize_like(None)  # neither a tensor nor on CUDA: a no-op
    synchronize_like(ep.astensor(torch.zeros(1)))


@pytest.mark.parametrize("rescaling", RESCALINGS)
@pytest.mark.parametrize("p", [1.0, 2.0, float("inf")])
def test_rescaled_steps_are_timed_once_per_call(rescaling: str, p: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = ep.astensor(torch.rand(4, 3, 8, 8, generator=g) * 255)
    d = ep.astensor(torch.randn(4, 3, 8, 8, generator=g))
    eps = ep.astensor(torch.full((4,), 30.0))
    steps = RescaledSteps(p=p, bounds=(0.0, 255.0), rescaling=rescaling)  # type: ignore[arg-type]
    plain = steps.clipped_step(x, d, eps)
    with rescaling_clock() as clock:
        timed = steps.clipped_step(x, d, eps)  # calls eta inside: one section
        steps.project(x, x + 50 * d, eps)
        steps.eta(x, d, eps)
    assert clock.sections == 3 and clock.seconds > 0
    assert (timed == plain).all().item()  # timing changes nothing


def test_kernel_compilation_is_not_rescaling_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call of a fused kernel compiles it: that time is kept out of the section."""
    from car_attacks.core import clock as clock_module

    compiled = {"total": 0.0}
    monkeypatch.setattr(clock_module, "_compile_total", lambda: compiled["total"])
    with rescaling_clock() as clock:
        start = time.perf_counter()
        with rescaling_section():
            time.sleep(0.2)
            compiled["total"] += 0.15  # as if a kernel had compiled for 0.15 s in here
        elapsed = time.perf_counter() - start
    assert clock.compile_seconds == pytest.approx(0.15)
    assert 0.2 - 0.15 - 1e-3 <= clock.seconds <= elapsed - 0.15 + 1e-3
