"""Image helpers shared by the data sources: decoding, uint8 -> float tensors, folder checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_dir",
    "expand_root",
    "open_image",
    "pil_array",
    "to_tensor",
    "unit_float",
]

#: File endings read as images in class folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor of the same layout in [0, 1]: ``x / 255``."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [0, 1]."""
    return unit_float(images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2))


def open_image(path: str | Path, mode: str) -> PILImage:
    """The decoded image in PIL ``mode``; ``ValueError`` naming the file if it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            return src.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path} is not a readable image: {exc}") from None


def pil_array(path: str | Path, mode: str, size: int | None = None) -> np.ndarray:
    """uint8 pixels of the image at ``path`` in ``mode``, resized (bicubic) to ``size x size``."""
    from PIL import Image

    img = open_image(path, mode)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def expand_root(root: str | None) -> str | None:
    """``root`` with ``~`` expanded (``None`` stays ``None``)."""
    return None if root is None else os.path.expanduser(os.fspath(root))


def check_dir(folder: str, expected: str) -> None:
    """``FileNotFoundError`` unless ``folder`` is an existing directory."""
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder} does not exist (expected {expected})")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder (expected {expected})")
