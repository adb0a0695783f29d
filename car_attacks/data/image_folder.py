"""ImageFolder-style ``<root>/<class>/<image>`` directories (e.g. ImageNet's val set)."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import torch

from .images import IMAGE_EXTENSIONS, check_dir, expand_root, open_image, to_tensor
from .spec import Batch, DatasetSpec, DataSource

__all__ = ["ImageFolder"]


def _classes(folder: str) -> list[str]:
    """The sorted names of the visible sub-folders of ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _samples(folder: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(image path, class index)], classes)`` in sorted order."""
    classes = _classes(folder)
    samples = []
    for index, cls in enumerate(classes):
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(folder, cls))):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), index))
    if not samples:
        raise FileNotFoundError(
            f"{folder} holds no images in class sub-folders "
            f"(expected <class>/<image>{'/'.join(IMAGE_EXTENSIONS[:3])}...)"
        )
    return samples, classes


class ImageFolder(DataSource):
    """ImageFolder-style ``<root>/<class>/<image>``: resize 256, center crop 224."""

    splits = ("val", "test", "train")

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    @staticmethod
    def _folder(root: str | None, split: str) -> str:
        root = expand_root(root)
        if root is None:
            raise FileNotFoundError(
                "dataset imagenet_folder needs root=<folder of class sub-folders> "
                "(e.g. ImageNet's val set sorted into 1000 wnid folders)"
            )
        check_dir(root, "a folder of class folders")
        candidates = [os.path.join(root, split)]
        if split == "test":
            candidates.append(os.path.join(root, "val"))
        for folder in candidates:
            if os.path.isdir(folder) and _classes(folder):
                return folder
        return root

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        return len(_samples(self._folder(root, split))[0])

    def _image(self, path: str) -> np.ndarray:
        from torchvision.transforms import functional as tf

        img = tf.resize(
            open_image(path, "RGB"), self.resize, interpolation=tf.InterpolationMode.BILINEAR
        )
        return np.asarray(tf.center_crop(img, [self.crop, self.crop]), dtype=np.uint8)

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        folder = self._folder(root, split)
        samples, classes = _samples(folder)
        spec.check_request(split, len(samples), start, n)
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
        return to_tensor(images), torch.tensor([c for _, c in chosen], dtype=torch.int64)
