"""A cheap wall clock for the time attacks spend rescaling and projecting.

:func:`rescaling_clock` activates a :class:`Clock`; while it is active, every
:func:`rescaling_section` adds its wall time (``time.perf_counter``) to it. Sections
nest without being counted twice (only the outermost one is timed), and with no clock
active a section costs one context-variable lookup. The first call of a fused kernel
compiles it (:func:`car_attacks.core.fused.compile_seconds`); that compile time is kept
out of the section's time and counted in :attr:`Clock.compile_seconds` instead, so a
run's first car unit is not charged for it. Work on CUDA runs asynchronously, so
a timed section synchronises the device of the tensor it is given, before and after (and
only then: CPU tensors are never synchronised).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import fused

__all__ = ["Clock", "rescaling_clock", "rescaling_section", "synchronize_like"]


@dataclass(kw_only=True)
class Clock:
    """Accumulated wall time of the timed sections, and how many there were."""

    seconds: float = 0.0
    sections: int = 0
    compile_seconds: float = 0.0
    """Kernel compilation inside the sections (not part of :attr:`seconds`)."""

    @contextmanager
    def timing(self, like: object = None) -> Iterator[None]:
        """Add the wall time of the body to this clock (``like``: a tensor whose CUDA device
        is synchronised around the body)."""
        synchronize_like(like)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize_like(like)
            self.seconds += time.perf_counter() - t0
            self.sections += 1


_ACTIVE: ContextVar[tuple[Clock, ...]] = ContextVar("car_attacks_rescaling_clocks", default=())
_INSIDE: ContextVar[bool] = ContextVar("car_attacks_rescaling_inside", default=False)


def synchronize_like(like: object) -> None:
    """Wait for the CUDA device of ``like`` (a torch or eagerpy tensor) to finish its work;
    nothing for other tensors and objects."""
    raw: Any = getattr(like, "raw", like)
    is_cuda = getattr(raw, "is_cuda", False)
    if is_cuda is True:
        import torch

        torch.cuda.synchronize(raw.device)


@contextmanager
def rescaling_clock() -> Iterator[Clock]:
    """A fresh :class:`Clock` that counts the rescaling sections run inside the ``with``
    body (an enclosing active clock counts them too)."""
    clock = Clock()
    token = _ACTIVE.set((*_ACTIVE.get(), clock))
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)


@contextmanager
def rescaling_section(like: object = None) -> Iterator[None]:
    """Time the body as rescaling/projection work on every active clock; a section inside
    another section is not timed again. ``like``: see :meth:`Clock.timing`."""
    clocks = _ACTIVE.get()
    if not clocks or _INSIDE.get():
        yield
        return
    lap = Clock()
    compiled = _compile_total()
    token = _INSIDE.set(True)
    try:
        with lap.timing(like):
            yield
    finally:
        _INSIDE.reset(token)
        compiling = _compile_total() - compiled
        for clock in clocks:
            clock.seconds += max(0.0, lap.seconds - compiling)
            clock.compile_seconds += compiling
            clock.sections += 1


def _compile_total() -> float:
    """Seconds spent compiling fused kernels in this process so far."""
    return sum(fused.compile_seconds().values())
