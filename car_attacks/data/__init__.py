"""Named data sets, loaded offline into float32 ``(N, C, H, W)`` tensors in [0, 1].

>>> from car_attacks.data import load_samples
>>> x, y = load_samples("foolbox_cifar10", n=20)            # shipped with foolbox
>>> x, y = load_samples("cifar10", n=100, root="~/data")     # torchvision layout

Nothing downloads unless ``download=True`` is passed (``cifar10``, ``fashion_mnist``).
One module per source: :mod:`.foolbox_samples`, :mod:`.cifar10`, :mod:`.image_folder`,
:mod:`.idx`; the named sets are in :mod:`.datasets`. :mod:`.augment` holds the
training-time :class:`~car_attacks.data.augment.ClippingAwareNoise`.
"""

from .datasets import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    dataset_size,
    list_datasets,
    load_samples,
    register,
)
from .foolbox_samples import foolbox_data_dir
from .spec import UNIT_BOUNDS, Batch, DatasetSpec, DataSource

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "UNIT_BOUNDS",
    "Batch",
    "DataSource",
    "DatasetSpec",
    "dataset_size",
    "foolbox_data_dir",
    "list_datasets",
    "load_samples",
    "register",
]
