"""Input checks shared by the public maths API and the attacks.

Every check raises :class:`ValueError` naming the argument and the offending
value, so a bad call fails loudly instead of returning a silently wrong scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np
import torch

from . import fused
from .tensors import (
    Bound,
    Bounds,
    compute_dtype,
    dtype_limits,
    dtype_name,
    flatten_batch,
    to_backend,
)

BOUNDS_TOLERANCE = 1e-5
"""Relative tolerance (of ``hi - lo``) for inputs that sit slightly outside the bounds."""


@dataclass(frozen=True, kw_only=True)
class CheckedArguments:
    """The arguments of a public maths function, checked, in the compute dtype."""

    x: ep.Tensor
    """The batch of points inside the bounds, ``(N, ...)``."""
    other: ep.Tensor
    """The second batch of ``x``'s shape (the direction ``delta``, or the point ``z``)."""
    lo: Bound
    hi: Bound
    eps: ep.Tensor
    """Per-sample targets, ``(N,)``."""
    p: float
    stats: fused.InputStats | None = None
    """What the fused pass over the inputs found, where it ran."""


def check_arguments(
    x: ep.Tensor,
    other: ep.Tensor,
    eps: Any,
    p: Any,
    bounds: Any,
    names: tuple[str, str],
    *,
    difference: bool = False,
    first_pass: bool = False,
) -> CheckedArguments:
    """Check ``p``, the batches ``x`` and ``other`` (named ``names``), the bounds, ``x`` inside
    them, and ``eps``, in that order; return them in the compute dtype of ``x`` (with the span
    of ``other``, or of ``other - x`` if ``difference``, where the fused checks ran, and with
    ``first_pass`` the first pass of the rescaling solve for p = 1, 2 or inf, ``other`` being
    ``delta``: see :func:`~car_attacks.core.fused.checked_first_pass`)."""
    name_x, name_other = names
    p_ = parse_p(p)
    solve_p = p_ if first_pass and not difference else None
    stats, eps_ = _fused_stats(x, other, eps, bounds, difference, solve_p)
    if stats is None:  # the checks one by one, raising the first that fails
        check_batch(x, name_x)
        check_batch(other, name_other)
        check_same_shape(x, other, name_x, name_other)
    xc = compute_dtype(x)
    oc = cast_like(compute_dtype(other), xc, name_other)
    lo, hi = as_bounds(bounds, xc)
    if stats is None:
        check_in_bounds(xc, lo, hi, name_x)
    if eps_ is None:
        eps_ = as_eps(eps, xc)
    return CheckedArguments(x=xc, other=oc, lo=lo, hi=hi, eps=eps_, p=p_, stats=stats)


def _fused_stats(
    x: ep.Tensor,
    other: ep.Tensor,
    eps: Any,
    bounds: Any,
    difference: bool,
    solve_p: float | None,
) -> tuple[fused.InputStats | None, ep.Tensor | None]:
    """The finiteness and in-bounds checks (and the spans :func:`needs_float64
    <car_attacks.core.rescaling.needs_float64>` uses) in one fused pass, where it applies
    (PyTorch float32/float64 batches of one shape, float bounds) and every value passes;
    else ``None`` (the caller runs the checks one by one). For ``solve_p`` of 1, 2 or inf the
    pass is also the first of the rescaling solve, and ``eps`` is checked before it, or in
    it where it is a PyTorch tensor of shape ``(N,)`` in ``x``'s dtype (and returned); a bad
    ``eps`` leaves every check to the caller, which raises in order."""
    if not (isinstance(x, ep.PyTorchTensor) and isinstance(other, ep.PyTorchTensor)):
        return None, None
    try:
        lo_raw, hi_raw = bounds
    except (TypeError, ValueError):
        return None, None
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in (lo_raw, hi_raw)):
        return None, None
    lo, hi = _as_float(lo_raw), _as_float(hi_raw)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and x.ndim >= 1):
        return None, None
    if tuple(x.shape) != tuple(other.shape) or x.shape[0] < 1:
        return None, None
    if not fused.fusable(x.raw, other.raw, lo, hi):
        return None, None
    tol = (hi - lo) * BOUNDS_TOLERANCE
    if solve_p in (1.0, 2.0, math.inf):
        eps_ = _per_sample_tensor(eps, x)  # checked in the fused pass
        if eps_ is None:
            try:
                eps_ = as_eps(eps, x)
            except ValueError:
                return None, None
        stats = fused.checked_first_pass(
            x.raw, other.raw, eps_.raw, p=solve_p, lo=lo, hi=hi, below=lo - tol, above=hi + tol
        )
        return (stats, eps_) if stats.clean else (None, None)
    stats = fused.input_stats(x.raw, other.raw, lo - tol, hi + tol, difference=difference)
    return (stats, None) if stats.clean else (None, None)


