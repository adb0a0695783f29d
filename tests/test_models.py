"""Named models: offline loading, accuracy on foolbox's samples, safe checkpoints."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from car_attacks.data import load_samples
from car_attacks.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ModelSpec,
    Normalize,
    Preprocessed,
    WeightsUnavailableError,
    cifar_resnet18,
    list_models,
    load_model,
    load_weights_into,
    model_spec,
    packaged_weights,
    register_model,
)


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = net(x)
    return float((logits.argmax(1) == y).float().mean())


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small batches gain nothing from intra-op threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_net() -> nn.Module:
    return load_model("cifar10_resnet18")


@pytest.fixture(scope="module")
def cifar_samples() -> tuple[torch.Tensor, torch.Tensor]:
    return load_samples("foolbox_cifar10", n=20)


# --------------------------------------------------------------------------- registry


def test_registry_lists_named_models() -> None:
    names = [spec.name for spec in list_models()]
    assert names == sorted(names)
    assert {"cifar10_resnet18", "imagenet_efficientnet_lite0"} <= set(names)
    for spec in list_models():
        assert spec.available() == (True, ""), spec.available()
        assert spec.offline


def shipped_model_names() -> list[str]:
    """The package's own models, listed by a fresh interpreter (other test modules register
    test models in this one)."""
    code = "from car_attacks.models import list_models; print(*(s.name for s in list_models()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_specs_take_task_facts_from_their_data_set() -> None:
    from car_attacks.data import DATASETS

    names = shipped_model_names()
    assert {"cifar10_resnet18", "fashion_mnist_bcop"} <= set(names)
    for spec in (model_spec(name) for name in names):
        task = DATASETS[spec.datasets[0]]
        assert (spec.num_classes, spec.input_shape, spec.bounds) == (
            task.num_classes,
            task.input_shape,
            task.bounds,
        )
        assert spec.description and spec.certified == (spec.name == "fashion_mnist_bcop")
    with pytest.raises(TypeError):
        ModelSpec("x", "y", 10, (1, 2, 2), True)  # type: ignore[misc]


def test_old_registry_module_path_keeps_its_names() -> None:
    from car_attacks.models import registry

    assert registry.ModelSpec is ModelSpec and registry.packaged_weights is packaged_weights
    assert registry.TORCHVISION_PREFIX == "torchvision:" and registry.MODELS is MODELS
    assert registry.WEIGHTS_DIR.name == "weights" and registry.load_model is load_model


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="no_such_model") as info:
        load_model("no_such_model")
    assert "cifar10_resnet18" in str(info.value)
    assert "torchvision:" in str(info.value)
    with pytest.raises(ValueError, match="not_an_arch"):
        model_spec("torchvision:not_an_arch")


def test_missing_packaged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Room for models whose weights ship later in car_attacks/weights/."""
    spec = ModelSpec(
        name="fashion_mnist_test_model",
        description="not shipped",
        num_classes=10,
        input_shape=(1, 28, 28),
        bounds=(0.0, 1.0),
        offline=True,
        architecture=lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
        locate_weights=packaged_weights("no_such_file_for_tests.pt"),
    )
    monkeypatch.setattr("car_attacks.models.registry.MODELS", dict(MODELS))
    register_model(spec)
    ok, reason = model_spec(spec.name).available()
    assert not ok and "no_such_file_for_tests.pt" in reason
    with pytest.raises(FileNotFoundError, match="no_such_file_for_tests.pt"):
        load_model(spec.name)
    with pytest.raises(ValueError, match="already registered"):
        register_model(spec)


# --------------------------------------------------------------------------- cifar10_resnet18


def test_cifar10_resnet18_accuracy(
    cifar_net: nn.Module, cifar_samples: tuple[torch.Tensor, torch.Tensor]
) -> None:
    spec = model_spec("cifar10_resnet18")
    assert spec.bounds == (0.0, 1.0)
    assert spec.input_shape == (3, 32, 32) and spec.num_classes == 10
    assert not cifar_net.training
    assert not any(m.training for m in cifar_net.modules())
    x, y = cifar_samples
    with torch.no_grad():
        logits = cifar_net(x)
    assert logits.shape == (20, 10)
    accuracy = float((logits.argmax(1) == y).float().mean())
    assert accuracy >= 0.8, accuracy  # measured: 1.00 (20/20)


