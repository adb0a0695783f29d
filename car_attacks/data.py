"""Named data sets, loaded offline into float32 ``(N, C, H, W)`` tensors in [0, 1].

>>> from car_attacks.data import load_samples
>>> x, y = load_samples("foolbox_cifar10", n=20)            # shipped with foolbox
>>> x, y = load_samples("cifar10", n=100, root="~/data")     # torchvision layout

Nothing downloads unless ``download=True`` is passed (``cifar10``, ``fashion_mnist``).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DatasetSpec",
    "dataset_size",
    "foolbox_data_dir",
    "list_datasets",
    "load_samples",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs its (gzipped) IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Batch = tuple[torch.Tensor, torch.Tensor]


class _Source:
    """How one named data set finds its files, counts and reads samples."""

    splits: tuple[str, ...] = ("test",)

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        raise NotImplementedError

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        raise NotImplementedError

    def available(self, spec: DatasetSpec, root: str | None) -> tuple[bool, str]:
        try:
            self.size(spec, spec.splits[0], root, False)
        except (FileNotFoundError, ValueError) as exc:
            return False, str(exc)
        return True, ""


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: shapes, bounds, known sizes and whether it needs user files.

    ``size`` is the number of samples in the default ``test`` split, or ``None`` when it
    is only known once the files are found (see :func:`dataset_size`). ``offline`` says
    whether it loads with no ``root`` and no network.
    """

    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, int, int]
    bounds: tuple[float, float]
    size: int | None
    offline: bool
    splits: tuple[str, ...] = ("test",)
    #: Known sizes per split (from the data set's definition; the files are what count).
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    source: _Source = field(default_factory=_Source, repr=False, compare=False)

    def available(self, root: str | None = None) -> tuple[bool, str]:
        """``(True, "")`` if the data set loads (from ``root``), else ``(False, reason)``."""
        return self.source.available(self, root)


# --------------------------------------------------------------------------- helpers


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(
            f"dataset {spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}"
        )


def _check_request(spec: DatasetSpec, split: str, total: int, start: int, n: int) -> None:
    if start + n > total:
        at = f" starting at start={start}" if start else ""
        raise ValueError(
            f"dataset {spec.name} has only {total} samples in split {split}, asked for n={n}{at}"
        )


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [0, 1]."""
    arr = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).div_(255.0)


def _open_image(path: str | Path, mode: str) -> PILImage:
    """The decoded image in PIL ``mode``; ``ValueError`` naming the file if it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            return src.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path} is not a readable image: {exc}") from None


def _pil_array(path: str | Path, mode: str, size: int | None = None) -> np.ndarray:
    from PIL import Image

    img = _open_image(path, mode)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _expand(root: str | None) -> str | None:
    return None if root is None else os.path.expanduser(os.fspath(root))


def _check_dir(folder: str, expected: str) -> None:
    """``FileNotFoundError`` unless ``folder`` is an existing directory."""
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder} does not exist (expected {expected})")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder (expected {expected})")


# --------------------------------------------------------------------------- foolbox samples


def foolbox_data_dir() -> str:
    """The ``data`` folder of the installed foolbox with its shipped sample images."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("foolbox is not installed; its sample images are needed")
    return os.path.join(next(iter(spec.submodule_search_locations)), "data")


class _FoolboxSamples(_Source):
    """foolbox's 20 shipped images, files ``<prefix>_<index>_<label>.<png|jpg>``."""

    def __init__(self, prefix: str, mode: str, resize: int | None = None) -> None:
        self.prefix, self.mode, self.resize = prefix, mode, resize

    def _files(self, root: str | None) -> list[tuple[str, int]]:
        folder = _expand(root) or foolbox_data_dir()
        _check_dir(folder, "foolbox's data folder")
        pattern = re.compile(rf"^{re.escape(self.prefix)}_(\d+)_(\d+)\.(?:png|jpe?g)$")
        found = []
        for name in os.listdir(folder):
            match = pattern.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(folder, name), int(match.group(2))))
        if not found:
            raise FileNotFoundError(
                f"no {self.prefix}_<index>_<label>.png/jpg sample files in {folder}"
            )
        return [(path, label) for _, path, label in sorted(found)]

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        return len(self._files(root))

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        files = self._files(root)
        _check_request(spec, split, len(files), start, n)
        chosen = files[start : start + n]
        images = np.stack([_pil_array(p, self.mode, self.resize) for p, _ in chosen])
        labels = torch.tensor([label for _, label in chosen], dtype=torch.int64)
        return _to_tensor(images), labels


