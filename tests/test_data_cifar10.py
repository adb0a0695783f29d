"""car_attacks.data.cifar10: pickled batches in torchvision's layout, NumPy-only unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from car_attacks.data import DATASETS, dataset_size, load_samples


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
