#!/usr/bin/env python
"""Train the small classifiers shipped in ``car_attacks/weights/`` and measure them.

One model per call (``--model``):

* ``bcop``      -- BCOP Lipschitz network, multi-class hinge loss with margin
                   ``sqrt(2) * hinge_eps * L`` (``L`` the network's Lipschitz bound,
                   recomputed every epoch), as in Li et al. (NeurIPS 2019);
* ``cnn``       -- small CNN, cross-entropy;
* ``cnn_noise`` -- small CNN on inputs with clipping-aware Gaussian noise whose clipped
                   L2 norm is exactly eps (:class:`car_attacks.data.augment.ClippingAwareNoise`);
* ``cnn_pgd``   -- small CNN adversarially trained with the project's clipping-aware
                   L2 PGD (:class:`car_attacks.attacks.L2ClippingAwarePGD`).

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` files
(``/usr/share/datasets/fashion-mnist``), from ``--root`` (IDX files, flat or torchvision
layout) or downloaded by torchvision with ``--download`` when online; CIFAR-10 with
``--dataset cifar10 --root DIR`` (torchvision's ``cifar-10-batches-py`` layout).

Every epoch writes a resume checkpoint (``--checkpoint-dir``; ``--resume`` continues from
it). The final weights are a plain state dict (``torch.load(..., weights_only=True)``)
at ``OUT/<dataset>_<model>.pt``; then the model is evaluated on the test set (clean
accuracy, certified accuracy for BCOP, L2 PGD robust accuracy) and the results are merged
into ``OUT/metrics.json`` under the model's name.

Example (the shipped models; each took a few minutes on one CPU thread)::

    python scripts/train_fashion_mnist.py --model bcop --epochs 3 --out car_attacks/weights
    python scripts/train_fashion_mnist.py --model cnn_pgd --epochs 1 --out car_attacks/weights
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

MODEL_KINDS: tuple[str, ...] = ("bcop", "cnn", "cnn_noise", "cnn_pgd")
DATASETS: tuple[str, ...] = ("fashion_mnist", "cifar10")


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a BCOP network or a (noise- / PGD-trained) CNN on Fashion-MNIST "
        "or CIFAR-10 on the CPU, save its state dict and measure clean, certified and "
        "PGD-robust accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=MODEL_KINDS, required=True, help="what to train")
    p.add_argument("--dataset", choices=DATASETS, default="fashion_mnist")
    p.add_argument("--root", default=None, help="data folder (default: Debian's Fashion-MNIST)")
    p.add_argument("--download", action="store_true", help="let torchvision download the data")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--train-n", type=int, default=None, help="use the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", default="car_attacks/weights", help="folder for weights + metrics")
    p.add_argument("--metrics", default=None, help="metrics JSON (default: OUT/metrics.json)")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="folder for per-epoch resume checkpoints (default: OUT/checkpoints)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the resume checkpoint")
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=0.0,
        help="stop training after this many minutes (0: no limit); the checkpoint is kept",
    )
    # model-specific training settings
    p.add_argument("--hinge-eps", type=float, default=0.5, help="bcop: certified margin target")
    p.add_argument(
        "--noise-eps",
        type=float,
        nargs=2,
        default=(0.0, 2.0),
        metavar=("LO", "HI"),
        help="cnn_noise: per-sample L2 size range of the clipped noise",
    )
    p.add_argument("--train-pgd-eps", type=float, default=1.0, help="cnn_pgd: L2 eps")
    p.add_argument("--train-pgd-steps", type=int, default=4, help="cnn_pgd: PGD steps")
    # evaluation
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    p.add_argument("--eval-n", type=int, default=10000, help="test images for clean/certified")
    p.add_argument("--cert-eps", type=float, nargs="+", default=(0.5, 1.0))
    p.add_argument("--pgd-eps", type=float, default=1.0)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--pgd-rel-stepsize", type=float, default=0.25)
    p.add_argument("--pgd-n", type=int, default=10000, help="test images attacked with PGD")
    p.add_argument("--eval-batch-size", type=int, default=500)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


# --------------------------------------------------------------------------- data


def load_split(args: argparse.Namespace, split: str, n: int | None = None) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] and int64 labels of a split."""
    from car_attacks.data import dataset_size, load_samples

    total = dataset_size(args.dataset, split, args.root, download=args.download)
    n = total if n is None else min(n, total)
    return load_samples(args.dataset, n=n, split=split, root=args.root, download=args.download)


# --------------------------------------------------------------------------- models


def model_name(args: argparse.Namespace) -> str:
    return f"{args.dataset}_{args.model}"


def build_model(kind: str, in_channels: int, image_size: int) -> nn.Sequential:
    from car_attacks.models.fashion_mnist import bcop_classifier, small_cnn

    if kind == "bcop":
        return bcop_classifier(in_channels, 10, image_size)
    return small_cnn(in_channels, 10, image_size)