def _per_sample_tensor(eps: Any, like: ep.PyTorchTensor) -> ep.Tensor | None:
    """``eps`` as it is where :func:`as_eps` would return it unchanged but for its value
    checks (a PyTorch tensor of shape ``(N,)`` in ``like``'s dtype and device), else
    ``None``."""
    if not isinstance(eps, torch.Tensor | ep.PyTorchTensor):
        return None
    raw = eps.raw if isinstance(eps, ep.PyTorchTensor) else eps
    matches = raw.dtype == like.raw.dtype and raw.device == like.raw.device
    return ep.astensor(raw) if matches and tuple(raw.shape) == (like.shape[0],) else None


@dataclass(frozen=True, kw_only=True)
class PlainCall:
    """A public function's common call, parsed by :func:`plain_call` (its values unchecked)."""

    p: float
    lo: float
    hi: float
    eps: torch.Tensor
    """``(N,)`` in the dtype and on the device of ``x``."""
    below: float
    """``x`` must lie in ``[below, above]``: the bounds widened by :data:`BOUNDS_TOLERANCE`."""
    above: float

    def checks(self, like: torch.Tensor) -> fused.CheckLimits:
        """The limits of the checks a kernel runs in its first pass, in ``like``'s dtype."""
        return fused.CheckLimits.of(like, self.lo, self.hi, below=self.below, above=self.above)


def plain_call(x: Any, other: Any, eps: Any, p: Any, bounds: Any) -> PlainCall | None:
    """The fast paths' common call of a public function, parsed without a pass over the data:
    ``x`` and ``other`` plain PyTorch tensors of one shape taking no gradient, p = 1, 2 or
    inf, bounds as :func:`plain_float_bounds` takes them and ``eps`` as :func:`plain_eps`
    does; ``None`` for any other call (the general path then checks it, in its order).
    ``p`` is parsed first, as the general path does, so a bad ``p`` raises here."""
    if type(x) is not torch.Tensor or type(other) is not torch.Tensor:
        return None
    p_ = parse_p(p)
    if p_ not in (1.0, 2.0, math.inf) or x.shape != other.shape:
        return None
    lo_hi = plain_float_bounds(bounds, x.dtype)
    if lo_hi is None:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or other.requires_grad):
        return None
    eps_t = plain_eps(eps, x)
    if eps_t is None:
        return None
    lo, hi = lo_hi
    tol = (hi - lo) * BOUNDS_TOLERANCE
    return PlainCall(p=p_, lo=lo, hi=hi, eps=eps_t, below=lo - tol, above=hi + tol)


def numpy_views(x: Any, other: Any, eps: Any) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
    """Zero-copy PyTorch views of NumPy arrays ``x`` and ``other`` (and of ``eps`` where it
    is an array), for the fast paths of the public functions to run on and give back as
    NumPy arrays (``Tensor.numpy()``, again without a copy); ``None`` unless ``x`` and
    ``other`` are writable float32/float64 NumPy arrays PyTorch can view (no negative
    strides)."""
    arrays = (x, other, eps) if isinstance(eps, np.ndarray) else (x, other)
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype not in (np.float32, np.float64):
            return None
        if not a.flags.writeable:  # (PyTorch warns on views of read-only arrays)
            return None
    try:
        views = [torch.from_numpy(a) for a in arrays]
    except ValueError:  # negative strides
        return None
    return views[0], views[1], views[2] if len(views) == 3 else eps


def plain_float_bounds(bounds: Any, dtype: torch.dtype) -> tuple[float, float] | None:
    """``bounds`` as floats where they are a pair of Python numbers that :func:`as_bounds`
    accepts for ``dtype``, else ``None`` (the fast paths of the public functions)."""
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        return None
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        return None
    try:
        lo, hi = float(bounds[0]), float(bounds[1])
    except OverflowError:
        return None
    largest = torch.finfo(dtype).max
    if not (-largest <= lo < hi <= largest and hi - lo <= largest):
        return None
    return lo, hi


