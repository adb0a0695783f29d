"""Attack strength at equal iterations: our attacks against the peers' on the same images.

Per model and norm, with the same number of iterations and restarts (one process):

* APGD-CE: ours (car, naive) vs pyautoattack's APGD: robust accuracy at eps, wall time;
* FMN: ours (car, naive) vs foolbox's FMN (and adv-lib's where installed): median norm of
  the adversarial found over the correctly classified images (failure = infinite norm;
  ``null`` in the JSON when more than half of them were not fooled);
* DDN (L2): ours vs foolbox's DDN (and adv-lib's);
* ``ClippingAwareAutoAttack(version="standard")`` vs pyautoattack's
  ``AutoAttack(version="standard")`` (its APGD and FAB iterations set to ``--steps``,
  Square to ``--square-queries``): robust accuracy and wall time;
* CAR's runtime overhead: time(car) / time(naive) for APGD and FMN.

Models: the shipped Fashion-MNIST models on the first ``--n`` test images (Debian's
``dataset-fashion-mnist``) and the CIFAR-10 ResNet-18 on foolbox's 20 CIFAR-10 images.
Prints a table and writes ``bench_results/strength.json``. Timings on a shared machine are
noisy: compare ratios measured side by side.

Usage: python scripts/bench_strength.py [--n 1000] [--steps 100] [--models ...] [--norms ...]
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
from foolbox.criteria import Misclassification
from torch import Tensor

import car_attacks.attacks as ca
from car_attacks.attacks.apgd import (
    ClippingAwareAPGD,
    L1ClippingAwareAPGD,
    L2ClippingAwareAPGD,
    LinfClippingAwareAPGD,
)
from car_attacks.attacks.fmn import ClippingAwareFMN
from car_attacks.data import load_samples
from car_attacks.evaluation.methods import AttackTarget
from car_attacks.evaluation.peers import APGD_NORMS, APGDPeer
from car_attacks.models import load_model

FASHION = ("fashion_mnist_cnn", "fashion_mnist_cnn_noise", "fashion_mnist_cnn_pgd")
MODELS = {name: "fashion_mnist" for name in (*FASHION, "fashion_mnist_bcop")}
MODELS["cifar10_resnet18"] = "foolbox_cifar10"
#: eps per data set and norm (input units, pixels in [0, 1]).
EPS = {
    "fashion_mnist": {"linf": 0.1, "l2": 1.5, "l1": 15.0},
    "foolbox_cifar10": {"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
}
P = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
APGD: dict[str, type[ClippingAwareAPGD]] = {
    "l1": L1ClippingAwareAPGD,
    "l2": L2ClippingAwareAPGD,
    "linf": LinfClippingAwareAPGD,
}
FMN: dict[str, type[ClippingAwareFMN]] = {
    "l1": ca.L1ClippingAwareFMN,
    "l2": ca.L2ClippingAwareFMN,
    "linf": ca.LinfClippingAwareFMN,
}
FB_FMN: dict[str, Callable[..., Any]] = {
    "l1": fb.attacks.L1FMNAttack,
    "l2": fb.attacks.L2FMNAttack,
    "linf": fb.attacks.LInfFMNAttack,
}


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def robust(model: torch.nn.Module, adv: Tensor, y: Tensor, correct: Tensor) -> float:
    with torch.no_grad():
        return float((correct & (model(adv).argmax(1) == y)).float().mean())


def median_norm(model: torch.nn.Module, x: Tensor, adv: Tensor, y: Tensor, p: float) -> float:
    """Median over the correctly classified images of the norm found (failure: inf)."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(adv).argmax(1) != y
    norms = (adv - x).flatten(1).norm(p=p, dim=1)
    norms = torch.where(fooled, norms, torch.full_like(norms, math.inf))[correct]
    return float(norms.median()) if len(norms) else math.nan


def have_adv_lib() -> bool:
    try:
        import adv_lib  # noqa: F401
    except ImportError:
        return False
    return True


def bench_apgd(row: dict[str, Any], ctx: dict[str, Any], steps: int) -> None:
    model, fmodel, x, y, norm, eps = (ctx[k] for k in ("model", "fmodel", "x", "y", "norm", "eps"))
    correct = model(x).argmax(1) == y
    for r in ("car", "naive"):
        attack = APGD[norm](steps=steps, loss="ce", rescaling=r, seed=0)
        adv, t = timed(lambda: attack(fmodel, x, y, epsilons=[eps])[1][0])  # noqa: B023
        row[f"apgd_{r}_robust"], row[f"apgd_{r}_s"] = robust(model, adv, y, correct), t
    peer = APGDPeer(norm=norm, params={"n_iter": steps, "n_restarts": 1, "loss": "ce"})
    adv, t = timed(lambda: peer.perturb(model, (0.0, 1.0), x, y, eps, 0))
    row["apgd_autoattack_robust"], row["apgd_autoattack_s"] = robust(model, adv, y, correct), t


