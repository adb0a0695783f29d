"""Sharded runs with ``torch.distributed``: ranks, collectives and the share of each rank.

``torchrun --nproc-per-node K -m car_attacks run CONFIG --out DIR`` starts K processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_distributed` joins
them into a process group (``gloo`` on CPU, ``nccl`` when the config's device is
CUDA, one GPU per rank by ``LOCAL_RANK``). The units of work of a run are independent
and seeded per unit (see :mod:`car_attacks.evaluation.runner`), so any split of them over
ranks gives the results of a single process; :func:`shard` deals every method's units
evenly over the ranks.

Only small Python objects travel between ranks (statuses, error messages, failure
lists); results go through the run directory, each rank writing its own files.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["DistributedError", "Distributed", "init_distributed", "rank_device", "shard"]

T = TypeVar("T")

#: How long a rank waits for the others at a collective (the slowest rank's share of the
#: work must finish within it). torchrun stops every rank when one of them dies.
TIMEOUT = _dt.timedelta(hours=24)


class DistributedError(RuntimeError):
    """Another rank failed; the message is that rank's error."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """Whether :func:`init_distributed` created the process group (and closes it)."""

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order (on every rank)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result to every rank.

        If ``fn`` raises, rank 0 re-raises its exception and the other ranks raise
        :class:`DistributedError` with the same message, so no rank waits forever."""
        if not self.active:
            return fn()
        outcome: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = [("ok", fn())]
            except Exception as exc:
                error = exc
                outcome = [("error", f"rank 0: {exc}")]
        torch.distributed.broadcast_object_list(outcome, src=0)
        if error is not None:
            raise error
        status, value = outcome[0]
        if status != "ok":
            raise DistributedError(str(value))
        return value

    def check_all(self, error: BaseException | None) -> None:
        """Collective: raise if any rank passes an error (its own, or the first other's)."""
        messages = self.gather(None if error is None else f"rank {self.rank}: {error}")
        if error is not None:
            raise error
        for message in messages:
            if message is not None:
                raise DistributedError(message)

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str = "cpu") -> Distributed:
    """The process group of a torchrun launch, or a single-process :class:`Distributed`.

    Uses an existing default process group if the caller created one; otherwise, when
    ``WORLD_SIZE > 1``, creates it from torchrun's environment (``nccl`` for a CUDA
    ``device``, else ``gloo``)."""
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def rank_device(device: str, dist: Distributed) -> str:
    """One GPU per rank: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` in sharded runs."""
    if dist.active and device == "cuda":
        return f"cuda:{dist.local_rank}"
    return device


def shard(items: Sequence[T], dist: Distributed, group: Callable[[T], Any] = id) -> list[T]:
    """This rank's share of ``items``, in their order.

    Items are dealt round-robin within each group (``group(item)``, e.g. the method of a
    unit of work), starting one rank further for each new group: every rank gets an
    equal share (within one) of every group, so groups of unequal cost still balance."""
    offsets: dict[Any, int] = {}
    seen: dict[Any, int] = {}
    mine = []
    for item in items:
        key = group(item)
        offset = offsets.setdefault(key, len(offsets))
        j = seen.get(key, 0)
        seen[key] = j + 1
        if (j + offset) % dist.world_size == dist.rank:
            mine.append(item)
    return mine
