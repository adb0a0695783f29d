"""Named classifiers whose preprocessing is a layer, so attacks work in input space.

>>> from car_attacks.models import load_model, model_spec
>>> net = load_model("cifar10_resnet18")          # inputs in model_spec(...).bounds
>>> net = load_model("torchvision:resnet18", weights="resnet18.pth")  # local file
>>> net = load_model("timm:resnet18", weights="resnet18.pth")         # timm, local file
>>> net = load_model("robustbench:cifar10/Linf/Carmon2019Unlabeled")   # RobustBench's model_dir

Weight files are always read with ``torch.load(..., weights_only=True)``.
"""

from . import fashion_mnist, installed  # noqa: F401  (register their models)
from .checkpoint import load_checkpoint, load_weights_into, normalize_state_dict
from .cifar_resnet import CifarResNet, cifar_resnet18
from .layers import IMAGENET_MEAN, IMAGENET_STD, Normalize, Preprocessed
from .registry import (
    MODELS,
    RESERVED_PREFIXES,
    list_models,
    load_model,
    model_spec,
    register_model,
)
from .robustbench_models import ROBUSTBENCH_DIR_ENV, ROBUSTBENCH_PREFIX
from .spec import WEIGHTS_DIR, ModelSpec, WeightsUnavailableError, packaged_weights
from .timm_models import TIMM_PREFIX
from .torchvision_models import TORCHVISION_PREFIX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "RESERVED_PREFIXES",
    "ROBUSTBENCH_DIR_ENV",
    "ROBUSTBENCH_PREFIX",
    "TIMM_PREFIX",
    "TORCHVISION_PREFIX",
    "WEIGHTS_DIR",
    "CifarResNet",
    "ModelSpec",
    "Normalize",
    "Preprocessed",
    "WeightsUnavailableError",
    "cifar_resnet18",
    "list_models",
    "load_checkpoint",
    "load_model",
    "load_weights_into",
    "model_spec",
    "normalize_state_dict",
    "packaged_weights",
    "register_model",
]
