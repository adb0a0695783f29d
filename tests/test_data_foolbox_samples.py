"""car_attacks.data.foolbox_samples: foolbox's 20 shipped samples per data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from car_attacks.data import DATASETS, dataset_size, load_samples

FOOLBOX = {
    "foolbox_cifar10": "cifar10",
    "foolbox_cifar100": "cifar100",
    "foolbox_mnist": "mnist",
    "foolbox_fashion_mnist": "fashionMNIST",
    "foolbox_imagenet": "imagenet",
}


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
