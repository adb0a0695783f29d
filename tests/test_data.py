"""Named data sets: foolbox samples, CIFAR-10, ImageNet folders, Fashion-MNIST (all offline)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from car_attacks.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    dataset_size,
    list_datasets,
    load_samples,
)

FOOLBOX = {
    "foolbox_cifar10": "cifar10",
    "foolbox_cifar100": "cifar100",
    "foolbox_mnist": "mnist",
    "foolbox_fashion_mnist": "fashionMNIST",
    "foolbox_imagenet": "imagenet",
}


def test_registry() -> None:
    expected = set(FOOLBOX) | {"cifar10", "imagenet_folder", "fashion_mnist"}
    assert expected <= set(DATASETS)
    assert [s.name for s in list_datasets()] == sorted(DATASETS)
    with pytest.raises(ValueError, match="no_such_set"):
        load_samples("no_such_set", n=1)


# --------------------------------------------------------------------------- foolbox samples


@pytest.mark.parametrize("name", sorted(FOOLBOX))
def test_foolbox_samples(name: str) -> None:
    from foolbox.utils import _samples

    spec = DATASETS[name]
    assert spec.size == 20 and spec.offline and spec.available() == (True, "")
    assert dataset_size(name) == 20
    x, y = load_samples(name, n=20)
    assert x.shape == (20, *spec.input_shape) and x.dtype == torch.float32
    assert y.shape == (20,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert int(y.min()) >= 0 and int(y.max()) < spec.num_classes
    ref_x, ref_y = _samples(FOOLBOX[name], 0, 20, (224, 224), "channels_first", (0, 1))
    if ref_x.ndim == 3:
        ref_x = ref_x[:, None]
    np.testing.assert_array_equal(y.numpy(), ref_y)
    np.testing.assert_allclose(x.numpy(), ref_x, atol=1e-6)

    tail_x, tail_y = load_samples(name, n=5, start=15)
    torch.testing.assert_close(tail_x, x[15:])
    torch.testing.assert_close(tail_y, y[15:])
    with pytest.raises(ValueError, match=f"dataset {name} has only 20 samples in split test"):
        load_samples(name, n=21)
    with pytest.raises(ValueError, match="n=6"):
        load_samples(name, n=6, start=15)
    with pytest.raises(ValueError, match="split"):
        load_samples(name, n=1, split="train")


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f, protocol=2)
        written[name] = data
        written[name + ".labels"] = np.asarray(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return written


def test_cifar10_torchvision_layout(tmp_path: Path) -> None:
    written = _write_cifar(tmp_path, per_batch=7, rng=np.random.default_rng(0))
    assert dataset_size("cifar10", "test", str(tmp_path)) == 7
    assert dataset_size("cifar10", "train", str(tmp_path)) == 35
    x, y = load_samples("cifar10", n=7, root=str(tmp_path))
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = written["test_batch"].reshape(7, 3, 32, 32).astype(np.float32) / 255
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), written["test_batch.labels"])

    # A train slice crossing the boundary between data_batch_1 and data_batch_2.
    xt, yt = load_samples("cifar10", n=10, split="train", root=str(tmp_path), start=5)
    all_train = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    all_labels = np.concatenate([written[f"data_batch_{i}.labels"] for i in range(1, 6)])
    np.testing.assert_allclose(
        xt.numpy(), all_train[5:15].reshape(10, 3, 32, 32).astype(np.float32) / 255, atol=1e-7
    )
    np.testing.assert_array_equal(yt.numpy(), all_labels[5:15])
    with pytest.raises(ValueError, match="has only 7 samples in split test, asked for n=8"):
        load_samples("cifar10", n=8, root=str(tmp_path))


def test_cifar10_missing_or_empty_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_samples("cifar10", n=1, root=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_samples("cifar10", n=1, root=str(empty))
    with pytest.raises(FileNotFoundError, match="root="):
        load_samples("cifar10", n=1)
    assert DATASETS["cifar10"].available(str(empty))[0] is False


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_cifar10_batch_with_code_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "marker.txt"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _RunsCode(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="exec"):
        load_samples("cifar10", n=1, root=str(tmp_path))
    assert not marker.exists()


# --------------------------------------------------------------------------- ImageNet folder


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagenet_folder_resize_and_crop(tmp_path: Path) -> None:
    val = tmp_path / "val"
    # 512 wide x 256 high: red outer quarters, blue centre half. Resize 256 keeps it;
    # the 224 centre crop (columns 144..367) lies inside the blue part.
    stripes = np.zeros((256, 512, 3), np.uint8)
    stripes[:, :128, 0] = stripes[:, 384:, 0] = 255
    stripes[:, 128:384, 2] = 255
    _save(val / "n01440764" / "a.png", stripes)
    _save(val / "n01440764" / "b.png", np.full((300, 400, 3), 100, np.uint8))
    _save(val / "n01443537" / "c.png", np.full((260, 700, 3), 200, np.uint8))
    (val / "n01443537" / "notes.txt").write_text("not an image")

    assert dataset_size("imagenet_folder", "val", str(tmp_path)) == 3
    assert dataset_size("imagenet_folder", "test", str(val)) == 3
    with pytest.warns(UserWarning, match="not 1000"):
        x, y = load_samples("imagenet_folder", n=3, split="val", root=str(tmp_path))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1]
    torch.testing.assert_close(x[0, 2], torch.ones(224, 224))
    torch.testing.assert_close(x[0, 0], torch.zeros(224, 224))
    torch.testing.assert_close(x[1], torch.full((3, 224, 224), 100 / 255))
    torch.testing.assert_close(x[2], torch.full((3, 224, 224), 200 / 255))
    with pytest.raises(ValueError, match="has only 3 samples"):
        load_samples("imagenet_folder", n=4, split="val", root=str(tmp_path))


def test_imagenet_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_samples("imagenet_folder", n=1, root=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    (empty / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty"):
        load_samples("imagenet_folder", n=1, root=str(empty))


# --------------------------------------------------------------------------- Fashion-MNIST


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


@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION_MNIST), reason="apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_debian_package() -> None:
    assert dataset_size("fashion_mnist", "test") == 10000
    assert dataset_size("fashion_mnist", "train") == 60000
    x, y = load_samples("fashion_mnist", n=20)
    fx, fy = load_samples("foolbox_fashion_mnist", n=20)  # foolbox's are the first 20
    torch.testing.assert_close(y, fy)
    torch.testing.assert_close(x, fx)
    with pytest.raises(ValueError, match="has only 10000 samples in split test"):
        load_samples("fashion_mnist", n=2, start=9999)
