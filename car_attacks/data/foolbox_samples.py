"""foolbox's 20 shipped sample images per data set (``<prefix>_<index>_<label>.png|jpg``)."""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from .images import check_dir, expand_root, pil_array, to_tensor
from .spec import Batch, DatasetSpec, DataSource

__all__ = ["FoolboxSamples", "foolbox_data_dir"]


def foolbox_data_dir() -> str:
    """The ``data`` folder of the installed foolbox with its shipped sample images."""
    try:
        import foolbox
    except ImportError:
        raise FileNotFoundError("foolbox is not installed; its sample images are needed") from None
    return os.path.join(os.path.dirname(os.path.abspath(foolbox.__file__)), "data")


class FoolboxSamples(DataSource):
    """foolbox's 20 shipped images, files ``<prefix>_<index>_<label>.<png|jpg>``."""

    def __init__(self, prefix: str, mode: str, resize: int | None = None) -> None:
        self.prefix, self.mode, self.resize = prefix, mode, resize

    def _files(self, root: str | None) -> list[tuple[str, int]]:
        folder = expand_root(root) or foolbox_data_dir()
        check_dir(folder, "foolbox's data folder")
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
        spec.check_request(split, len(files), start, n)
        chosen = files[start : start + n]
        images = np.stack([pil_array(p, self.mode, self.resize) for p, _ in chosen])
        labels = torch.tensor([label for _, label in chosen], dtype=torch.int64)
        return to_tensor(images), labels
