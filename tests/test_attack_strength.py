"""On a trained model, clipping-aware attacks are at least as strong as their naive twins."""

from __future__ import annotations

import foolbox as fb
import torch

from car_attacks.attacks import L1ClippingAwarePGD, L2ClippingAwareAdditiveGaussianNoiseAttack
from car_attacks.data import load_samples
from car_attacks.models import load_model


def _model_and_data(n: int) -> tuple[fb.PyTorchModel, torch.Tensor, torch.Tensor]:
    model = fb.PyTorchModel(load_model("cifar10_resnet18"), bounds=(0.0, 1.0))
    x, y = load_samples("foolbox_cifar10", n=n)
    return model, x, y


def test_car_l1_pgd_succeeds_at_least_as_often_as_naive_at_every_eps() -> None:
    model, x, y = _model_and_data(10)
    epsilons = [3.0, 6.0, 12.0]
    results = {}
    for rescaling in ("car", "naive"):
        attack = L1ClippingAwarePGD(steps=5, rescaling=rescaling, seed=0)
        _, _, success = attack(model, x, y, epsilons=epsilons)
        results[rescaling] = success.float().mean(dim=1)
    assert (results["car"] >= results["naive"]).all(), results
    assert (results["car"] > results["naive"]).any(), results  # clipping matters in L1


def test_car_noise_reaches_eps_where_naive_falls_short() -> None:
    model, x, y = _model_and_data(10)
    norms = {}
    for rescaling in ("car", "naive"):
        attack = L2ClippingAwareAdditiveGaussianNoiseAttack(rescaling=rescaling, seed=0)
        _, clipped, _ = attack(model, x, y, epsilons=8.0)
        norms[rescaling] = (clipped - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms["car"], torch.full_like(norms["car"], 8.0), rtol=1e-4, atol=0)
    assert (norms["naive"] < 8.0 * 0.99).any()
    assert (norms["car"] >= norms["naive"] - 1e-4).all()
