"""Attack strength at equal iterations: our attacks against the peers' on the same images.

Per model, norm and eps (2 eps per norm), with the same iterations and one restart:

* ``apgd`` rows: APGD-CE, ours (car, naive) vs pyautoattack's APGD and adv-lib's APGD
  (both with the CE loss): robust accuracy at eps and, per peer, the samples only ours
  fools and only theirs fools (``vs``);
* ``minimization`` rows (one per norm, eps-free): FMN, ours (car, naive) vs foolbox's and
  adv-lib's FMN; DDN (L2) ours vs foolbox's and adv-lib's (``levels=None``: no 8-bit
  quantization, like ours and foolbox's): median norm found over the correctly
  classified images (failure = ``inf``), per peer the samples where ours / theirs found
  the smaller norm and the fooled-at-eps counts at each eps of the norm;
* ``autoattack`` rows: ``ClippingAwareAutoAttack(version="standard")`` vs pyautoattack's
  ``AutoAttack(version="standard")`` (its APGD and FAB iterations set to ``--steps``,
  Square to ``--square-queries``) on the first ``--autoattack-n`` images;
* CAR's runtime overhead: time(car) / time(naive) for APGD and FMN, from the rows.

Every attack is timed on the wall clock and on ``time.process_time`` (CPU seconds; run
with ``--threads 1`` on a shared machine). Models: the shipped Fashion-MNIST models on the
first ``--n`` test images (Debian's ``dataset-fashion-mnist``; ``--fashion-data
foolbox_fashion_mnist`` for foolbox's 20), the CIFAR-10 ResNet-18 on foolbox's 20 CIFAR-10
images and EfficientNet-Lite0 on foolbox's 20 ImageNet images. The JSON is rewritten
after every row; ``--resume`` keeps its rows and skips them.

Usage: python scripts/bench_strength.py [--n 1000] [--steps 100] [--models ...] [--norms ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
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
from car_attacks.benchmarks.strength_compare import (
    ResultsFile,
    Timed,
    fooled,
    found_norms,
    median,
    norm_counts,
    pair_counts,
    timed,
)
from car_attacks.data import load_samples
from car_attacks.evaluation.adv_lib_peers import AdvLibPeer
from car_attacks.evaluation.methods import AttackTarget
from car_attacks.evaluation.peers import APGD_NORMS, APGDPeer
from car_attacks.models import load_model

FASHION = ("fashion_mnist_cnn_pgd", "fashion_mnist_bcop", "fashion_mnist_cnn_noise")
MODELS = {name: "fashion_mnist" for name in (*FASHION, "fashion_mnist_cnn")}
MODELS["cifar10_resnet18"] = "foolbox_cifar10"
MODELS["imagenet_efficientnet_lite0"] = "foolbox_imagenet"
#: eps per data set and norm (input units, pixels in [0, 1]): Fashion-MNIST as in issue
#: 11, CIFAR-10 / ImageNet as in configs/cifar10_resnet18.yaml and
#: configs/imagenet_efficientnet_lite0.yaml.
EPS = {
    "fashion_mnist": {"linf": (0.10, 0.15), "l2": (1.0, 1.5), "l1": (8.0, 15.0)},
    "foolbox_cifar10": {"linf": (1 / 255, 4 / 255), "l2": (0.1, 0.5), "l1": (4.0, 16.0)},
    "foolbox_imagenet": {"linf": (0.25 / 255, 1 / 255), "l2": (0.1, 0.5), "l1": (10.0, 50.0)},
}
SHIPPED = 20
"""Images foolbox ships per data set (CIFAR-10, ImageNet)."""
BOUNDS = (0.0, 1.0)
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
RESTARTS = 1


class Case:
    """One model on its images, in one norm."""

    def __init__(self, name: str, model: torch.nn.Module, x: Tensor, y: Tensor, norm: str):
        self.name, self.model, self.x, self.y, self.norm = name, model, x, y, norm
        self.fmodel = fb.PyTorchModel(model, bounds=BOUNDS)
        self.target = AttackTarget(model, model, self.fmodel, BOUNDS)
        with torch.no_grad():
            self.correct = model(x).argmax(1) == y

    def head(self, part: str, steps: int, eps: float | None) -> dict[str, Any]:
        return {
            "part": part,
            "model": self.name,
            "n": len(self.x),
            "norm": self.norm,
            "eps": eps,
            "steps": steps,
            "restarts": RESTARTS,
            "correct": int(self.correct.sum()),
        }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def record(row: dict[str, Any], label: str, t: Timed) -> None:
    row.setdefault("wall_s", {})[label] = t.wall_s
    row.setdefault("cpu_s", {})[label] = t.cpu_s
    log(
        f"  {row['part']} {row['model']} {row['norm']} eps={row['eps']} {label}: "
        f"wall {t.wall_s:.1f} s, cpu {t.cpu_s:.1f} s"
    )


def fixed_eps_row(
    case: Case, part: str, steps: int, eps: float, attacks: list[tuple[str, Callable[[], Tensor]]]
) -> dict[str, Any]:
    """Robust accuracy of each attack at ``eps``; ``vs``: the first attack against each other."""
    row = case.head(part, steps, eps)
    masks: dict[str, Tensor] = {}
    for label, fn in attacks:
        t = timed(fn)
        record(row, label, t)
        masks[label] = fooled(case.model, case.x, t.out, case.y)
    n = len(case.x)
    row["robust_count"] = {k: int(case.correct.sum() - m.sum()) for k, m in masks.items()}
    row["robust"] = {k: c / n for k, c in row["robust_count"].items()}
    ours, *peers = list(masks)
    row["vs"] = {peer: pair_counts(masks[ours], masks[peer]) for peer in peers}
    return row


def apgd_row(case: Case, steps: int, eps: float, seed: int) -> dict[str, Any]:
    model, x, y, norm = case.model, case.x, case.y, case.norm

    def ours(rescaling: Any) -> Callable[[], Tensor]:
        attack = APGD[norm](
            steps=steps, restarts=RESTARTS, loss="ce", rescaling=rescaling, seed=seed
        )
        return lambda: attack(case.fmodel, x, y, epsilons=[eps])[1][0]

    aa = APGDPeer(norm=norm, params={"n_iter": steps, "n_restarts": RESTARTS, "loss": "ce"})
    adv_lib = AdvLibPeer(
        attack="apgd",
        norm=norm,
        params={"n_iter": steps, "n_restarts": RESTARTS, "loss_function": "ce"},
    )
    attacks = [
        ("car", ours("car")),
        ("naive", ours("naive")),
        ("autoattack", lambda: aa.perturb(model, BOUNDS, x, y, eps, seed)),
        ("adv_lib", lambda: adv_lib.run(case.target, x, y, (eps,), seed).clipped[0]),
    ]
    return fixed_eps_row(case, "apgd", steps, eps, attacks)


def minimization_row(
    case: Case, steps: int, eps_grid: tuple[float, ...], seed: int
) -> dict[str, Any]:
    model, fmodel, x, y, norm = case.model, case.fmodel, case.x, case.y, case.norm
    crit = Misclassification(y)

    def run(attack: Any) -> Callable[[], Tensor]:
        return lambda: attack.run(fmodel, x, crit)

    def found(peer: AdvLibPeer) -> Callable[[], Tensor]:
        def go() -> Tensor:
            out = peer.run(case.target, x, y, (), seed).found
            assert out is not None
            return out

        return go

    attacks = [
        (f"fmn_{r}", run(FMN[norm](steps=steps, rescaling=r, seed=seed))) for r in ("car", "naive")
    ]
    attacks.append(("fmn_foolbox", run(FB_FMN[norm](steps=steps))))
    attacks.append(
        ("fmn_adv_lib", found(AdvLibPeer(attack="fmn", norm=norm, params={"steps": steps})))
    )
    if norm == "l2":
        ddn = AdvLibPeer(attack="ddn", norm=norm, params={"steps": steps, "levels": None})
        attacks.append(("ddn_car", run(ca.L2ClippingAwareDDN(steps=steps, seed=seed))))
        attacks.append(("ddn_foolbox", run(fb.attacks.DDNAttack(steps=steps))))
        attacks.append(("ddn_adv_lib", found(ddn)))
    row = case.head("minimization", steps, None)
    row["eps_grid"] = list(eps_grid)
    norms: dict[str, Tensor] = {}
    for label, fn in attacks:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            t = timed(fn)
        record(row, label, t)
        norms[label] = found_norms(model, x, t.out, y, P[norm])
    row["median"] = {k: median(v) for k, v in norms.items()}
    row["robust_count_at_eps"] = {
        k: [int(case.correct.sum() - (v <= e).sum()) for e in eps_grid] for k, v in norms.items()
    }
    row["vs"] = {}
    for ours, peers in (
        ("fmn_car", ("fmn_naive", "fmn_foolbox", "fmn_adv_lib")),
        ("ddn_car", ("ddn_foolbox", "ddn_adv_lib")),
    ):
        for peer in peers:
            if ours in norms and peer in norms:
                a, b = norms[ours], norms[peer]
                counts: dict[str, Any] = norm_counts(a, b)
                counts["at_eps"] = [pair_counts(a <= e, b <= e) for e in eps_grid]
                row["vs"][f"{ours}:{peer}"] = counts
    return row


def autoattack_row(case: Case, steps: int, eps: float, queries: int, seed: int) -> dict[str, Any]:
    from pyautoattack import AutoAttack

    model, x, y, norm = case.model, case.x, case.y, case.norm
    ours = ca.ClippingAwareAutoAttack(norm=norm, steps=steps, seed=seed)
    aa = AutoAttack(
        model, norm=APGD_NORMS[norm], eps=eps, version="standard", seed=seed, device=x.device
    )
    aa.verbose = False
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = steps
    aa.square.n_queries = queries
    attacks = [
        ("ensemble_car", lambda: ours(case.fmodel, x, y, epsilons=[eps])[1][0]),
        ("autoattack", lambda: aa.run_standard_evaluation(x, y, batch_size=len(x))[0]),
    ]
    row = fixed_eps_row(case, "autoattack", steps, eps, attacks)
    row["square_queries"] = queries
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="Fashion-MNIST test images")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--norms", nargs="+", default=["linf", "l2", "l1"], choices=list(P))
    ap.add_argument("--autoattack-norms", nargs="*", default=["linf", "l2"], choices=list(P))
    ap.add_argument(
        "--autoattack-n",
        type=int,
        default=None,
        help="images for the AutoAttack rows (default: all)",
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["apgd", "minimization", "autoattack"],
        choices=["apgd", "minimization", "autoattack"],
    )
    ap.add_argument(
        "--fashion-data",
        default="fashion_mnist",
        choices=["fashion_mnist", "foolbox_fashion_mnist"],
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text stored in the JSON (load, machine)")
    ap.add_argument("--resume", action="store_true", help="keep and skip the rows in --out")
    ap.add_argument("--out", default="bench_results/strength.json")
    ap.add_argument("--table", action="store_true", help="only print the tables of --out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.table:
        rows: list[dict[str, Any]] = json.loads(Path(args.out).read_text())["rows"]
        print_tables(rows)
        return rows
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = {
        "steps": args.steps,
        "restarts": RESTARTS,
        "square_queries": args.square_queries,
        "n_fashion": args.n,
        "autoattack_n": args.autoattack_n,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["python", "scripts/bench_strength.py", *sys.argv[1:]])
        if argv is None
        else " ".join(["main", *argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_avg_at_start": list(os.getloadavg()),
        "clock": "wall_s: time.perf_counter; cpu_s: time.process_time (all threads)",
    }
    results = ResultsFile(Path(args.out), settings, args.note, args.resume)
    for name in args.models:
        data = MODELS[name]
        if data == "fashion_mnist":
            data, n = args.fashion_data, args.n
        else:
            n = SHIPPED
        x, y = load_samples(data, n=n)
        model = load_model(name).eval()
        eps_set = EPS[MODELS[name]]
        for part in args.parts:
            for norm in args.norms:
                if part == "autoattack" and norm not in args.autoattack_norms:
                    continue
                m = (
                    len(x)
                    if part != "autoattack" or args.autoattack_n is None
                    else min(len(x), args.autoattack_n)
                )
                case = Case(name, model, x[:m], y[:m], norm)
                for eps in (None,) if part == "minimization" else eps_set[norm]:
                    if results.done((part, name, m, norm, eps, args.steps)):
                        log(f"skip {part} {name} n={m} {norm} eps={eps} (in {args.out})")
                        continue
                    log(f"{part} {name} n={m} {norm} eps={eps}")
                    if part == "apgd":
                        row = apgd_row(case, args.steps, float(eps or 0), args.seed)
                    elif part == "minimization":
                        row = minimization_row(case, args.steps, eps_set[norm], args.seed)
                    else:
                        row = autoattack_row(
                            case, args.steps, float(eps or 0), args.square_queries, args.seed
                        )
                    row["load_avg"] = os.getloadavg()[0]
                    results.add(row)
    results.settings["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results.write()
    print_tables(results.rows)
    print(f"wrote {args.out}")
    return results.rows


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_tables(rows: list[dict[str, Any]]) -> None:
    """Markdown tables of the rows (robust accuracy with only-ours/only-theirs counts)."""
    for part in ("apgd", "autoattack"):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        labels = list(sel[0]["robust"])
        head = ["model", "n", "norm", "eps", *labels, *[f"{labels[0]} vs {p}" for p in labels[1:]]]
        head += ["cpu s " + "/".join(labels)]
        print(f"\n{part}: robust accuracy; vs: only ours fools / only theirs fools")
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in sel:
            cells = [r["model"], r["n"], r["norm"], f"{r['eps']:.4g}"]
            cells += [f"{r['robust'][k]:.3f}" for k in labels]
            cells += [f"{v['only_ours']}/{v['only_theirs']}" for v in r["vs"].values()]
            cells += ["/".join(f"{r['cpu_s'][k]:.0f}" for k in labels)]
            print("| " + " | ".join(map(str, cells)) + " |")
    sel = [r for r in rows if r["part"] == "minimization"]
    if sel:
        print("\nminimization: median norm; vs: samples ours smaller / theirs smaller")
        for r in sel:
            med = ", ".join(f"{k} {_fmt(v)}" for k, v in r["median"].items())
            vs = ", ".join(
                f"{k} {v['ours_smaller']}/{v['theirs_smaller']}" for k, v in r["vs"].items()
            )
            print(f"{r['model']} {r['norm']} n={r['n']}: {med}; {vs}")
    ratios = [
        (r["model"], r["norm"], r.get("eps"), a, r["cpu_s"][f"{p}car"] / r["cpu_s"][f"{p}naive"])
        for r in rows
        for a, p in (("apgd", ""), ("fmn", "fmn_"))
        if r["part"] == ("apgd" if a == "apgd" else "minimization")
    ]
    if ratios:
        print("\nCPU time car / naive")
        for model, norm, eps, a, ratio in ratios:
            print(f"{model} {norm} eps={eps} {a}: {ratio:.3f}")


if __name__ == "__main__":
    main()
