"""Which ascent direction should L1 PGD use? Measure the candidates side by side.

All candidates run inside the same clipping-aware L1 PGD (exact CAR steps, exact
L1-ball ∩ box projection) on the same model, data, eps and step budget; only the
``direction`` hook differs:

* ``dense``: the L1-normalised gradient (foolbox's L1 PGD);
* ``sign-q``: the gradient sign on the top ``q`` fraction of coordinates that
  can still move (sparse L1 descent, Tramèr & Boneh 2019, masked like APGD-L1);
* ``top1``: a single coordinate per sample (the steepest L1 direction).

Usage: python scripts/bench_l1_direction.py [--n 20] [--steps 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import eagerpy as ep
import foolbox as fb
import torch

from car_attacks.attacks import L1ClippingAwarePGD
from car_attacks.attacks.gradient import Bounds, sparse_sign_direction
from car_attacks.data import load_samples
from car_attacks.models import load_model


class DenseL1PGD(L1ClippingAwarePGD):
    """L1 PGD with foolbox's dense direction ``g / ||g||_1``."""

    def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
        return gradient


def sparse_pgd(fraction: float) -> type[L1ClippingAwarePGD]:
    """L1 PGD with the sign of the top ``fraction`` movable gradient coordinates."""

    class SparseL1PGD(L1ClippingAwarePGD):
        def direction(self, gradient: ep.Tensor, *, x: ep.Tensor, bounds: Bounds) -> ep.Tensor:
            return sparse_sign_direction(gradient, x, bounds, fraction)

    return SparseL1PGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="number of CIFAR-10 samples")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0, 6.0, 12.0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/l1_direction.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = fb.PyTorchModel(load_model("cifar10_resnet18"), bounds=(0.0, 1.0))
    x, y = load_samples("foolbox_cifar10", n=args.n)
    candidates: dict[str, type[L1ClippingAwarePGD]] = {"dense": DenseL1PGD}
    for q in (0.001, 0.01, 0.05, 0.2):
        candidates[f"sign-{q:g}"] = sparse_pgd(q)
    candidates["top1"] = sparse_pgd(1e-9)

    rows = []
    for name, cls in candidates.items():
        attack = cls(steps=args.steps, seed=0)
        start = time.perf_counter()
        _, clipped, success = attack(model, x, y, epsilons=args.epsilons)
        seconds = time.perf_counter() - start
        rate = success.float().mean(dim=1).tolist()
        rows.append({"direction": name, "success_rate": rate, "seconds": seconds})
        cells = "  ".join(f"{r:5.2f}" for r in rate)
        print(f"{name:10s} {cells}  ({seconds:.1f} s)", flush=True)

    best = max(rows, key=lambda r: (sum(r["success_rate"]), -r["seconds"]))
    print(f"best direction: {best['direction']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": "cifar10_resnet18",
                "n": args.n,
                "steps": args.steps,
                "epsilons": args.epsilons,
                "rows": rows,
                "best": best["direction"],
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
