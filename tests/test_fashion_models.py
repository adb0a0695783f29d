"""The shipped Fashion-MNIST models: offline loading by name and their recorded metrics.

Images come from the ``fashion_mnist`` fixture of ``conftest.py``: Debian's Fashion-MNIST
when installed, else foolbox's 20 shipped samples (the first 20 test images). The tests
that re-measure recorded accuracies need the first 1,000 or all 10,000 test images and are
skipped without Debian's package (a failure under ``CAR_ATTACKS_REQUIRE_SYSTEM_PACKAGES``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import FashionMnist
from torch import nn

from car_attacks.lipschitz import lipschitz_bound
from car_attacks.models import WEIGHTS_DIR, list_models, load_model, model_spec
from car_attacks.models.fashion_mnist import FASHION_MNIST_MODELS, shipped_metrics

NAMES = sorted(FASHION_MNIST_MODELS)


@pytest.fixture(scope="module")
def metrics() -> dict[str, object]:
    data = shipped_metrics()
    assert set(NAMES) <= set(data), f"metrics.json lacks {sorted(set(NAMES) - set(data))}"
    return data


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_registered_and_listed() -> None:
    listed = {spec.name for spec in list_models()}
    assert set(NAMES) == {
        "fashion_mnist_bcop",
        "fashion_mnist_cnn",
        "fashion_mnist_cnn_noise",
        "fashion_mnist_cnn_pgd",
    }
    assert set(NAMES) <= listed
    for name in NAMES:
        spec = model_spec(name)
        assert spec.offline and spec.available() == (True, ""), spec.available()
        assert spec.bounds == (0.0, 1.0)
        assert spec.input_shape == (1, 28, 28) and spec.num_classes == 10
        assert "fashion_mnist" in spec.datasets


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_small_plain_state_dicts(name: str, metrics: dict[str, dict]) -> None:
    path = WEIGHTS_DIR / f"{name}.pt"
    assert path.is_file() and os.path.getsize(path) < 5_000_000
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert metrics[name]["weights"] == path.name
    import hashlib

    assert metrics[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_and_classifies(name: str, fashion_mnist: FashionMnist) -> None:
    """Loaded for inference; 17-18 of the first 20 test images right (recorded: ~85%)."""
    model = load_model(name)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x, y = fashion_mnist(20)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (20, 10)
    assert int((logits.argmax(1) == y).sum()) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_clean_accuracy_first_1000(
    name: str, metrics: dict[str, dict], fashion_mnist: FashionMnist
) -> None:
    model = load_model(name)
    x, y = fashion_mnist(1000)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1000, 10)
    accuracy = float((logits.argmax(1) == y).float().mean())
    assert abs(accuracy - metrics[name]["test"]["clean_accuracy_first_1000"]) <= 0.01


@pytest.mark.parametrize("name", NAMES)
def test_recorded_test_metrics_are_consistent(name: str, metrics: dict[str, dict]) -> None:
    test = metrics[name]["test"]
    assert test["test_images"] == 10000
    assert 0.5 < test["clean_accuracy"] <= 1.0
    pgd = test["pgd"]
    assert pgd["eps"] == 1.0 and pgd["norm"] == "l2" and pgd["steps"] == 10
    assert 0.0 <= pgd["robust_accuracy"] <= pgd["clean_accuracy_same_images"]
    assert pgd["max_perturbation_l2"] <= 1.0 + 1e-5


def test_recorded_certified_accuracy(metrics: dict[str, dict], fashion_mnist: FashionMnist) -> None:
    """The BCOP model's certified accuracies on all 10,000 test images are what is recorded."""
    model = load_model("fashion_mnist_bcop")
    x, y = fashion_mnist(10000)
    lip = lipschitz_bound(model, (1, 28, 28))
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 2000]) for i in range(0, 10000, 2000)])
    top2 = logits.topk(2, dim=1)
    correct = top2.indices[:, 0] == y
    radius = (top2.values[:, 0] - top2.values[:, 1]) / (math.sqrt(2.0) * lip)
    test = metrics["fashion_mnist_bcop"]["test"]
    assert abs(float(correct.float().mean()) - test["clean_accuracy"]) <= 0.002
    assert set(test["certified_accuracy"]) == {"0.5", "1"}
    for key, recorded in test["certified_accuracy"].items():
        measured = float((correct & (radius >= float(key))).float().mean())
        assert abs(measured - recorded) <= 0.002, key
    assert recorded <= test["certified_accuracy"]["0.5"] <= test["clean_accuracy"]
    # an attack cannot beat the certificate: PGD-robust >= certified at the same eps
    if test["pgd"]["test_images"] == test["test_images"]:
        assert test["pgd"]["robust_accuracy"] >= test["certified_accuracy"]["1"]
    for name in NAMES:
        if name != "fashion_mnist_bcop":
            assert metrics[name]["test"]["certified_accuracy"] is None


def _jacobian_norm_estimate(model: nn.Module, x: torch.Tensor, iters: int = 30) -> float:
    """Power iteration on J^T J at ``x`` (one sample): a lower bound on Lip(model)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=g)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        _, jv = torch.autograd.functional.jvp(model, x, v)
        _, jtjv = torch.autograd.functional.vjp(model, x, jv)
        sigma = float(jv.norm())
        v = jtjv / jtjv.norm()
    return sigma


def test_bcop_bound_dominates_power_iteration(fashion_mnist: FashionMnist) -> None:
    """At 4 test images and on pairs of up to 64 (20 without Debian's Fashion-MNIST)."""
    model = load_model("fashion_mnist_bcop")
    bound = lipschitz_bound(model, (1, 28, 28))
    x = fashion_mnist(64, at_least=4)[0]
    estimates = [_jacobian_norm_estimate(model, x[i : i + 1]) for i in range(4)]
    assert max(estimates) <= bound * (1 + 1e-5)
    assert max(estimates) >= 0.5 * bound  # the estimate is a meaningful lower bound
    # and no pair of inputs is further apart in logits than the bound allows
    g = torch.Generator().manual_seed(1)
    a = x[:64]
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        ratio = (model(a) - model(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound * (1 + 1e-5)