def test_cifar10_resnet18_gives_input_gradients(
    cifar_net: nn.Module, cifar_samples: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x = cifar_samples[0][:2].clone().requires_grad_(True)
    cifar_net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in cifar_net.parameters())


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_lite0_accuracy_and_preprocessing() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    spec = model_spec("imagenet_efficientnet_lite0")
    assert spec.input_shape == (3, 224, 224) and spec.bounds == (0.0, 1.0)
    assert spec.input_shape[-1] == EfficientNet.get_image_size("efficientnet-lite0")
    net = load_model("imagenet_efficientnet_lite0")
    assert isinstance(net, Preprocessed) and isinstance(net.preprocess, Normalize)
    assert not any(m.training for m in net.modules())
    x, y = load_samples("foolbox_imagenet", n=20)
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == (20, 1000)
        manual = net.model((x[:2] * 255 - 127) / 128)
    torch.testing.assert_close(logits[:2], manual, rtol=1e-4, atol=1e-4)
    accuracy = float((logits.argmax(1) == y).float().mean())
    assert accuracy >= 0.6, accuracy  # measured: 0.85 (17/20)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_local_weights_match_reference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)

    spec = model_spec("torchvision:resnet18")
    assert spec.input_shape == (3, 224, 224) and spec.num_classes == 1000
    net = load_model("torchvision:resnet18", weights=str(path))
    assert not net.training
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((x - mean) / std)
        got = net(x)
        assert not torch.allclose(got, reference(x), atol=1e-3)  # normalisation is applied
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # The wrapper's own state dict ("model." keys) loads back as a checkpoint.
    roundtrip = tmp_path / "wrapped.pth"
    torch.save(net.state_dict(), roundtrip)
    again = load_model("torchvision:resnet18", weights=str(roundtrip))
    with torch.no_grad():
        torch.testing.assert_close(again(x), got)


def test_torchvision_offline_download_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="weights=") as info:
        load_model("torchvision:resnet18")
    assert "resnet18" in str(info.value) and "unreachable" in str(info.value)


def test_torchvision_download_path_is_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    calls: list[dict[str, object]] = []

    def fake_download(url: str, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append({"url": url, **kwargs})
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    net = load_model("torchvision:resnet18")
    assert len(calls) == 1 and calls[0]["weights_only"] is True
    assert str(calls[0]["url"]).startswith("https://")
    assert isinstance(net, Preprocessed)
    torch.testing.assert_close(net.model.state_dict()["fc.weight"], state["fc.weight"])


# --------------------------------------------------------------------------- checkpoints


class _RunsCode:
    """Unpickling this calls exec(): it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_checkpoint_with_pickled_code_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only load failed") as info:
        load_model("cifar10_resnet18", weights=str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_non_state_dict_checkpoints_are_rejected(tmp_path: Path) -> None:
    as_list = tmp_path / "list.pt"
    torch.save([torch.zeros(3), torch.ones(3)], as_list)
    with pytest.raises(ValueError, match="not a state dict: it holds a list"):
        load_model("cifar10_resnet18", weights=str(as_list))

    whole_module = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), whole_module)
    with pytest.raises(ValueError, match="weights_only load failed"):
        load_model("cifar10_resnet18", weights=str(whole_module))

    wrong_arch = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong_arch)
    with pytest.raises(ValueError, match="does not match"):
        load_model("cifar10_resnet18", weights=str(wrong_arch))


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing_here.pt"
    with pytest.raises(FileNotFoundError, match="nothing_here.pt"):
        load_model("cifar10_resnet18", weights=str(path))


def test_wrapped_checkpoint_with_module_prefix(
    tmp_path: Path,
    cifar_net: nn.Module,
    cifar_samples: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x = cifar_samples[0][:2]
    with torch.no_grad():
        reference = cifar_net(x)
    state = {f"module.{k}": v for k, v in cifar_net.state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    net = load_model("cifar10_resnet18", weights=str(path))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference)

    other = cifar_resnet18().eval()  # random weights under {"model": ...}: another network
    path2 = tmp_path / "model.pt"
    torch.save({"model": other.state_dict()}, path2)
    net2 = load_model("cifar10_resnet18", weights=str(path2))
    with torch.no_grad():
        got = net2(x)
        torch.testing.assert_close(got, other(x))
    assert not torch.allclose(got, reference)


def test_legacy_densenet_keys_are_renamed() -> None:
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.BatchNorm2d(2)
            self.conv1 = nn.Conv2d(2, 2, 1)

    net = nn.Module()
    net.denselayer1 = Layer()
    source = {k: v + torch.ones_like(v) for k, v in net.state_dict().items()}
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1."): v
        for k, v in source.items()
    }
    assert set(legacy) != set(source)
    load_weights_into(net, legacy)
    torch.testing.assert_close(net.denselayer1.conv1.weight, source["denselayer1.conv1.weight"])
