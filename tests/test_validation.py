"""Bad input raises ValueError whose message names the argument and the offending value."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import car_attacks


def car(*args, **kwargs):
    return car_attacks.clipping_aware_rescaling(*args, **kwargs)


def proj(*args, **kwargs):
    return car_attacks.project_lp_ball_box(*args, **kwargs)


def word(name: str) -> str:
    """Regex for ``name`` as a whole identifier (``x`` must not match ``x0`` or ``max``)."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


@contextmanager
def raises_naming(arg: str, value: str | None = None):
    """ValueError whose message names ``arg`` and (if given) matches the regex ``value``."""
    with pytest.raises(ValueError, match=word(arg)) as info:
        yield info
    if value is not None:
        msg = str(info.value)
        assert re.search(value, msg, re.IGNORECASE), f"{value!r} not in message {msg!r}"


FRAMES = ["torch", "numpy"]


def data(frame: str, n: int = 2, shape=(3, 4, 4), seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.9, (n, *shape))
    d = rng.normal(size=(n, *shape))
    if frame == "torch":
        return torch.tensor(x), torch.tensor(d)
    return x, d


def put(t, index, value):
    t = t.clone() if isinstance(t, torch.Tensor) else t.copy()
    t[index] = value
    return t


def arr(frame, values):
    return torch.tensor(values, dtype=torch.float64) if frame == "torch" else np.asarray(values)


