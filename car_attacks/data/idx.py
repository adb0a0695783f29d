"""MNIST-style IDX files (gzipped or not), e.g. Fashion-MNIST."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable

import numpy as np
import torch

from .images import check_dir, expand_root, to_tensor
from .spec import Batch, DatasetSpec, DataSource

__all__ = ["IdxFiles", "read_idx", "read_idx_shape"]

#: What reading a damaged (gzipped) file raises: BadGzipFile is an OSError.
_READ_ERRORS = (OSError, EOFError, zlib.error)

#: File name prefix of each split (``<prefix>-images-idx3-ubyte[.gz]``).
_PREFIX = {"train": "train", "test": "t10k"}


def _open_maybe_gzip(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


def _idx_header(f: io.BufferedIOBase, path: str) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise ValueError(f"{path} is truncated: incomplete IDX header")
    return struct.unpack(f">{ndim}I", dims)


def read_idx_shape(path: str, ndim: int) -> tuple[int, ...]:
    """The shape in an IDX file's header, which must have ``ndim`` dimensions."""
    try:
        with _open_maybe_gzip(path) as f:
            shape = _idx_header(f, path)
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} cannot be read: {exc or type(exc).__name__}") from None
    if len(shape) != ndim:
        raise ValueError(f"{path} holds {len(shape)}-dimensional IDX data, expected {ndim}")
    return shape


def read_idx(path: str, start: int, n: int) -> np.ndarray:
    """Items ``start .. start + n - 1`` of an unsigned-byte IDX file, as uint8."""
    try:
        with _open_maybe_gzip(path) as f:
            shape = _idx_header(f, path)
            item = int(np.prod(shape[1:], dtype=np.int64))
            f.seek(start * item, os.SEEK_CUR)
            raw = f.read(n * item)
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} cannot be read: {exc or type(exc).__name__}") from None
    if len(raw) != n * item:
        raise ValueError(f"{path} is truncated: expected {n * item} bytes at sample {start}")
    return np.frombuffer(raw, dtype=np.uint8).reshape((n, *shape[1:]))


class IdxFiles(DataSource):
    """MNIST-style IDX files (gzipped or not) in a flat folder or torchvision's layout.

    ``fetch(root, train)`` downloads a split into ``root`` (torchvision's layout
    ``<root>/<tv_folder>/raw``) when ``download=True``.
    """

    splits = ("train", "test")

    def __init__(
        self,
        *,
        name: str,
        tv_folder: str,
        default_root: str | None,
        fetch: Callable[[str, bool], None],
    ) -> None:
        self.name, self.tv_folder, self.default_root = name, tv_folder, default_root
        self.fetch = fetch

    def _paths(self, root: str | None, split: str, download: bool) -> tuple[str, str]:
        root = expand_root(root) or self.default_root
        if root is None:
            raise FileNotFoundError(f"dataset {self.name} needs root=<folder with IDX files>")
        if download:
            self.fetch(root, split == "train")
        check_dir(root, "a folder with IDX files")
        folders = [root, os.path.join(root, self.tv_folder, "raw"), os.path.join(root, "raw")]
        prefix = _PREFIX[split]
        for folder in folders:
            found = []
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
                base = os.path.join(folder, f"{prefix}-{kind}")
                found += [p for p in (base, base + ".gz") if os.path.isfile(p)][:1]
            if len(found) == 2:
                return found[0], found[1]
        raise FileNotFoundError(
            f"{root}: no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] "
            f"(looked in {', '.join(folders)})"
        )

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        images, labels = self._paths(root, split, download)
        counts = [read_idx_shape(images, 3)[0], read_idx_shape(labels, 1)[0]]
        if counts[0] != counts[1]:
            raise ValueError(f"{images} has {counts[0]} images but {labels} {counts[1]} labels")
        return counts[0]

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        total = self.size(spec, split, root, download)
        spec.check_request(split, total, start, n)
        images, labels = self._paths(root, split, False)
        x = to_tensor(read_idx(images, start, n))
        y = torch.from_numpy(read_idx(labels, start, n).astype(np.int64))
        return x, y
