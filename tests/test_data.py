"""car_attacks.data: the catalog of named data sets, DatasetSpec and the loading API.

Each source has its own test module: test_data_foolbox_samples.py, test_data_cifar10.py,
test_data_image_folder.py, test_data_idx.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from car_attacks.data import (
    DATASETS,
    UNIT_BOUNDS,
    Batch,
    DatasetSpec,
    DataSource,
    dataset_size,
    foolbox_data_dir,
    list_datasets,
    load_samples,
    register,
)
from car_attacks.data.idx import IdxFiles

FOOLBOX = {"foolbox_cifar10", "foolbox_cifar100", "foolbox_mnist", "foolbox_fashion_mnist"}


def test_registry() -> None:
    expected = FOOLBOX | {"foolbox_imagenet", "cifar10", "imagenet_folder", "fashion_mnist"}
    assert expected <= set(DATASETS)
    assert [s.name for s in list_datasets()] == sorted(DATASETS)
    with pytest.raises(ValueError, match="no_such_set"):
        load_samples("no_such_set", n=1)


def test_specs_are_typed_for_the_evaluation() -> None:
    for spec in list_datasets():
        assert spec.bounds == UNIT_BOUNDS == (0.0, 1.0)
        assert isinstance(spec.description, str) and spec.description
        assert len(spec.input_shape) == 3 and spec.num_classes >= 10
        assert set(spec.split_sizes) <= set(spec.splits)
        if spec.size is not None:
            assert spec.split_sizes.get("test", spec.size) == spec.size
        ok, reason = spec.available()
        assert ok == (reason == "")
    with pytest.raises(TypeError):
        DatasetSpec("x", "y", 10, (1, 2, 2), 4, True)  # type: ignore[misc]


class _Counting(DataSource):
    """Four 1x2x2 images whose pixels are the sample index / 10."""

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        return 4

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        spec.check_request(split, 4, start, n)
        index = torch.arange(start, start + n, dtype=torch.float32)
        return index.view(-1, 1, 1, 1).expand(n, 1, 2, 2) / 10, index.long() % 2


@pytest.fixture
def counting() -> Iterator[DatasetSpec]:
    spec = register(
        DatasetSpec(
            name="counting_test_set",
            description="four images",
            num_classes=2,
            input_shape=(1, 2, 2),
            size=4,
            offline=True,
            source=_Counting(),
        )
    )
    yield spec
    del DATASETS[spec.name]


def test_registered_source_and_argument_checks(counting: DatasetSpec) -> None:
    assert DATASETS[counting.name] is counting and counting.available() == (True, "")
    assert dataset_size(counting.name) == 4
    x, y = load_samples(counting.name, n=2, start=1)
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([0.1, 0.2]))
    assert y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="has only 4 samples in split test, asked for n=2 start"):
        load_samples(counting.name, n=2, start=3)
    with pytest.raises(ValueError, match="no split 'train'; splits: test"):
        dataset_size(counting.name, "train")
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            load_samples(counting.name, n=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="start must be a non-negative int"):
            load_samples(counting.name, n=1, start=bad)  # type: ignore[arg-type]


def test_loaded_shapes_and_labels_are_checked(counting: DatasetSpec) -> None:
    wrong_shape = dataclasses.replace(counting, input_shape=(1, 3, 3))
    register(wrong_shape)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 2\), expected \(1, 3, 3\)"):
        load_samples(counting.name, n=1)
    register(dataclasses.replace(counting, num_classes=1))
    with pytest.raises(ValueError, match="label 1 is not a class index 0..0"):
        load_samples(counting.name, n=2)


def test_unimplemented_source_is_unavailable() -> None:
    spec = DatasetSpec(
        name="bare", description="", num_classes=2, input_shape=(1, 1, 1), size=0, offline=False
    )
    with pytest.raises(NotImplementedError):
        spec.available()


def test_foolbox_data_dir_holds_the_samples() -> None:
    import foolbox

    folder = foolbox_data_dir()
    assert folder == os.path.join(os.path.dirname(foolbox.__file__), "data")
    assert any(name.startswith("cifar10_") for name in os.listdir(folder))


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_download_calls_fetch_then_reads(tmp_path: Path) -> None:
    calls: list[tuple[str, bool]] = []

    def fetch(root: str, train: bool) -> None:
        calls.append((root, train))
        raw = Path(root) / "Toy" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        _write_idx_gz(raw / "t10k-images-idx3-ubyte.gz", np.full((3, 28, 28), 51, np.uint8))
        _write_idx_gz(raw / "t10k-labels-idx1-ubyte.gz", np.array([2, 0, 1], np.uint8))

    source = IdxFiles(name="toy", tv_folder="Toy", default_root=None, fetch=fetch)
    spec = DatasetSpec(
        name="toy",
        description="",
        num_classes=3,
        input_shape=(1, 28, 28),
        size=None,
        offline=False,
        splits=source.splits,
        source=source,
    )
    assert spec.available()[0] is False  # no root, no default root
    x, y = source.load(spec, "test", str(tmp_path), 1, 2, True)
    assert calls == [(str(tmp_path), False)]
    assert y.tolist() == [0, 1]
    torch.testing.assert_close(x, torch.full((2, 1, 28, 28), 0.2))
