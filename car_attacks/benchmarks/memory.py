"""Peak extra memory of a call: tensors allocated by PyTorch ops (CPU or GPU) and NumPy buffers.

On CUDA, :func:`cuda_peak_bytes` reads the caching allocator's peak. CPU PyTorch has no
``torch.cuda.max_memory_allocated``; :class:`TorchPeakMemory` records
the storage of every op output through a ``TorchDispatchMode``. Each new storage (keyed by
its data pointer, so views and in-place results are not counted twice, and storages that
existed before the call are never counted) adds its ``nbytes`` when created and a weakref
finalizer subtracts them when it is freed. The peak of the running total is the peak extra
memory of the call. Workspace that a kernel allocates and frees internally (e.g. inside
``torch.sort``) does not pass through the dispatcher and is not seen.

For NumPy, :func:`numpy_peak_bytes` uses ``tracemalloc``, with which NumPy registers its
data buffers.
"""

from __future__ import annotations

import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "TorchPeakMemory",
    "cuda_peak_bytes",
    "measure_peak_bytes",
    "numpy_peak_bytes",
    "torch_peak_bytes",
]

R = TypeVar("R")


def _storages(tree: Any) -> list[torch.UntypedStorage]:
    """The untyped storages of all tensors in a pytree."""
    leaves, _ = tree_flatten(tree)
    return [t.untyped_storage() for t in leaves if isinstance(t, torch.Tensor)]


class TorchPeakMemory(TorchDispatchMode):
    """Dispatch mode tracking live bytes of storages created by ops while it is active.

    Attributes:
        current: bytes of tracked storages alive now.
        peak: the largest value ``current`` reached.
        allocations: number of distinct storages created.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.allocations = 0
        self._live: dict[int, int] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run ``func`` and account for the storages of its outputs that are new."""
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        for st in _storages(out):
            ptr = st.data_ptr()
            if ptr == 0 or ptr in inputs or ptr in self._live:
                continue  # empty, a view of / in-place on an input, or already counted
            nbytes = st.nbytes()
            self._live[ptr] = nbytes
            self.current += nbytes
            self.allocations += 1
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        """Finalizer: a tracked storage was freed."""
        self.current -= self._live.pop(ptr, 0)


def torch_peak_bytes(fn: Callable[[], R]) -> tuple[R, int]:
    """Call ``fn`` under :class:`TorchPeakMemory`; return its result and the peak bytes."""
    with TorchPeakMemory() as tracker:
        result = fn()
    return result, tracker.peak


def numpy_peak_bytes(fn: Callable[[], R]) -> tuple[R, int]:
    """Call ``fn`` under ``tracemalloc``; return its result and the peak traced bytes.

    Stops tracing afterwards unless it was already running.
    """
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return result, max(0, peak - base)


def cuda_peak_bytes(fn: Callable[[], R]) -> tuple[R, int]:
    """Call ``fn`` on a CUDA device; return its result and the peak of the caching
    allocator's allocated bytes above those allocated before (this sees inside compiled
    kernels, which the dispatch-mode probe cannot)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, max(0, torch.cuda.max_memory_allocated() - base)


def measure_peak_bytes(fn: Callable[[], R], backend: str, device: str = "cpu") -> tuple[R, int]:
    """Peak extra bytes of ``fn()`` for ``backend`` ``"torch"`` (on ``device``) or
    ``"numpy"``."""
    if backend == "torch" and torch.device(device).type == "cuda":
        return cuda_peak_bytes(fn)
    if backend == "torch":
        return torch_peak_bytes(fn)
    if backend == "numpy":
        return numpy_peak_bytes(fn)
    raise ValueError(f"no memory measurement for backend {backend!r}")