def plain_eps(eps: Any, like: torch.Tensor) -> torch.Tensor | None:
    """``eps`` as :func:`as_eps` gives it where it is a float
    it accepts for ``like`` (filled to ``(N,)``) or a tensor ``(N,)`` of ``like``'s dtype and
    device taking no gradient (its values are checked in the fused pass), else ``None``."""
    n = like.shape[0]
    if type(eps) is float or type(eps) is int:
        try:
            value = float(eps)
        except OverflowError:
            return None
        if not 0 <= value <= torch.finfo(like.dtype).max:  # NaN fails too
            return None
        return torch.full((n,), value, dtype=like.dtype, device=like.device)
    if type(eps) is not torch.Tensor or tuple(eps.shape) != (n,):
        return None
    if eps.dtype != like.dtype or eps.device != like.device:
        return None
    return None if eps.requires_grad and torch.is_grad_enabled() else eps


def parse_p(p: Any) -> float:
    """The norm order as a float in ``[1, inf]``; accepts ``"inf"`` and ``math.inf``."""
    if isinstance(p, str):
        try:
            value = float(p)
        except ValueError:
            raise ValueError(f"p must be a number >= 1 or 'inf', got p={p!r}") from None
    elif isinstance(p, bool) or not isinstance(p, int | float):
        raise ValueError(f"p must be a number >= 1 or 'inf', got p={p!r}")
    else:
        value = float(p)
    if math.isnan(value) or value < 1:
        raise ValueError(f"p must be >= 1 (a norm), got p={p!r}")
    return value


def as_tensors(**arrays: Any) -> tuple[list[ep.Tensor], Callable[..., Any]]:
    """``ep.astensors_`` of the keyword arguments; ValueError naming one that is no array."""
    for name, value in arrays.items():
        try:
            ep.astensor(value)
        except ValueError:
            raise ValueError(
                f"{name} must be a NumPy, PyTorch, JAX or TensorFlow array, got "
                f"{type(value).__name__}"
            ) from None
    tensors, restore = ep.astensors_(*arrays.values())
    return list(tensors), restore


def check_batch(x: ep.Tensor, name: str) -> None:
    """``x`` is a non-empty batch ``(N, ...)`` of finite real values."""
    if dtype_name(x).startswith("complex"):
        raise ValueError(f"{name} must be real, got dtype {dtype_name(x)}")
    if x.ndim < 1:
        raise ValueError(f"{name} must be a batch of shape (N, ...), got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); N must be >= 1")
    if math.prod(x.shape) == 0:
        raise ValueError(f"{name} has no values per sample (shape {tuple(x.shape)})")
    check_finite(x, name)


def check_finite(t: ep.Tensor, name: str) -> None:
    """``t`` contains no NaN or infinity."""
    bad = ep.logical_or(ep.isnan(t), ep.isinf(t))
    if bad.any().item():
        n_bad = int(bad.astype(t.dtype).sum().item())
        first = t.reshape((-1,))[bad.reshape((-1,))][0].item()
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (e.g. {first})")


