"""When the fused kernels compile: ``CAR_ATTACKS_COMPILE`` = ``0``, ``1`` or ``auto`` (ski
rental: eager until the declined values reach the break-even, compiled from then on)."""

from __future__ import annotations

import pytest
import torch

from car_attacks.core import fused
from car_attacks.core.rescaling import clipping_aware_rescaling


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process state with nothing declined, compiled or failed; tiny problems fusable."""
    monkeypatch.setattr(fused, "_state", {"failed": False, "compile_s": {}, "declined_values": 0})
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand((4, 3, 5, 5), generator=g), torch.randn((4, 3, 5, 5), generator=g)


@pytest.mark.parametrize("value", ["2", "yes", "true", "compile"])
def test_a_bad_value_names_the_variable_and_the_value(monkeypatch, fresh, value):
    monkeypatch.setenv(fused.COMPILE_ENV, value)
    x, delta = _inputs()
    with pytest.raises(ValueError, match=rf"CAR_ATTACKS_COMPILE.*'{value}'"):
        clipping_aware_rescaling(x, delta, eps=1.0, p=2)


@pytest.mark.parametrize("value", ["", "auto", "AUTO", " auto "])
def test_unset_or_auto_is_the_ski_rental(monkeypatch, value):
    monkeypatch.setenv(fused.COMPILE_ENV, value)
    assert fused.compile_mode() == "auto"
    monkeypatch.delenv(fused.COMPILE_ENV)
    assert fused.compile_mode() == "auto"


def test_auto_declines_until_the_break_even_then_compiles(monkeypatch, fresh):
    x, delta = _inputs()
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    monkeypatch.setattr(fused, "COMPILE_BREAK_EVEN_VALUES", 3 * x.numel())
    answers = [fused.fusable(x, delta, 0.0, 1.0) for _ in range(5)]
    assert answers == [False, False, False, True, True]  # declined 3 x numel, then on
    assert fused._state["declined_values"] == 3 * x.numel()  # nothing counted once on
    small = torch.zeros((2, 3))
    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 4)
    fused._state["declined_values"] = 0
    assert not fused.fusable(small, small, 0.0, 1.0)  # not eligible: never counted
    assert fused._state["declined_values"] == 0


def test_auto_gives_the_eager_results_then_the_compiled_ones(monkeypatch, fresh):
    """Before the break-even a call is the eager solve, after it the compiled one, each
    bit for bit; the switch point is fixed by the sizes solved (no clock)."""
    x, delta = _inputs()
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(fused.COMPILE_ENV, mode)
        results[mode] = clipping_aware_rescaling(x, delta, eps=1.5, p=2)
    assert fused._state["declined_values"] == 0  # "0" and "1" never count
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    monkeypatch.setattr(fused, "COMPILE_BREAK_EVEN_VALUES", 2 * x.numel())
    calls = [clipping_aware_rescaling(x, delta, eps=1.5, p=2) for _ in range(3)]
    assert torch.equal(calls[0], results["0"])  # declined by the checks and the solve
    assert torch.equal(calls[1], results["1"])
    assert torch.equal(calls[2], results["1"])
    torch.testing.assert_close(results["1"], results["0"], rtol=1e-5, atol=1e-6)


def test_never_counts_after_a_compiler_failure(monkeypatch, fresh):
    x, delta = _inputs()
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    fused._state["failed"] = True
    assert not fused.fusable(x, delta, 0.0, 1.0)
    assert fused._state["declined_values"] == 0
    assert not fused.compile_enabled()


def test_compile_seconds_include_the_first_read_of_the_graph_counter(monkeypatch, fresh):
    """The first read of dynamo's counter imports dynamo (about a second): it belongs to the
    compile time, not to the rescaling time of the unit that compiled first."""
    import time

    def slow_counter() -> int:
        time.sleep(0.2)
        return 0

    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    monkeypatch.setattr(fused, "_compiled_graphs", slow_counter)
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic: fn)  # no compile time

    def _doubled(v: torch.Tensor) -> torch.Tensor:
        return 2 * v

    kernel = fused._Kernel(_doubled)
    assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
    assert fused.compile_seconds()["_doubled"] >= 0.19  # the counter read is inside