# --------------------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
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


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _Cifar10(_Source):
    """CIFAR-10 python batches in torchvision's layout ``<root>/cifar-10-batches-py/``."""

    splits = ("train", "test")

    def _folder(self, root: str | None, download: bool) -> str:
        root = _expand(root)
        if root is None:
            raise FileNotFoundError(
                f"dataset cifar10 needs root=<folder holding {_CIFAR_DIR}/> "
                "(torchvision's CIFAR10 layout)"
            )
        if download:
            from torchvision.datasets import CIFAR10

            CIFAR10(root, train=True, download=True)
            CIFAR10(root, train=False, download=True)
        _check_dir(root, f"a folder holding {_CIFAR_DIR}/")
        for folder in (os.path.join(root, _CIFAR_DIR), root):
            if os.path.isfile(os.path.join(folder, "test_batch")) or os.path.isfile(
                os.path.join(folder, "data_batch_1")
            ):
                return folder
        raise FileNotFoundError(
            f"{os.path.join(root, _CIFAR_DIR)} not found or empty: expected torchvision's "
            "CIFAR10 layout (data_batch_1..5, test_batch); pass download=True to fetch it"
        )

    def _batches(self, folder: str, split: str) -> list[str]:
        paths = [os.path.join(folder, name) for name in _CIFAR_FILES[split]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 {split} split: missing {', '.join(missing)}")
        return paths

    @staticmethod
    def _read(path: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                entry = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            if not isinstance(entry, dict) or not {"data", "labels"} <= entry.keys():
                raise ValueError("expected a dict with keys 'data' and 'labels'")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry["labels"], dtype=np.int64)
        except Exception as exc:
            raise ValueError(f"{path} is not a CIFAR-10 batch file: {exc}") from None
        if len(labels) != len(data):
            raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
        return data, labels

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        folder = self._folder(root, download)
        return sum(len(self._read(p)[1]) for p in self._batches(folder, split))

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        folder = self._folder(root, download)
        datas, labels, total = [], [], 0
        for path in self._batches(folder, split):
            data, label = self._read(path)
            lo, hi = max(start - total, 0), min(start + n - total, len(label))
            if lo < hi:
                datas.append(data[lo:hi])
                labels.append(label[lo:hi])
            total += len(label)
        _check_request(spec, split, total, start, n)
        images = np.concatenate(datas) if datas else np.zeros((0, 3, 32, 32), np.uint8)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
        y = torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64))
        return x, y


# --------------------------------------------------------------------------- ImageNet folder


class _ImageFolder(_Source):
    """ImageFolder-style ``<root>/<class>/<image>``: resize 256, center crop 224."""

    splits = ("val", "test", "train")

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    @staticmethod
    def _classes(folder: str) -> list[str]:
        return sorted(
            e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
        )

    def _folder(self, root: str | None, split: str) -> str:
        root = _expand(root)
        if root is None:
            raise FileNotFoundError(
                "dataset imagenet_folder needs root=<folder of class sub-folders> "
                "(e.g. ImageNet's val set sorted into 1000 wnid folders)"
            )
        _check_dir(root, "a folder of class folders")
        candidates = [os.path.join(root, split)]
        if split == "test":
            candidates.append(os.path.join(root, "val"))
        for folder in candidates:
            if os.path.isdir(folder) and self._classes(folder):
                return folder
        return root

    def _samples(self, folder: str) -> tuple[list[tuple[str, int]], list[str]]:
        classes = self._classes(folder)
        samples = []
        for index, cls in enumerate(classes):
            for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(folder, cls))):
                dirnames.sort()
                for fname in sorted(filenames):
                    if fname.lower().endswith(_IMAGE_EXTENSIONS):
                        samples.append((os.path.join(dirpath, fname), index))
        if not samples:
            raise FileNotFoundError(
                f"{folder} holds no images in class sub-folders "
                f"(expected <class>/<image>{'/'.join(_IMAGE_EXTENSIONS[:3])}...)"
            )
        return samples, classes

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        return len(self._samples(self._folder(root, split))[0])

    def _image(self, path: str) -> np.ndarray:
        from torchvision.transforms import functional as tf

        img = tf.resize(
            _open_image(path, "RGB"), self.resize, interpolation=tf.InterpolationMode.BILINEAR
        )
        return np.asarray(tf.center_crop(img, [self.crop, self.crop]), dtype=np.uint8)

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        folder = self._folder(root, split)
        samples, classes = self._samples(folder)
        _check_request(spec, split, len(samples), start, n)
        if len(classes) != 1000 and all(re.fullmatch(r"n\d{8}", c) for c in classes):
            warnings.warn(
                f"{folder} has {len(classes)} wnid folders, not 1000: labels are indices into "
                "the sorted folder names, not standard ImageNet class indices",
                stacklevel=3,
            )
        chosen = samples[start : start + n]
        if not chosen:
            return torch.zeros(0, 3, self.crop, self.crop), torch.zeros(0, dtype=torch.int64)
        images = np.stack([self._image(path) for path, _ in chosen])
        return _to_tensor(images), torch.tensor([c for _, c in chosen], dtype=torch.int64)


# --------------------------------------------------------------------------- IDX (Fashion-MNIST)


