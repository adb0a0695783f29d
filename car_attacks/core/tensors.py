"""Small backend-neutral helpers on EagerPy tensors (dtype, gradients, norms)."""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np

Bound = float | ep.Tensor
"""One side of the box: a scalar or a tensor broadcastable to the input."""
Bounds = tuple[Bound, Bound]
"""The box ``(lower, upper)`` that inputs and perturbed points stay in."""
UNIT_BOUNDS: tuple[float, float] = (0.0, 1.0)
"""The default box: images scaled to [0, 1]."""

_LOW_PRECISION = {"float16", "bfloat16"}


def dtype_name(t: ep.Tensor) -> str:
    """The dtype of ``t`` as a short string (``"float32"``, ``"bfloat16"``, ...)."""
    return str(t.dtype).rsplit(".", 1)[-1]


def dtype_limits(t: ep.Tensor) -> tuple[float, float]:
    """The smallest normal and the largest finite value of ``t``'s floating dtype."""
    if isinstance(t, ep.PyTorchTensor):
        import torch

        info: Any = torch.finfo(t.raw.dtype)
    else:
        info = np.finfo(t.raw.dtype)
    return float(info.tiny), float(info.max)


def is_floating(t: ep.Tensor) -> bool:
    """Whether ``t`` holds floating-point values."""
    return dtype_name(t).startswith(("float", "bfloat"))


def compute_dtype(t: ep.Tensor) -> ep.Tensor:
    """``t`` in the dtype the maths runs in: float32 for half/int inputs, else unchanged."""
    if dtype_name(t) in _LOW_PRECISION or not is_floating(t):
        return t.float32()
    return t


def stop_gradient(t: ep.Tensor) -> ep.Tensor:
    """``t`` without its autograd history (PyTorch, JAX, TensorFlow; identity for NumPy)."""
    if isinstance(t, ep.PyTorchTensor):
        return ep.astensor(t.raw.detach())
    if isinstance(t, ep.JAXTensor):
        import jax

        return ep.astensor(jax.lax.stop_gradient(t.raw))
    if isinstance(t, ep.TensorFlowTensor):
        import tensorflow as tf

        return ep.astensor(tf.stop_gradient(t.raw))
    return t


def needs_grad(*tensors: Any) -> bool:
    """Whether a gradient may be taken through any of ``tensors``.

    PyTorch: some input requires grad and grad mode is on. JAX and TensorFlow:
    always assumed (tracing is not observable cheaply). NumPy: never.
    """
    for t in tensors:
        if not isinstance(t, ep.Tensor):
            continue
        if isinstance(t, ep.PyTorchTensor):
            import torch

            if t.raw.requires_grad and torch.is_grad_enabled():
                return True
        elif isinstance(t, ep.JAXTensor | ep.TensorFlowTensor):
            return True
    return False


def batch_view(v: ep.Tensor, ndim: int) -> ep.Tensor:
    """Reshape a per-sample vector of shape ``(N,)`` to ``(N, 1, ..., 1)`` with ``ndim`` dims."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 1))


def flatten_batch(v: ep.Tensor) -> ep.Tensor:
    """Reshape ``(N, ...)`` to ``(N, n)``."""
    return v.reshape((v.shape[0], -1))


def lp_norms(v: ep.Tensor, p: float, *, scaled: bool = False) -> ep.Tensor:
    """Per-sample Lp norm of a batch, shape ``(N,)``: ``(sum_i |v_i|^p)^(1/p)``, ``max_i |v_i|``.

    For p other than 1, 2 and inf the values are divided by their per-sample
    maximum first, so large p neither overflows nor underflows. ``scaled`` does
    that for p = 2 too (two more passes; float32 squares leave its range
    outside about 1e-19 .. 1e19).
    """
    a = flatten_batch(v).abs()
    if p == math.inf:
        return a.max(axis=1)
    if p == 1:
        return a.sum(axis=1)
    if p == 2 and not scaled:
        return a.square().sum(axis=1).sqrt()
    scale = a.max(axis=1, keepdims=True)
    safe = nonzero_or_one(scale)
    return ((a / safe) ** p).sum(axis=1) ** (1.0 / p) * safe[:, 0]


def to_backend(value: Any, like: ep.Tensor, *, cast: bool = True) -> ep.Tensor:
    """Turn a float, a sequence, a NumPy array or a native tensor into an EagerPy tensor
    on the backend (and device) of ``like``, in ``like``'s dtype (``cast=False``: in its
    own floating dtype, float64 for Python and NumPy values)."""
    if isinstance(value, ep.Tensor):
        t = value
    else:
        native = ep.astensor(like.raw) if not isinstance(like, ep.Tensor) else like
        if type(value).__module__.split(".")[0] in ("torch", "jax", "jaxlib", "tensorflow"):
            t = ep.astensor(value)
        else:
            t = ep.from_numpy(native, np.asarray(value, dtype=np.float64))
    if type(t) is not type(like):
        t = ep.from_numpy(like, t.numpy())
    if isinstance(like, ep.PyTorchTensor) and t.raw.device != like.raw.device:
        t = ep.astensor(t.raw.to(like.raw.device))
    if not cast:
        return t if is_floating(t) else t.float64()
    return t.astype(like.dtype)


def float64_bound(bound: Bound) -> Bound:
    """A float bound unchanged, a tensor bound in float64."""
    return bound if isinstance(bound, float) else bound.float64()


def compute_dtype_bound(bound: Bound) -> Bound:
    """A float bound unchanged, a tensor bound in the dtype the maths runs in
    (:func:`compute_dtype`)."""
    return bound if isinstance(bound, float) else compute_dtype(bound)


def detached_bound(bound: Bound) -> Bound:
    """A float bound unchanged, a tensor bound without its autograd history."""
    return bound if isinstance(bound, float) else stop_gradient(bound)


def nonzero_or_one(t: ep.Tensor) -> ep.Tensor:
    """``t`` where positive, else 1: a divisor that cannot be 0."""
    return ep.where(t > 0, t, ep.ones_like(t))


def clip_to_bounds(v: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """``min(max(v, lo), hi)`` for float or tensor bounds."""
    if isinstance(lo, float) and isinstance(hi, float):
        return v.clip(lo, hi)
    return ep.minimum(ep.maximum(v, lo), hi)


def room_along(x: ep.Tensor, delta: ep.Tensor, lo: Bound, hi: Bound) -> ep.Tensor:
    """Distance from ``x`` to the box in the direction of ``delta``, per coordinate:
    ``r_i = hi_i - x_i`` if ``delta_i >= 0`` else ``x_i - lo_i`` (never negative)."""
    room = select(delta >= 0, hi - x, x - lo)
    return room.clip(0.0, math.inf)


def _raw(v: Any) -> Any:
    return v.raw if isinstance(v, ep.Tensor) else v


def select(mask: ep.Tensor, a: ep.Tensor | float, b: ep.Tensor | float) -> ep.Tensor:
    """``where(mask, a, b)`` where a float operand stays a scalar (EagerPy fills a
    full-size tensor for it, one extra pass and copy on the hot path)."""
    if isinstance(mask, ep.PyTorchTensor):
        import torch

        return ep.astensor(torch.where(mask.raw, _raw(a), _raw(b)))
    if isinstance(mask, ep.NumPyTensor):
        return ep.astensor(np.asarray(np.where(mask.raw, _raw(a), _raw(b))))
    return ep.where(mask, a, b)
