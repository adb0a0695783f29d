"""Clipping-aware APGD against pyautoattack's APGD-CE on the shipped Fashion-MNIST nets.

For each model, norm and eps: robust accuracy (fraction of images still classified
correctly) of our APGD with ``rescaling="car"`` and ``"naive"`` and of
``pyautoattack.autopgd_base.APGDAttack`` (CE loss, one restart, the same steps), and the
mean effective Lp norm / eps of the successful adversarials and of one run's best-loss
points (the budget an attack's iterates keep after clipping). Timings on a shared machine are noisy.

Usage: python scripts/bench_apgd.py [--n 200] [--steps 20] [--models fashion_mnist_cnn_pgd ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import eagerpy as ep
import foolbox as fb
import torch
from pyautoattack.autopgd_base import APGDAttack

from car_attacks.attacks import L1ClippingAwareAPGD, L2ClippingAwareAPGD, LinfClippingAwareAPGD
from car_attacks.attacks.apgd import ClippingAwareAPGD
from car_attacks.data import load_samples
from car_attacks.models import load_model

SETTINGS: list[tuple[type[ClippingAwareAPGD], str, float]] = [
    (L2ClippingAwareAPGD, "L2", 1.0),
    (L2ClippingAwareAPGD, "L2", 1.5),
    (LinfClippingAwareAPGD, "Linf", 0.10),
    (LinfClippingAwareAPGD, "Linf", 0.15),
    (L1ClippingAwareAPGD, "L1", 8.0),
    (L1ClippingAwareAPGD, "L1", 15.0),
]
P = {"L1": 1.0, "L2": 2.0, "Linf": float("inf")}


def summary(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, norm: str, eps: float
) -> dict[str, float]:
    """Robust accuracy and the mean Lp norm / eps of the successful adversarials."""
    with torch.no_grad():
        fooled = net(adv).argmax(-1) != y
        attacked = net(x).argmax(-1) == y  # clean mistakes have norm 0: left out of the mean
    norms = (adv - x).flatten(1).norm(p=P[norm], dim=1)
    moved = fooled & attacked
    ratio = float((norms[moved] / eps).mean()) if bool(moved.any()) else float("nan")
    return {"robust_accuracy": 1.0 - float(fooled.float().mean()), "norm_over_eps": ratio}


def best_point_ratio(
    net: torch.nn.Module, x: torch.Tensor, adv: torch.Tensor, norm: str, eps: float
) -> float:
    """Mean ``||x_best - x||_p / eps`` of the best-loss points: the budget the iterates keep."""
    return float(((adv - x).flatten(1).norm(p=P[norm], dim=1) / eps).mean())


def our_best_points(
    attack: ClippingAwareAPGD, fmodel: fb.PyTorchModel, x: torch.Tensor, y: torch.Tensor, eps: float
) -> torch.Tensor:
    """One run's best-loss points (``single_run`` from the attack's random start)."""
    xe, ye = ep.astensor(x), ep.astensor(y)
    e = ep.full(xe, (len(x),), eps)
    start = attack.start_point(xe, e, (0.0, 1.0), 0)
    loss = attack.per_sample_loss(ye, ye, 0)
    return attack.single_run(fmodel, xe, ye, loss, e, start, (0.0, 1.0)).best.raw


def run_setting(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cls: type[ClippingAwareAPGD],
    norm: str,
    eps: float,
    steps: int,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    fmodel = fb.PyTorchModel(net, bounds=(0.0, 1.0))
    for rescaling in ("car", "naive"):
        start = time.perf_counter()
        attack = cls(steps=steps, rescaling=rescaling, seed=0)
        adv = attack(fmodel, x, y, epsilons=[eps])[1][0]
        out[rescaling] = summary(net, x, y, adv, norm, eps)
        out[rescaling]["seconds"] = time.perf_counter() - start
        best = our_best_points(attack, fmodel, x, y, eps)
        out[rescaling]["best_point_norm_over_eps"] = best_point_ratio(net, x, best, norm, eps)
    start = time.perf_counter()
    torch.manual_seed(0)
    reference = APGDAttack(net, n_iter=steps, norm=norm, eps=eps, loss="ce", seed=0)
    adv = reference.perturb(x, y).detach()
    out["pyautoattack"] = summary(net, x, y, adv, norm, eps)
    out["pyautoattack"]["seconds"] = time.perf_counter() - start
    best = reference.perturb(x, y, best_loss=True).detach()
    out["pyautoattack"]["best_point_norm_over_eps"] = best_point_ratio(net, x, best, norm, eps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--models", nargs="+", default=["fashion_mnist_cnn_pgd", "fashion_mnist_bcop"]
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results/apgd.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = load_samples("fashion_mnist", n=args.n)
    rows = []
    print(
        f"{'model':24} {'norm':5} {'eps':>6} | robust accuracy: car naive pyaa "
        "| adversarials' norm/eps | best-loss points' norm/eps"
    )
    for model in args.models:
        net = load_model(model).eval()
        for cls, norm, eps in SETTINGS:
            res = run_setting(net, x, y, cls, norm, eps, args.steps)
            rows.append({"model": model, "norm": norm, "eps": eps, **res})
            acc = " ".join(f"{res[k]['robust_accuracy']:.3f}" for k in res)
            ratio = " ".join(f"{res[k]['norm_over_eps']:.3f}" for k in res)
            kept = " ".join(f"{res[k]['best_point_norm_over_eps']:.3f}" for k in res)
            print(f"{model:24} {norm:5} {eps:6.2f} | {acc} | {ratio} | {kept}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "steps": args.steps, "restarts": 1, "loss": "ce", "data": "fashion_mnist"}
    args.out.write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