def _open_maybe_gzip(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


#: What reading a damaged (gzipped) file raises: BadGzipFile is an OSError.
_READ_ERRORS = (OSError, EOFError, zlib.error)


def _idx_header(f: io.BufferedIOBase, path: str) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise ValueError(f"{path} is truncated: incomplete IDX header")
    return struct.unpack(f">{ndim}I", dims)


def _read_idx_shape(path: str, ndim: int) -> tuple[int, ...]:
    """The shape in an IDX file's header, which must have ``ndim`` dimensions."""
    try:
        with _open_maybe_gzip(path) as f:
            shape = _idx_header(f, path)
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} cannot be read: {exc or type(exc).__name__}") from None
    if len(shape) != ndim:
        raise ValueError(f"{path} holds {len(shape)}-dimensional IDX data, expected {ndim}")
    return shape


def _read_idx(path: str, start: int, n: int) -> np.ndarray:
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


class _IdxSet(_Source):
    """MNIST-style IDX files (gzipped or not) in a flat folder or torchvision's layout."""

    splits = ("train", "test")
    _PREFIX = {"train": "train", "test": "t10k"}

    def __init__(self, name: str, tv_folder: str, default_root: str | None, tv_class: str) -> None:
        self.name, self.tv_folder, self.default_root = name, tv_folder, default_root
        self.tv_class = tv_class

    def _paths(self, root: str | None, split: str, download: bool) -> tuple[str, str]:
        root = _expand(root) or self.default_root
        if root is None:
            raise FileNotFoundError(f"dataset {self.name} needs root=<folder with IDX files>")
        if download:
            import torchvision.datasets as tvd

            getattr(tvd, self.tv_class)(root, train=split == "train", download=True)
        _check_dir(root, "a folder with IDX files")
        folders = [root, os.path.join(root, self.tv_folder, "raw"), os.path.join(root, "raw")]
        prefix = self._PREFIX[split]
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
        counts = [_read_idx_shape(images, 3)[0], _read_idx_shape(labels, 1)[0]]
        if counts[0] != counts[1]:
            raise ValueError(f"{images} has {counts[0]} images but {labels} {counts[1]} labels")
        return counts[0]

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        total = self.size(spec, split, root, download)
        _check_request(spec, split, total, start, n)
        images, labels = self._paths(root, split, False)
        x = _to_tensor(_read_idx(images, start, n))
        y = torch.from_numpy(_read_idx(labels, start, n).astype(np.int64))
        return x, y


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


_FOOLBOX = [
    ("foolbox_cifar10", "cifar10", "CIFAR-10", 10, (3, 32, 32), "RGB", None),
    ("foolbox_cifar100", "cifar100", "CIFAR-100", 100, (3, 32, 32), "RGB", None),
    ("foolbox_mnist", "mnist", "MNIST", 10, (1, 28, 28), "L", None),
    ("foolbox_fashion_mnist", "fashionMNIST", "Fashion-MNIST", 10, (1, 28, 28), "L", None),
    ("foolbox_imagenet", "imagenet", "ImageNet", 1000, (3, 224, 224), "RGB", 224),
]
for _name, _prefix, _title, _classes, _shape, _mode, _resize in _FOOLBOX:
    _register(
        DatasetSpec(
            name=_name,
            description=f"foolbox's 20 shipped {_title} test samples"
            + (" (512x512 JPEGs resized to 224x224, bicubic)" if _resize else ""),
            num_classes=_classes,
            input_shape=_shape,
            bounds=(0.0, 1.0),
            size=20,
            offline=True,
            splits=("test",),
            split_sizes={"test": 20},
            source=_FoolboxSamples(_prefix, _mode, _resize),
        )
    )

_register(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10 from torchvision's layout under root (cifar-10-batches-py/)",
        num_classes=10,
        input_shape=(3, 32, 32),
        bounds=(0.0, 1.0),
        size=10000,
        offline=False,
        splits=("train", "test"),
        split_sizes={"train": 50000, "test": 10000},
        source=_Cifar10(),
    )
)

_register(
    DatasetSpec(
        name="imagenet_folder",
        description="ImageFolder-style directory under root (class folders; sorted 1000 wnids "
        "give standard ImageNet labels); resize 256, center crop 224",
        num_classes=1000,
        input_shape=(3, 224, 224),
        bounds=(0.0, 1.0),
        size=None,
        offline=False,
        splits=("val", "test", "train"),
        source=_ImageFolder(),
    )
)

_register(
    DatasetSpec(
        name="fashion_mnist",
        description="Fashion-MNIST IDX files: Debian's dataset-fashion-mnist "
        f"({DEBIAN_FASHION_MNIST}) by default, or root (flat or torchvision layout)",
        num_classes=10,
        input_shape=(1, 28, 28),
        bounds=(0.0, 1.0),
        size=10000,
        offline=os.path.isdir(DEBIAN_FASHION_MNIST),
        splits=("train", "test"),
        split_sizes={"train": 60000, "test": 10000},
        source=_IdxSet("fashion_mnist", "FashionMNIST", DEBIAN_FASHION_MNIST, "FashionMNIST"),
    )
)


# --------------------------------------------------------------------------- public API


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
    _check_split(spec, split)
    return spec.source.size(spec, split, root, download)


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
    _check_split(spec, split)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}")
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
