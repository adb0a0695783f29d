"""Eval-mode cache for weights derived from parameters (orthogonalised kernels).

In training mode the derived weight is recomputed on every call (with gradient).  In
eval mode it is computed once without gradient and reused until a parameter changes:
the cache key holds each parameter's storage pointer, in-place version counter,
dtype and device, so optimiser steps, ``load_state_dict``, ``.to()`` and
``.double()`` all invalidate it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn


def _param_key(module: nn.Module) -> tuple[Hashable, ...]:
    return tuple(
        (name, p.data_ptr(), int(getattr(p, "_version", 0)), p.dtype, p.device, tuple(p.shape))
        for name, p in module.named_parameters(recurse=False)
    )


class EvalCache:
    """Holds one tensor computed from a module's own parameters (see module docstring)."""

    def __init__(self) -> None:
        self._key: tuple[Hashable, ...] | None = None
        self._value: Tensor | None = None

    def clear(self) -> None:
        """Forget the cached tensor."""
        self._key = None
        self._value = None

    def get(self, module: nn.Module, compute: Callable[[], Tensor]) -> Tensor:
        """Return ``compute()``, cached while ``module`` is in eval mode and unchanged."""
        if module.training:
            self.clear()
            return compute()
        key = _param_key(module)
        if self._value is None or self._key != key:
            # Outside inference mode so the cached tensor can be saved for backward
            # later (gradients with respect to the input in eval mode).
            with torch.inference_mode(False), torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value

    def __getstate__(self) -> dict[str, object]:
        # Do not pickle / deep-copy the cached tensor; it is cheap to recompute.
        return {"_key": None, "_value": None}