def lipschitz_of(model: nn.Module, input_shape: Sequence[int]) -> float:
    from car_attacks.lipschitz import lipschitz_bound

    return lipschitz_bound(model, input_shape)


# --------------------------------------------------------------------------- training


def make_loss(
    args: argparse.Namespace, model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], Callable[[], dict[str, float]]]:
    """``(step_loss(x, y) -> (loss, logits), per_epoch_setup() -> info)``."""
    state: dict[str, float] = {"lipschitz": 1.0}

    if args.model == "bcop":

        def setup() -> dict[str, float]:
            state["lipschitz"] = lipschitz_of(model, input_shape)
            state["margin"] = math.sqrt(2.0) * args.hinge_eps * state["lipschitz"]
            return dict(state)

        def loss_fn(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(x)
            return F.multi_margin_loss(logits, y, margin=state["margin"]), logits

        return loss_fn, setup

    if args.model == "cnn_noise":
        from car_attacks.data.augment import ClippingAwareNoise

        noise = ClippingAwareNoise(
            eps=tuple(args.noise_eps), p=2, distribution="gaussian", seed=args.seed
        ).train()

        def noisy_loss(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(noise(x))
            return F.cross_entropy(logits, y), logits

        return noisy_loss, dict

    if args.model == "cnn_pgd":
        import foolbox as fb

        from car_attacks.attacks import L2ClippingAwarePGD

        steps = args.train_pgd_steps
        attack = L2ClippingAwarePGD(steps=steps, rel_stepsize=2.5 / steps, random_start=True)

        def adv_loss(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            model.eval()
            model.requires_grad_(False)
            try:
                fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
                _, adv, _ = attack(fmodel, x, y, epsilons=args.train_pgd_eps)
            finally:
                model.requires_grad_(True)
                model.train()
            logits = model(adv.detach())
            return F.cross_entropy(logits, y), logits

        return adv_loss, dict

    def ce_loss(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return ce_loss, dict


def train(args: argparse.Namespace, model: nn.Module, ckpt_path: Path) -> dict[str, Any]:
    """Train with per-epoch resume checkpoints; returns the training record."""
    x_train, y_train = load_split(args, "train", args.train_n)
    input_shape = tuple(int(s) for s in x_train.shape[1:])
    n = len(x_train)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)),
    )
    start_epoch, elapsed, history = 0, 0.0, []
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, elapsed = int(ckpt["epoch"]), float(ckpt["elapsed_s"])
        history = list(ckpt["history"])
        print(f"resumed from {ckpt_path} after epoch {start_epoch}", file=sys.stderr)
    elif args.resume:
        print(f"no checkpoint at {ckpt_path}; starting from scratch", file=sys.stderr)

    loss_fn, setup = make_loss(args, model, input_shape)
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        model.train()
        info = setup()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(n, generator=gen)
        loss_sum, correct, seen, steps = 0.0, 0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{model_name(args)} epoch {epoch + 1}/{args.epochs}",
            mininterval=10.0,
            file=sys.stderr,
        )
        for b in bar:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x, y = x_train[idx], y_train[idx]
            loss, logits = loss_fn(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False
            )
            limit = args.time_limit_min * 60.0
            if limit > 0 and elapsed + time.perf_counter() - t0 > limit:
                stopped_early = True
                break
        bar.close()
        epoch_time = time.perf_counter() - t0
        elapsed += epoch_time
        record = {
            "epoch": epoch + 1,
            "steps": steps,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "wall_time_s": round(epoch_time, 1),
            **{k: float(v) for k, v in info.items()},
        }
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "elapsed_s": elapsed,
                "history": history,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)
        if stopped_early:
            print(f"time limit reached during epoch {epoch + 1}", file=sys.stderr)
            break
    return {
        "epochs": args.epochs,
        "epochs_completed": len(history) - (1 if stopped_early else 0),
        "stopped_early_by_time_limit": stopped_early,
        "train_images": n,
        "batch_size": args.batch_size,
        "optimizer": f"Adam(lr={args.lr}, weight_decay={args.weight_decay}), cosine decay",
        "wall_time_s": round(elapsed, 1),
        "history": history,
    }


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(args: argparse.Namespace, model: nn.Module) -> dict[str, Any]:
    """Clean accuracy (all and first 1000), certified accuracy (BCOP), L2 PGD robustness."""
    import foolbox as fb

    from car_attacks.attacks import L2ClippingAwarePGD
    from car_attacks.lipschitz import prediction_margin

    model.eval()
    x, y = load_split(args, "test", args.eval_n)
    bs = args.eval_batch_size
    t0 = time.perf_counter()
    logits = predict(model, x, bs)
    pred, margin = prediction_margin(logits)
    correct = pred == y
    out: dict[str, Any] = {
        "test_images": len(y),
        "clean_accuracy": float(correct.float().mean()),
        "clean_accuracy_first_1000": float(correct[:1000].float().mean()),
    }
    if args.model == "bcop":
        lip = lipschitz_of(model, x.shape[1:])
        radius = margin / (math.sqrt(2.0) * lip)
        out["lipschitz_bound"] = lip
        out["certified_accuracy"] = {
            f"{eps:g}": float((correct & (radius >= eps)).float().mean()) for eps in args.cert_eps
        }
        out["certified_norm"] = "l2"
        out["median_certified_radius_correct"] = float(radius[correct].median())
    else:
        out["certified_accuracy"] = None
    print(json.dumps(out), file=sys.stderr)

    n_pgd = min(args.pgd_n, len(y))
    attack = L2ClippingAwarePGD(
        steps=args.pgd_steps,
        rel_stepsize=args.pgd_rel_stepsize,
        random_start=True,
        rescaling="car",
        seed=args.seed,
    )
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    robust = torch.zeros(n_pgd, dtype=torch.bool)
    max_norm = 0.0
    t1 = time.perf_counter()
    for i in tqdm(range(0, n_pgd, bs), desc="PGD", mininterval=10.0, file=sys.stderr):
        xb, yb = x[i : min(i + bs, n_pgd)], y[i : min(i + bs, n_pgd)]
        _, adv, success = attack(fmodel, xb, yb, epsilons=args.pgd_eps)
        robust[i : i + len(yb)] = correct[i : i + len(yb)] & ~success
        norms = (adv - xb).flatten(1).double().norm(dim=1)
        max_norm = max(max_norm, float(norms.max()))
    out["pgd"] = {
        "attack": "L2ClippingAwarePGD",
        "rescaling": "car",
        "norm": "l2",
        "eps": args.pgd_eps,
        "steps": args.pgd_steps,
        "rel_stepsize": args.pgd_rel_stepsize,
        "random_start": True,
        "seed": args.seed,
        "test_images": n_pgd,
        "subset": "all test images" if n_pgd == len(y) else f"the first {n_pgd} test images",
        "robust_accuracy": float(robust.float().mean()),
        "clean_accuracy_same_images": float(correct[:n_pgd].float().mean()),
        "max_perturbation_l2": max_norm,
        "wall_time_s": round(time.perf_counter() - t1, 1),
    }
    out["eval_wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out


# --------------------------------------------------------------------------- main


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_metrics(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Merge ``entry`` into the JSON file at ``path`` under ``name`` (atomic replace)."""
    data: dict[str, Any] = {}
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
    data[name] = entry
    data = {k: data[k] for k in sorted(data)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out / "checkpoints"
    name = model_name(args)
    ckpt_path = ckpt_dir / f"{name}.resume.pt"
    weights_path = out / f"{name}.pt"

    in_channels, image_size = (1, 28) if args.dataset == "fashion_mnist" else (3, 32)
    model = build_model(args.model, in_channels, image_size)
    record = train(args, model, ckpt_path)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, weights_path)
    print(f"saved {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)

    entry: dict[str, Any] = {
        "weights": weights_path.name,
        "sha256": sha256(weights_path),
        "dataset": args.dataset,
        "kind": args.model,
        "architecture": "bcop_classifier" if args.model == "bcop" else "small_cnn",
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            **record,
            "loss": {
                "bcop": f"multi-class hinge, margin sqrt(2) * {args.hinge_eps} * Lipschitz bound",
                "cnn": "cross-entropy",
                "cnn_noise": "cross-entropy on clipping-aware Gaussian noise, clipped L2 norm "
                f"uniform in [{args.noise_eps[0]}, {args.noise_eps[1]}]",
                "cnn_pgd": f"cross-entropy on L2ClippingAwarePGD(eps={args.train_pgd_eps}, "
                f"steps={args.train_pgd_steps}, rel_stepsize={2.5 / args.train_pgd_steps:.3g}, "
                "random_start) examples",
            }[args.model],
            "seed": args.seed,
            "threads": args.threads,
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
    if not args.no_eval:
        if args.dataset == "fashion_mnist":
            from car_attacks.models import load_model

            # exactly what users get: the registered architecture, loaded from the file
            evaluated = load_model(name, weights=str(weights_path))
        else:
            evaluated = build_model(args.model, in_channels, image_size)
            evaluated.load_state_dict(torch.load(weights_path, weights_only=True))
            evaluated.requires_grad_(False).eval()
        entry["test"] = evaluate(args, evaluated)
    metrics_path = Path(args.metrics) if args.metrics else out / "metrics.json"
    write_metrics(metrics_path, name, entry)
    print(json.dumps(entry.get("test", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
