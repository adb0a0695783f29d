"""Minimum-norm attacks: our FMN (L1, L2, L-inf) and DDN, car and naive, beside foolbox's.

Same model (the shipped ``fashion_mnist_cnn_pgd``), same images (Fashion-MNIST test set),
same number of steps, one process. For every attack prints the success rate and the median
L_p norm of the returned perturbation over the correctly classified images (a failure
counts as an infinite norm), the wall time and the time of car relative to naive; writes
JSON. Timings on a shared machine are noisy: compare the ratios measured side by side.

Usage: python scripts/bench_fmn.py [--n 200] [--steps 100] [--dataset fashion_mnist]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import foolbox as fb
import torch

import car_attacks.attacks as ca
from car_attacks.data import load_samples
from car_attacks.models import load_model

MODEL = "fashion_mnist_cnn_pgd"


def attacks(steps: int) -> list[tuple[str, float, Callable[[str], Any], Any]]:
    """[(label, p, rescaling -> our attack, foolbox's attack)], all at ``steps`` steps."""
    return [
        (
            "FMN L1",
            1.0,
            lambda r: ca.L1ClippingAwareFMN(steps=steps, rescaling=r),
            fb.attacks.L1FMNAttack(steps=steps),
        ),
        (
            "FMN L2",
            2.0,
            lambda r: ca.L2ClippingAwareFMN(steps=steps, rescaling=r),
            fb.attacks.L2FMNAttack(steps=steps),
        ),
        (
            "FMN Linf",
            math.inf,
            lambda r: ca.LinfClippingAwareFMN(steps=steps, rescaling=r),
            fb.attacks.LInfFMNAttack(steps=steps),
        ),
        (
            "DDN L2",
            2.0,
            lambda r: ca.L2ClippingAwareDDN(steps=steps, rescaling=r, seed=0),
            fb.attacks.DDNAttack(steps=steps),
        ),
    ]


def measure(
    attack: Any, fmodel: fb.PyTorchModel, x: torch.Tensor, y: torch.Tensor, p: float
) -> dict[str, float]:
    """Success rate, median found norm (failures: inf) and wall time of one run."""
    start = time.perf_counter()
    adv = attack.run(fmodel, x, y)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        success = fmodel(adv).argmax(-1) != y
    norms = (adv - x).flatten(1).norm(p=p, dim=1)
    found = torch.where(success, norms, torch.full_like(norms, math.inf))
    return {
        "success_rate": float(success.float().mean()),
        "median_norm": float(found.median()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--out", default="bench_results/fmn.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = load_model(MODEL)
    fmodel = fb.PyTorchModel(net, bounds=(0.0, 1.0))
    x, y = load_samples(args.dataset, n=args.n)
    with torch.no_grad():
        correct = fmodel(x).argmax(-1) == y
    x, y = x[correct], y[correct]
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    meta = {
        "model": MODEL,
        "dataset": args.dataset,
        "n": args.n,
        "n_correct": len(x),
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    header = f"{'attack':10} {'variant':8} {'success':>8} {'median norm':>12} {'seconds':>8}"
    print(f"{MODEL}, {len(x)} of {args.n} {args.dataset} images classified correctly")
    print(header)
    for label, p, ours, theirs in attacks(args.steps):
        results = {
            "foolbox": measure(theirs, fmodel, x, y, p),
            "naive": measure(ours("naive"), fmodel, x, y, p),
            "car": measure(ours("car"), fmodel, x, y, p),
        }
        for variant, r in results.items():
            print(
                f"{label:10} {variant:8} {r['success_rate']:8.3f} {r['median_norm']:12.5f} "
                f"{r['seconds']:8.2f}"
            )
        ratio = results["car"]["seconds"] / results["naive"]["seconds"]
        print(f"{label:10} car / naive wall time {ratio:.2f}")
        rows.append({"attack": label, "p": p, "results": results, "car_over_naive_time": ratio})
        write(out, meta, rows)  # after every attack, so an interrupted run keeps its rows
    print(f"wrote {out}")


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The JSON of ``rows`` and the run's ``meta`` at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
