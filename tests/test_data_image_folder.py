"""car_attacks.data.image_folder: <root>/<class>/<image>, resize 256, centre crop 224."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from car_attacks.data import dataset_size, load_samples


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
