"""CIFAR-10 python batches in torchvision's layout, read with a NumPy-only unpickler."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

from .images import check_dir, expand_root, unit_float
from .spec import Batch, DatasetSpec, DataSource

__all__ = ["CIFAR_DIR", "Cifar10Batches", "NumpyOnlyUnpickler"]

#: The folder torchvision's ``CIFAR10`` unpacks into.
CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that reconstructs numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _download(root: str) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(root, train=True, download=True)
    CIFAR10(root, train=False, download=True)


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels of one batch file."""
    try:
        with open(path, "rb") as f:
            entry = NumpyOnlyUnpickler(f, encoding="latin1").load()
        if not isinstance(entry, dict) or not {"data", "labels"} <= entry.keys():
            raise ValueError("expected a dict with keys 'data' and 'labels'")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except Exception as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch file: {exc}") from None
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


class Cifar10Batches(DataSource):
    """CIFAR-10 python batches in torchvision's layout ``<root>/cifar-10-batches-py/``."""

    splits = ("train", "test")

    def _folder(self, root: str | None, download: bool) -> str:
        root = expand_root(root)
        if root is None:
            raise FileNotFoundError(
                f"dataset cifar10 needs root=<folder holding {CIFAR_DIR}/> "
                "(torchvision's CIFAR10 layout)"
            )
        if download:
            _download(root)
        check_dir(root, f"a folder holding {CIFAR_DIR}/")
        for folder in (os.path.join(root, CIFAR_DIR), root):
            if os.path.isfile(os.path.join(folder, "test_batch")) or os.path.isfile(
                os.path.join(folder, "data_batch_1")
            ):
                return folder
        raise FileNotFoundError(
            f"{os.path.join(root, CIFAR_DIR)} not found or empty: expected torchvision's "
            "CIFAR10 layout (data_batch_1..5, test_batch); pass download=True to fetch it"
        )

    @staticmethod
    def _batches(folder: str, split: str) -> list[str]:
        paths = [os.path.join(folder, name) for name in _CIFAR_FILES[split]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 {split} split: missing {', '.join(missing)}")
        return paths

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        folder = self._folder(root, download)
        return sum(len(_read_batch(p)[1]) for p in self._batches(folder, split))

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        folder = self._folder(root, download)
        datas, labels, total = [], [], 0
        for path in self._batches(folder, split):
            data, label = _read_batch(path)
            lo, hi = max(start - total, 0), min(start + n - total, len(label))
            if lo < hi:
                datas.append(data[lo:hi])
                labels.append(label[lo:hi])
            total += len(label)
        spec.check_request(split, total, start, n)
        images = np.concatenate(datas) if datas else np.zeros((0, 3, 32, 32), np.uint8)
        y = torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64))
        return unit_float(images), y
