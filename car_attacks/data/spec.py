"""A named data set (:class:`DatasetSpec`) and how its files are read (:class:`DataSource`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..core.tensors import UNIT_BOUNDS

__all__ = ["UNIT_BOUNDS", "Batch", "DataSource", "DatasetSpec"]

#: float32 images ``(N, C, H, W)`` in [0, 1] and int64 labels ``(N,)``.
Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource:
    """How one named data set finds its files, counts and reads samples."""

    splits: tuple[str, ...] = ("test",)

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        """Number of samples in ``split`` (reads headers or files)."""
        raise NotImplementedError

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        """Samples ``start .. start + n - 1`` of ``split``, in file order."""
        raise NotImplementedError

    def available(self, spec: DatasetSpec, root: str | None) -> tuple[bool, str]:
        """``(True, "")`` if the first split can be counted, else ``(False, reason)``."""
        try:
            self.size(spec, spec.splits[0], root, False)
        except (FileNotFoundError, ValueError) as exc:
            return False, str(exc)
        return True, ""


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A named data set: shapes, bounds, known sizes and whether it needs user files.

    ``size`` is the number of samples in the default ``test`` split, or ``None`` when it
    is only known once the files are found (see :func:`car_attacks.data.dataset_size`).
    ``offline`` says whether it loads with no ``root`` and no network.
    """

    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, int, int]
    size: int | None
    offline: bool
    bounds: tuple[float, float] = UNIT_BOUNDS
    splits: tuple[str, ...] = ("test",)
    #: Known sizes per split (from the data set's definition; the files are what count).
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    source: DataSource = field(default_factory=DataSource, repr=False, compare=False)

    def available(self, root: str | None = None) -> tuple[bool, str]:
        """``(True, "")`` if the data set loads (from ``root``), else ``(False, reason)``."""
        return self.source.available(self, root)

    def check_split(self, split: str) -> None:
        """``ValueError`` unless ``split`` is one of :attr:`splits`."""
        if split not in self.splits:
            raise ValueError(
                f"dataset {self.name} has no split {split!r}; splits: {', '.join(self.splits)}"
            )

    def check_request(self, split: str, total: int, start: int, n: int) -> None:
        """``ValueError`` unless samples ``start .. start + n - 1`` exist among ``total``."""
        if start + n > total:
            at = f" starting at start={start}" if start else ""
            raise ValueError(
                f"dataset {self.name} has only {total} samples in split {split}, "
                f"asked for n={n}{at}"
            )
