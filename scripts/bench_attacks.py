"""Attacks three ways (car, bisection, naive) beside foolbox's own class, in one run.

Same model (the CIFAR-10 ResNet-18 shipped with pyautoattack), same data
(foolbox's CIFAR-10 test images), same eps, same step budget. Prints a table of
success rate, median effective norm / eps of the clipped perturbation, and
runtime, with each variant's runtime relative to naive; writes JSON.

Usage: python scripts/bench_attacks.py [--n 20] [--repeats 3] [--families pgd noise boundary]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import foolbox as fb
import torch

import car_attacks.attacks as ca
from car_attacks.data import load_samples
from car_attacks.models import load_model

Factory = Callable[[ca.Rescaling], Any]


def families() -> dict[str, list[tuple[str, float, float, Factory, Any]]]:
    """family -> [(label, p, eps, variant -> our attack, foolbox's attack)]."""
    pgd_steps = 10
    return {
        "pgd": [
            (
                "PGD L1",
                1.0,
                6.0,
                lambda r: ca.L1ClippingAwarePGD(steps=pgd_steps, rescaling=r, seed=0),
                fb.attacks.L1ProjectedGradientDescentAttack(steps=pgd_steps),
            ),
            (
                "PGD L2",
                2.0,
                0.25,
                lambda r: ca.L2ClippingAwarePGD(steps=pgd_steps, rescaling=r, seed=0),
                fb.attacks.L2ProjectedGradientDescentAttack(steps=pgd_steps),
            ),
            (
                "PGD Linf",
                math.inf,
                2 / 255,
                lambda r: ca.LinfClippingAwarePGD(steps=pgd_steps, rescaling=r, seed=0),
                fb.attacks.LinfProjectedGradientDescentAttack(steps=pgd_steps),
            ),
        ],
        "noise": [
            (
                "Gaussian noise L2 (100 draws)",
                2.0,
                8.0,
                lambda r: ca.L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(
                    rescaling=r, seed=0, repeats=100
                ),
                fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack(repeats=100),
            ),
            (
                "Uniform noise Linf (100 draws)",
                math.inf,
                32 / 255,
                lambda r: ca.LinfClippingAwareRepeatedAdditiveUniformNoiseAttack(
                    rescaling=r, seed=0, repeats=100
                ),
                fb.attacks.LinfRepeatedAdditiveUniformNoiseAttack(repeats=100),
            ),
        ],
        "boundary": [
            (
                "Boundary L2 (200 steps)",
                2.0,
                1.0,
                lambda r: ca.ClippingAwareBoundaryAttack(steps=200, rescaling=r, seed=0),
                fb.attacks.BoundaryAttack(steps=200),
            ),
        ],
    }


def effective_norms(x: torch.Tensor, clipped: torch.Tensor, p: float) -> torch.Tensor:
    return (clipped - x).flatten(1).norm(p=p, dim=1)


def measure(
    attack: Any,
    model: fb.PyTorchModel,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    p: float,
    repeats: int,
) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        start = time.perf_counter()
        _, clipped, success = attack(model, x, y, epsilons=eps)
        times.append(time.perf_counter() - start)
    ratio = effective_norms(x, clipped, p) / eps
    return {
        "success_rate": success.float().mean().item(),
        "median_norm_over_eps": ratio.median().item(),
        "seconds": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--families", nargs="+", default=["pgd", "noise", "boundary"])
    parser.add_argument("--out", type=Path, default=Path("bench_results/attacks.json"))
    args = parser.parse_args()

    model = fb.PyTorchModel(load_model("cifar10_resnet18"), bounds=(0.0, 1.0))
    x, y = load_samples("foolbox_cifar10", n=args.n)
    rows = []
    header = (
        f"{'attack':32s} {'variant':10s} {'success':>8s} {'norm/eps':>9s} {'s':>7s} "
        f"{'vs naive':>9s}"
    )
    print(header)
    print("-" * len(header))
    table = families()
    for family in args.families:
        for label, p, eps, ours, theirs in table[family]:
            results = {
                v: measure(ours(v), model, x, y, eps, p, args.repeats)
                for v in ("naive", "car", "bisection")
            }
            results["foolbox"] = measure(theirs, model, x, y, eps, p, args.repeats)
            for variant, r in results.items():
                r["time_vs_naive"] = r["seconds"] / results["naive"]["seconds"]
                rows.append(
                    {"family": family, "attack": label, "p": p, "eps": eps, "variant": variant, **r}
                )
                print(
                    f"{label:32s} {variant:10s} {r['success_rate']:8.2f} "
                    f"{r['median_norm_over_eps']:9.3f} {r['seconds']:7.2f} "
                    f"{r['time_vs_naive']:9.2f}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "foolbox": fb.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "n": args.n,
        "repeats": args.repeats,
    }
    args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