# --------------------------------------------------------------------------- rescaling


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(
    ("bad", "value"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")]
)
def test_non_finite_x(frame, bad, value):
    x, d = data(frame)
    with raises_naming("x", value):
        car(put(x, (1, 0, 2, 2), bad), d, 0.5)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(
    ("bad", "value"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")]
)
def test_non_finite_delta(frame, bad, value):
    x, d = data(frame)
    with raises_naming("delta", value):
        car(x, put(d, (0, 1, 0, 3), bad), 0.5)


@pytest.mark.parametrize(("bad", "value"), [(math.nan, "nan"), (math.inf, "inf")])
def test_non_finite_eps_float(bad, value):
    x, d = data("torch")
    with raises_naming("eps", value):
        car(x, d, bad)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(("bad", "value"), [(math.nan, "nan"), (math.inf, "inf")])
def test_non_finite_eps_tensor(frame, bad, value):
    x, d = data(frame)
    with raises_naming("eps", value):
        car(x, d, arr(frame, [0.5, bad]))


@pytest.mark.parametrize(
    ("bounds", "value"),
    [((math.nan, 1.0), "nan"), ((0.0, math.inf), "inf"), ((-math.inf, 1.0), "inf")],
)
def test_non_finite_float_bounds(bounds, value):
    x, d = data("torch")
    with raises_naming("bounds", value):
        car(x, d, 0.5, bounds=bounds)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(("bad", "value"), [(math.nan, "nan"), (math.inf, "inf")])
def test_non_finite_tensor_bounds(frame, bad, value):
    x, d = data(frame)
    lo = arr(frame, [0.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    hi = put(arr(frame, [1.0, 1.0, 1.0]), 1, bad).reshape(1, 3, 1, 1)
    with raises_naming("bounds", value):
        car(x, d, 0.5, bounds=(lo, hi))


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(("bad", "value"), [(1.5, r"1\.5"), (-0.25, r"-0\.25")])
def test_x_outside_bounds(frame, bad, value):
    x, d = data(frame)
    with raises_naming("x", value):
        car(put(x, (1, 2, 0, 1), bad), d, 0.5, bounds=(0.0, 1.0))


@pytest.mark.parametrize("frame", FRAMES)
def test_x_outside_per_channel_bounds(frame):
    x, d = data(frame)
    lo = arr(frame, [0.0, 0.2, 0.0]).reshape(1, 3, 1, 1)
    hi = arr(frame, [1.0, 1.0, 1.0]).reshape(1, 3, 1, 1)
    x = put(x, (0, 1, 1, 1), 0.05)  # inside [0, 1] but below channel 1's lower bound 0.2
    with raises_naming("x", r"0\.05"):
        car(x, d, 0.5, bounds=(lo, hi))


def test_x_outside_bounds_also_for_large_boxes():
    x, d = data("torch")
    with raises_naming("x", r"300"):
        car(put(x * 255, (0, 0, 0, 0), 300.0), d, 0.5, bounds=(0.0, 255.0))


def test_x_within_rounding_of_the_bounds_is_accepted():
    """'beyond a small tolerance': float noise at the bounds must not raise."""
    x, d = data("torch")
    x = put(put(x, (0, 0, 0, 0), 1.0 + 1e-12), (1, 0, 0, 0), -1e-12)
    eta = car(x, d, 0.5)
    assert torch.isfinite(eta).all()
    x32 = put(put(x.float(), (0, 0, 0, 1), 1.0 + 1.2e-7), (0, 0, 0, 2), -6e-8)
    assert torch.isfinite(car(x32, d.float(), 0.5)).all()


@pytest.mark.parametrize("frame", FRAMES)
def test_negative_eps(frame):
    x, d = data(frame)
    with raises_naming("eps", r"-0\.5"):
        car(x, d, -0.5)
    with raises_naming("eps", r"-0\.25"):
        car(x, d, arr(frame, [0.5, -0.25]))


@pytest.mark.parametrize(
    ("p", "value"),
    [
        (0.5, r"0\.5"),
        (0, r"\b0\b"),
        (-2, r"-2"),
        (0.999, r"0\.999"),
        ("foo", "foo"),
        ("-inf", "-inf"),
        (math.nan, "nan"),
    ],
)
def test_bad_p(p, value):
    x, d = data("torch")
    with raises_naming("p", value):
        car(x, d, 0.5, p=p)


@pytest.mark.parametrize(
    ("bounds", "value"),
    [((1.0, 0.0), r"1(\.0)?, 0(\.0)?"), ((0.5, 0.5), r"0\.5, 0\.5"), ((2.0, -3.0), r"2(\.0)?, -3")],
)
def test_lower_not_below_upper(bounds, value):
    x, d = data("torch")
    x = x * 0 + 0.5  # inside every tested range
    with raises_naming("bounds", value):
        car(x, d, 0.5, bounds=bounds)


@pytest.mark.parametrize("frame", FRAMES)
def test_lower_not_below_upper_tensor(frame):
    x, d = data(frame)
    lo = arr(frame, [0.0, 0.6, 0.0]).reshape(1, 3, 1, 1)
    hi = arr(frame, [1.0, 0.6, 1.0]).reshape(1, 3, 1, 1)
    with raises_naming("bounds"):
        car(x, d, 0.5, bounds=(lo, hi))


@pytest.mark.parametrize("frame", FRAMES)
def test_shape_mismatch(frame):
    x, _ = data(frame)
    _, d = data(frame, shape=(3, 4, 5))
    with raises_naming("delta", r"\(2, 3, 4, 5\)"):
        car(x, d, 0.5)
    _, d3 = data(frame, n=3)
    with raises_naming("delta", r"\(3, 3, 4, 4\)"):
        car(x, d3, 0.5)


@pytest.mark.parametrize("frame", FRAMES)
def test_empty_batch(frame):
    x, d = data(frame, n=0)
    with raises_naming("x", r"\b0\b|empty"):
        car(x, d, 0.5)


@pytest.mark.parametrize("method", ["foo", "Newton", "", "exact"])
def test_unknown_method(method):
    x, d = data("torch")
    with raises_naming("method", re.escape(repr(method)) if method else "method"):
        car(x, d, 0.5, method=method)


def test_eps_tensor_of_wrong_length():
    x, d = data("torch")
    with raises_naming("eps", r"\b3\b"):
        car(x, d, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "arg", "value"),
    [
        ({"p": 0.5}, "p", r"0\.5"),
        ({"bounds": (1.0, 0.0)}, "bounds", None),
    ],
)
def test_reachable_norm_validates(kwargs, arg, value):
    x, d = data("torch")
    with raises_naming(arg, value):
        car_attacks.reachable_norm(x, d, **kwargs)
    with raises_naming("x", "nan"):
        car_attacks.reachable_norm(put(x, (0, 0, 0, 0), math.nan), d)
    with raises_naming("x", r"1\.5"):
        car_attacks.reachable_norm(put(x, (0, 0, 0, 0), 1.5), d)


def test_validation_errors_are_raised_before_any_work_for_every_method():
    x, d = data("torch")
    for method in ("newton", "sort", "bisection", "naive"):
        with raises_naming("eps"):
            car(x, d, -1.0, method=method)
        with raises_naming("x"):
            car(put(x, (0, 0, 0, 0), math.nan), d, 0.5, method=method)


# --------------------------------------------------------------------------- projection


@pytest.mark.parametrize("frame", FRAMES)
def test_projection_x0_outside_bounds(frame):
    x, z = data(frame)
    with raises_naming("x0", r"1\.5"):
        proj(put(x, (0, 0, 0, 0), 1.5), z, 0.5, p=2)


@pytest.mark.parametrize(
    ("p", "value"), [(3, r"\b3\b"), (1.5, r"1\.5"), (0.5, r"0\.5"), ("foo", "foo")]
)
def test_projection_bad_p(p, value):
    x, z = data("torch")
    with raises_naming("p", value):
        proj(x, z, 0.5, p=p)


@pytest.mark.parametrize("frame", FRAMES)
def test_projection_shape_mismatch(frame):
    x, _ = data(frame)
    _, z = data(frame, shape=(3, 4, 5))
    with raises_naming("z", r"\(2, 3, 4, 5\)"):
        proj(x, z, 0.5, p=2)


@pytest.mark.parametrize("frame", FRAMES)
def test_projection_negative_eps(frame):
    x, z = data(frame)
    with raises_naming("eps", r"-0\.5"):
        proj(x, z, -0.5, p=1)
    with raises_naming("eps", r"-0\.5"):
        proj(x, z, arr(frame, [0.1, -0.5]), p="inf")


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize(("bad", "value"), [(math.nan, "nan"), (math.inf, "inf")])
def test_projection_non_finite(frame, bad, value):
    x, z = data(frame)
    with raises_naming("z", value):
        proj(x, put(z, (1, 2, 3, 3), bad), 0.5, p=2)
    with raises_naming("x0", value):
        proj(put(x, (1, 2, 3, 3), bad), z, 0.5, p=2)


def test_projection_bad_bounds_and_empty_batch():
    x, z = data("torch")
    with raises_naming("bounds"):
        proj(x * 0 + 0.5, z, 0.5, p=2, bounds=(1.0, 0.0))
    x0, z0 = data("torch", n=0)
    with raises_naming("x0", r"\b0\b|empty"):
        proj(x0, z0, 0.5, p=2)
