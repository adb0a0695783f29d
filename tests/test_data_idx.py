"""car_attacks.data.idx: Fashion-MNIST IDX files (flat, torchvision layout, Debian package)."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from car_attacks.data import DEBIAN_FASHION_MNIST, dataset_size, load_samples


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize(("layout", "gz"), [("flat", True), ("torchvision", False)])
def test_fashion_mnist_idx_files(tmp_path: Path, layout: str, gz: bool) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(folder / "t10k-images-idx3-ubyte", images, gz)
    _write_idx(folder / "t10k-labels-idx1-ubyte", labels, gz)
    _write_idx(folder / "train-images-idx3-ubyte", images[:2], gz)
    _write_idx(folder / "train-labels-idx1-ubyte", labels[:2], gz)

    assert dataset_size("fashion_mnist", "test", str(tmp_path)) == 5
    assert dataset_size("fashion_mnist", "train", str(tmp_path)) == 2
    x, y = load_samples("fashion_mnist", n=3, root=str(tmp_path), start=2)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [4, 1, 5]
    np.testing.assert_allclose(x[:, 0].numpy(), images[2:].astype(np.float32) / 255, atol=1e-7)
    xt, yt = load_samples("fashion_mnist", n=2, split="train", root=str(tmp_path))
    assert yt.tolist() == [3, 1]
    with pytest.raises(ValueError, match="has only 2 samples in split train, asked for n=3"):
        load_samples("fashion_mnist", n=3, split="train", root=str(tmp_path))


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_samples("fashion_mnist", n=1, root=str(tmp_path))


def test_fashion_mnist_debian_package(missing_system_package: Callable[[str, str], None]) -> None:
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        missing_system_package("the loader of Debian's Fashion-MNIST copy", "dataset-fashion-mnist")
    assert dataset_size("fashion_mnist", "test") == 10000
    assert dataset_size("fashion_mnist", "train") == 60000
    x, y = load_samples("fashion_mnist", n=20)
    fx, fy = load_samples("foolbox_fashion_mnist", n=20)  # foolbox's are the first 20
    torch.testing.assert_close(y, fy)
    torch.testing.assert_close(x, fx)
    with pytest.raises(ValueError, match="has only 10000 samples in split test"):
        load_samples("fashion_mnist", n=2, start=9999)