def bench_minimization(row: dict[str, Any], ctx: dict[str, Any], steps: int) -> None:
    model, fmodel, x, y, norm = (ctx[k] for k in ("model", "fmodel", "x", "y", "norm"))
    p, crit = P[norm], Misclassification(y)
    target = AttackTarget(model, model, fmodel, (0.0, 1.0))

    def run(attack: Any) -> Callable[[], Tensor]:
        def go() -> Tensor:
            out: Tensor = attack.run(fmodel, x, crit)
            return out

        return go

    def found(peer: Any) -> Callable[[], Tensor]:
        def go() -> Tensor:
            out: Tensor = peer.run(target, x, y, (), 0).found
            return out

        return go

    attacks = [(f"fmn_{r}", run(FMN[norm](steps=steps, rescaling=r))) for r in ("car", "naive")]
    attacks.append(("fmn_foolbox", run(FB_FMN[norm](steps=steps))))
    if norm == "l2":
        attacks.append(("ddn_car", run(ca.L2ClippingAwareDDN(steps=steps, seed=0))))
        attacks.append(("ddn_foolbox", run(fb.attacks.DDNAttack(steps=steps))))
    if have_adv_lib():
        from car_attacks.evaluation.adv_lib_peers import AdvLibPeer

        names = [("fmn", {"steps": steps})] + ([("ddn", {"steps": steps})] if norm == "l2" else [])
        for name, params in names:
            peer = AdvLibPeer(attack=name, norm=norm, params=params)
            attacks.append((f"{name}_adv_lib", found(peer)))
    for label, fn in attacks:
        adv, t = timed(fn)
        row[f"{label}_median"], row[f"{label}_s"] = median_norm(model, x, adv, y, p), t


def bench_autoattack(row: dict[str, Any], ctx: dict[str, Any], steps: int, queries: int) -> None:
    from pyautoattack import AutoAttack

    model, fmodel, x, y, norm, eps = (ctx[k] for k in ("model", "fmodel", "x", "y", "norm", "eps"))
    correct = model(x).argmax(1) == y
    ours = ca.ClippingAwareAutoAttack(norm=norm, steps=steps, seed=0)
    adv, t = timed(lambda: ours(fmodel, x, y, epsilons=[eps])[1][0])
    row["ensemble_car_robust"], row["ensemble_car_s"] = robust(model, adv, y, correct), t
    aa = AutoAttack(model, norm=APGD_NORMS[norm], eps=eps, version="standard", seed=0)
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = steps
    aa.square.n_queries = queries
    adv, t = timed(lambda: aa.run_standard_evaluation(x, y, batch_size=len(x))[0])
    row["autoattack_robust"], row["autoattack_s"] = robust(model, adv, y, correct), t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="Fashion-MNIST test images")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--norms", nargs="+", default=["linf", "l2", "l1"], choices=list(P))
    ap.add_argument("--autoattack-norms", nargs="*", default=["linf", "l2"], choices=list(P))
    ap.add_argument("--out", default="bench_results/strength.json")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.models:
        data = MODELS[name]
        n = args.n if data == "fashion_mnist" else 20
        x, y = load_samples(data, n=n)
        model = load_model(name).eval()
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        for norm in args.norms:
            eps = EPS[data][norm]
            ctx = {"model": model, "fmodel": fmodel, "x": x, "y": y, "norm": norm, "eps": eps}
            row: dict[str, Any] = {"model": name, "n": n, "norm": norm, "eps": eps, "clean": clean}
            bench_apgd(row, ctx, args.steps)
            bench_minimization(row, ctx, args.steps)
            if norm in args.autoattack_norms:
                bench_autoattack(row, ctx, args.steps, args.square_queries)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "steps": args.steps,
        "square_queries": args.square_queries,
        "python": platform.python_version(),
    }
    finite = [
        {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()}
        for r in rows
    ]
    out.write_text(json.dumps({"settings": meta, "rows": finite}, indent=2) + "\n")
    print(f"wrote {out}")


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("apgd_car_robust", "APGD car"),
        ("apgd_autoattack_robust", "APGD AA"),
        ("fmn_car_median", "FMN car med"),
        ("fmn_foolbox_median", "FMN fb med"),
        ("fmn_adv_lib_median", "FMN advlib"),
        ("ddn_car_median", "DDN car"),
        ("ddn_foolbox_median", "DDN fb"),
        ("ensemble_car_robust", "ens car"),
        ("autoattack_robust", "AA std"),
        ("ensemble_car_s", "ens s"),
        ("autoattack_s", "AA s"),
    ]
    head = ["model", "norm", "eps"] + [c[1] for c in cols] + ["APGD car/naive t", "FMN car/naive t"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], r["norm"], f"{r['eps']:.4g}"]
        cells += ["" if k not in r else f"{r[k]:.4g}" for k, _ in cols]
        for a in ("apgd", "fmn"):
            cells.append(f"{r[f'{a}_car_s'] / r[f'{a}_naive_s']:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
