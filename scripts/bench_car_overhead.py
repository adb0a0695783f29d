"""CAR's runtime cost over naive rescaling in APGD-CE on the CIFAR-10 ResNet-18.

Our L1, L2 and L-inf APGD-CE (100 steps, seed 0) on foolbox's 20 CIFAR-10 images, with
``rescaling="car"`` and ``"naive"``, ``--repeats`` times each in alternating order (car
first in even rounds, naive first in odd ones), one torch thread, CPU time
(``time.process_time``, robust to other load on the machine). Prints the median times and
their ratio per norm and writes ``bench_results/car_overhead.json``. Issue 11's target:
ratio <= 1.05.

Usage: OMP_NUM_THREADS=1 python scripts/bench_car_overhead.py [--repeats 3] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import foolbox as fb
import torch

from car_attacks.attacks import L1ClippingAwareAPGD, L2ClippingAwareAPGD, LinfClippingAwareAPGD
from car_attacks.attacks.apgd import ClippingAwareAPGD
from car_attacks.data import load_samples
from car_attacks.models import load_model

#: norm -> (attack class, eps in [0, 1] pixel units: the smaller eps of bench_strength)
CASES: dict[str, tuple[type[ClippingAwareAPGD], float]] = {
    "l2": (L2ClippingAwareAPGD, 0.1),
    "linf": (LinfClippingAwareAPGD, 1 / 255),
    "l1": (L1ClippingAwareAPGD, 4.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="bench_results/car_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_samples("foolbox_cifar10", n=20)
    fmodel = fb.PyTorchModel(load_model("cifar10_resnet18").eval(), bounds=(0, 1))
    results: dict[str, dict[str, object]] = {}
    for norm, (cls, eps) in CASES.items():
        times: dict[str, list[float]] = {"car": [], "naive": []}
        for rep in range(args.repeats):
            for rescaling in ("car", "naive") if rep % 2 == 0 else ("naive", "car"):
                attack = cls(steps=args.steps, loss="ce", rescaling=rescaling, seed=0)
                start = time.process_time()
                attack(fmodel, x, y, epsilons=[eps])
                times[rescaling].append(time.process_time() - start)
        car, naive = statistics.median(times["car"]), statistics.median(times["naive"])
        results[norm] = {"eps": eps, "car_s": car, "naive_s": naive, "ratio": car / naive}
        results[norm]["runs"] = times
        print(f"{norm}: car {car:.2f} s, naive {naive:.2f} s, car / naive {car / naive:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "repeats": args.repeats, "images": 20, "threads": 1}
    out.write_text(json.dumps({"settings": meta, "norms": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