def check_same_shape(a: ep.Tensor, b: ep.Tensor, name_a: str, name_b: str) -> None:
    """``a`` and ``b`` are arrays of the same kind (NumPy, PyTorch, ...) with identical shapes."""
    if type(a) is not type(b):
        raise ValueError(
            f"{name_a} and {name_b} must be the same kind of array, got "
            f"{type(a.raw).__name__} and {type(b.raw).__name__}"
        )
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def as_bounds(bounds: Any, like: ep.Tensor) -> Bounds:
    """Parse ``bounds = (lo, hi)``: floats, or tensors broadcastable to ``like``.

    Returns floats for scalar bounds (the fast path) and EagerPy tensors of
    ``like``'s backend and dtype (float32 or float64) otherwise. The bounds and
    their distance must be finite in that dtype.
    """
    try:
        lo_raw, hi_raw = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lower, upper), got bounds={bounds!r}") from None
    parsed: list[Bound] = []
    for raw, label in ((lo_raw, "lower"), (hi_raw, "upper")):
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = _as_float(raw)
            if not math.isfinite(value) or abs(value) > dtype_limits(like)[1]:
                raise ValueError(
                    f"bounds {label} must be finite in {dtype_name(like)}, got bounds={bounds!r}"
                )
            parsed.append(value)
            continue
        t = as_tensor_arg(raw, like, f"bounds ({label})")
        try:
            broadcast = np.broadcast_shapes(tuple(t.shape), tuple(like.shape))
        except ValueError:
            broadcast = None
        if broadcast != tuple(like.shape):
            raise ValueError(
                f"bounds {label} of shape {tuple(t.shape)} does not broadcast to "
                f"shape {tuple(like.shape)}"
            )
        parsed.append(float(t.item()) if t.ndim == 0 else t)
    lo, hi = parsed
    gap = hi - lo
    if isinstance(gap, float):
        not_ordered, too_wide = gap <= 0, gap > dtype_limits(like)[1]
    else:
        not_ordered, too_wide = bool((gap <= 0).any().item()), bool(ep.isinf(gap).any().item())
    if not_ordered:
        raise ValueError(f"bounds must satisfy lower < upper everywhere, got bounds={bounds!r}")
    if too_wide:
        raise ValueError(
            f"bounds are too far apart for {dtype_name(like)} (upper - lower overflows), "
            f"got bounds={bounds!r}"
        )
    return lo, hi


def check_in_bounds(x: ep.Tensor, lo: Bound, hi: Bound, name: str) -> None:
    """Every value of ``x`` lies in ``[lo, hi]`` up to ``BOUNDS_TOLERANCE * (hi - lo)``."""
    tol = (hi - lo) * BOUNDS_TOLERANCE
    below = x < lo - tol
    above = x > hi + tol
    outside = ep.logical_or(below, above)
    if outside.any().item():
        flat = flatten_batch(x)
        worst = float(flat.min().item()) if below.any().item() else float(flat.max().item())
        raise ValueError(
            f"{name} has values outside the bounds (e.g. {worst}); "
            f"clip {name} to the bounds or pass the bounds your data uses"
        )


def as_eps(eps: Any, like: ep.Tensor, name: str = "eps") -> ep.Tensor:
    """Per-sample targets ``(N,)`` from a float or a length-N tensor; finite in ``like``'s
    dtype (float32 or float64) and >= 0."""
    n = like.shape[0]
    if isinstance(eps, int | float) and not isinstance(eps, bool):
        value = _as_float(eps)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {name}={eps!r}")
        if value > dtype_limits(like)[1]:
            raise ValueError(f"{name} is too large for {dtype_name(like)}, got {name}={eps!r}")
        return ep.full(like, (n,), value)
    t = as_tensor_arg(eps, like, name)
    if t.ndim == 0:
        t = t.reshape((1,))
    if t.ndim != 1 or t.shape[0] not in (1, n):
        raise ValueError(
            f"{name} must be a float or have shape ({n},) (one per sample), got shape "
            f"{tuple(t.shape)}"
        )
    if (t < 0).any().item():
        raise ValueError(f"{name} must be >= 0, got {name} with minimum {t.min().item()}")
    if t.shape[0] == 1 and n != 1:
        t = ep.full(like, (n,), 1.0) * t
    return t


def as_tensor_arg(value: Any, like: ep.Tensor, name: str) -> ep.Tensor:
    """``value`` (a number, a sequence, an array or a tensor) as a finite tensor on
    ``like``'s backend in ``like``'s dtype."""
    try:
        t = to_backend(value, like, cast=False)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be numbers, got {name}={value!r}") from None
    check_finite(t, name)
    return cast_like(t, like, name)


def cast_like(t: ep.Tensor, like: ep.Tensor, name: str) -> ep.Tensor:
    """The finite ``t`` in ``like``'s dtype; its values must not overflow that dtype."""
    if t.dtype == like.dtype:
        return t
    cast = t.astype(like.dtype)
    if ep.isinf(cast).any().item():
        largest = float(t.abs().max().item())
        raise ValueError(
            f"{name} has values too large for {dtype_name(like)} (the dtype of the "
            f"computation), e.g. {largest:g}"
        )
    return cast


def _as_float(value: float) -> float:
    """A Python number as a float; integers too large for a float become infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf
