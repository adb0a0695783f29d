#!/usr/bin/env python
"""The clipping-aware attacks on a CUDA device against the same attacks on the CPU.

On the shipped BCOP Fashion-MNIST model, for APGD (L1, L2, L-inf), FMN (L1, L2), DDN and
``ClippingAwareAutoAttack`` (fast): the foolbox contract on each device (every output in
the box and within eps, the returned success equal to the model's verdict) and the robust
accuracy on both devices side by side, with the wall time. Exits 1 where a contract check
fails. Example (all 10,000 test images need Debian's Fashion-MNIST or ``--root``)::

    python scripts/check_cuda.py --n 2000 --devices cuda,cpu
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import foolbox as fb
import torch

from car_attacks.attacks import (
    ClippingAwareAutoAttack,
    L1ClippingAwareAPGD,
    L1ClippingAwareFMN,
    L2ClippingAwareAPGD,
    L2ClippingAwareDDN,
    L2ClippingAwareFMN,
    LinfClippingAwareAPGD,
)
from car_attacks.data.datasets import load_samples
from car_attacks.models import load_model


def cases(steps: int) -> list[tuple[fb.attacks.base.Attack, float, float]]:
    """``(attack, p, eps)`` of the check."""
    return [
        (L2ClippingAwareAPGD(steps=steps), 2.0, 1.0),
        (L1ClippingAwareAPGD(steps=steps), 1.0, 8.0),
        (LinfClippingAwareAPGD(steps=steps), math.inf, 0.1),
        (L2ClippingAwareFMN(steps=steps), 2.0, 1.0),
        (L1ClippingAwareFMN(steps=steps), 1.0, 8.0),
        (L2ClippingAwareDDN(steps=steps), 2.0, 1.0),
        (ClippingAwareAutoAttack(norm="l2", version="fast"), 2.0, 1.0),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=500, help="test images (default 500)")
    ap.add_argument(
        "--data",
        default="fashion_mnist",
        help="fashion_mnist (Debian's files or --root) or foolbox_fashion_mnist (20 images)",
    )
    ap.add_argument("--root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument("--devices", default="cuda,cpu", help="comma list of torch devices")
    ap.add_argument("--steps", type=int, default=20, help="steps of each attack (default 20)")
    args = ap.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if any(torch.device(d).type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit(f"--devices {args.devices}: CUDA is not available here")
    x_all, y_all = load_samples(args.data, n=args.n, root=args.root)
    robust: dict[tuple[str, str], float] = {}
    ok = True
    for dev in devices:
        net = load_model("fashion_mnist_bcop").eval().to(dev)
        fmodel = fb.PyTorchModel(net, bounds=(0, 1), device=dev)
        x, y = x_all.to(dev), y_all.to(dev)
        for attack, p, eps in cases(args.steps):
            name = type(attack).__name__
            t0 = time.perf_counter()
            _, clipped, success = attack(fmodel, x, y, epsilons=[eps])
            if torch.device(dev).type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            adv = clipped[0]
            norms = (adv - x).flatten(1).norm(p=p, dim=1)
            in_box = bool(((adv >= 0) & (adv <= 1)).all())
            within = bool((norms <= eps * (1 + 1e-5)).all())
            with torch.no_grad():
                agrees = bool(((net(adv).argmax(1) != y) == success[0]).all())
            ok = ok and in_box and within and agrees
            robust[(dev, name)] = float(1 - success[0].float().mean())
            print(
                f"{dev:6s} {name:26s} eps {eps:<4g} robust accuracy {robust[(dev, name)]:.3f}"
                f"  in box {in_box}  within eps {within}  success == model {agrees}"
                f"  {seconds:.2f} s",
                flush=True,
            )
    if len(devices) > 1:
        for attack, _, _ in cases(args.steps):
            name = type(attack).__name__
            accs = ", ".join(f"{d} {robust[(d, name)]:.3f}" for d in devices)
            print(f"{name:26s} robust accuracy {accs}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
