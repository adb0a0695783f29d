"""The named data sets (:data:`DATASETS`) and how to load them by name."""

from __future__ import annotations

import os

import torch

from .cifar10 import Cifar10Batches
from .foolbox_samples import FoolboxSamples
from .idx import IdxFiles
from .image_folder import ImageFolder
from .spec import DatasetSpec

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "dataset_size",
    "list_datasets",
    "load_samples",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs its (gzipped) IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

#: name -> data set; :func:`register` adds to it.
DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under its name (replacing any spec of that name)."""
    DATASETS[spec.name] = spec
    return spec


def _fetch_fashion_mnist(root: str, train: bool) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root, train=train, download=True)


_FOOLBOX = [
    ("foolbox_cifar10", "cifar10", "CIFAR-10", 10, (3, 32, 32), "RGB", None),
    ("foolbox_cifar100", "cifar100", "CIFAR-100", 100, (3, 32, 32), "RGB", None),
    ("foolbox_mnist", "mnist", "MNIST", 10, (1, 28, 28), "L", None),
    ("foolbox_fashion_mnist", "fashionMNIST", "Fashion-MNIST", 10, (1, 28, 28), "L", None),
    ("foolbox_imagenet", "imagenet", "ImageNet", 1000, (3, 224, 224), "RGB", 224),
]
for _name, _prefix, _title, _classes, _shape, _mode, _resize in _FOOLBOX:
    register(
        DatasetSpec(
            name=_name,
            description=f"foolbox's 20 shipped {_title} test samples"
            + (" (512x512 JPEGs resized to 224x224, bicubic)" if _resize else ""),
            num_classes=_classes,
            input_shape=_shape,
            size=20,
            offline=True,
            splits=("test",),
            split_sizes={"test": 20},
            source=FoolboxSamples(_prefix, _mode, _resize),
        )
    )

register(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10 from torchvision's layout under root (cifar-10-batches-py/)",
        num_classes=10,
        input_shape=(3, 32, 32),
        size=10000,
        offline=False,
        splits=Cifar10Batches.splits,
        split_sizes={"train": 50000, "test": 10000},
        source=Cifar10Batches(),
    )
)

register(
    DatasetSpec(
        name="imagenet_folder",
        description="ImageFolder-style directory under root (class folders; sorted 1000 wnids "
        "give standard ImageNet labels); resize 256, center crop 224",
        num_classes=1000,
        input_shape=(3, 224, 224),
        size=None,
        offline=False,
        splits=ImageFolder.splits,
        source=ImageFolder(),
    )
)

register(
    DatasetSpec(
        name="fashion_mnist",
        description="Fashion-MNIST IDX files: Debian's dataset-fashion-mnist "
        f"({DEBIAN_FASHION_MNIST}) by default, or root (flat or torchvision layout)",
        num_classes=10,
        input_shape=(1, 28, 28),
        size=10000,
        offline=os.path.isdir(DEBIAN_FASHION_MNIST),
        splits=IdxFiles.splits,
        split_sizes={"train": 60000, "test": 10000},
        source=IdxFiles(
            name="fashion_mnist",
            tv_folder="FashionMNIST",
            default_root=DEBIAN_FASHION_MNIST,
            fetch=_fetch_fashion_mnist,
        ),
    )
)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def list_datasets() -> list[DatasetSpec]:
    """All registered data sets, sorted by name."""
    return [DATASETS[name] for name in sorted(DATASETS)]


def dataset_size(
    name: str, split: str = "test", root: str | None = None, *, download: bool = False
) -> int:
    """Number of samples in ``split`` of data set ``name`` (reads headers or files)."""
    spec = _spec(name)
    spec.check_split(split)
    return spec.source.size(spec, split, root, download)


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")


def load_samples(
    name: str,
    *,
    n: int,
    split: str = "test",
    root: str | None = None,
    start: int = 0,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``start .. start + n - 1`` of a named data set, in file order.

    Returns float32 images ``(n, C, H, W)`` in [0, 1] and int64 labels ``(n,)``. Raises
    ``ValueError`` for an unknown name or split, or when fewer than ``start + n``
    samples exist; ``FileNotFoundError`` when ``root`` is missing or holds no data.
    """
    spec = _spec(name)
    spec.check_split(split)
    _check_count("n", n)
    _check_count("start", start)
    x, y = spec.source.load(spec, split, root, start, n, download)
    if x.shape[1:] != spec.input_shape:
        raise ValueError(
            f"dataset {name}: files give images of shape {tuple(x.shape[1:])}, "
            f"expected {spec.input_shape}"
        )
    if y.shape != (len(x),):
        raise ValueError(f"dataset {name}: {len(x)} images but labels of shape {tuple(y.shape)}")
    bad = y[(y < 0) | (y >= spec.num_classes)]
    if len(bad):
        raise ValueError(
            f"dataset {name}: label {int(bad[0])} is not a class index 0..{spec.num_classes - 1}"
        )
    return x, y
