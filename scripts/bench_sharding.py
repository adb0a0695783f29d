"""Samples per second of an evaluation with 1 and K processes, and the cost of storage.

Runs one config (default: the default evaluation, ``cifar10_resnet18``) three ways in
one session, each in a fresh run directory:

* 1 process with the machine's default torch threads (``car-attacks run``),
* 1 process with ``--threads-per-process`` threads (``OMP_NUM_THREADS``),
* ``torchrun --nproc-per-node K`` with that many threads per process,

and prints wall time, samples per second (samples of the config / wall time of the
whole command, start-up included), the share of the run spent storing results
(appends with fsync, merging shards: ``storage_s`` of the run's manifest), and whether
every per-sample result equals the first run's. Writes JSON.

Usage: python scripts/bench_sharding.py [--config cifar10_resnet18] [--nproc 2]
       [--threads-per-process 1] [--json bench_results/sharding.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from car_attacks.evaluation import load_config, resolve_config_path
from car_attacks.evaluation.records import TIMING_KEYS
from car_attacks.evaluation.storage import RunStore


def _results(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        r.key: {k: v for k, v in r.to_json().items() if k not in TIMING_KEYS}
        for r in RunStore(run_dir).records()
    }


def _run(cmd: list[str], threads: int | None, out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    session = manifest["sessions"][-1]
    return {
        "wall_s": wall,
        "run_wall_s": float(session["wall_s"]),
        "storage_s": float(session["storage_s"]),
        "units": int(session["units_run"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="cifar10_resnet18")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--json", default="bench_results/sharding.json")
    args = parser.parse_args()
    path = resolve_config_path(args.config)
    config, _ = load_config(path)
    n = config.data.n
    base = [sys.executable, "-m", "car_attacks", "run", str(path), "--no-progress", "--out"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "car_attacks",
        "run",
        str(path),
        "--no-progress",
        "--out",
    ]
    tpp = args.threads_per_process
    cases = [
        ("1 process, default threads", base, None, 1),
        (f"1 process x {tpp} thread(s)", base, tpp, 1),
        (f"{args.nproc} processes x {tpp} thread(s)", torchrun, tpp, args.nproc),
    ]
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_sharding_"))
    reference: dict[str, dict[str, Any]] | None = None
    try:
        for label, cmd, threads, procs in cases:
            out = tmp / f"run{len(rows)}"
            print(f"running: {label} ...", file=sys.stderr, flush=True)
            row = _run(cmd + [str(out)], threads, out)
            results = _results(out)
            reference = results if reference is None else reference
            row.update(
                label=label,
                processes=procs,
                threads_per_process=threads,
                samples_per_s=n / row["wall_s"],
                storage_share=row["storage_s"] / row["run_wall_s"],
                identical_to_first=results == reference,
            )
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nconfig {config.name}: {n} samples, {rows[0]['units']} units of work")
    header = f"{'run':34} {'wall s':>8} {'samples/s':>10} {'storage':>8} {'same results':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['label']:34} {r['wall_s']:8.1f} {r['samples_per_s']:10.3f} "
            f"{100 * r['storage_share']:7.2f}% {str(r['identical_to_first']):>13}"
        )
    speedup = rows[1]["wall_s"] / rows[2]["wall_s"]
    print(f"\n{args.nproc} processes vs 1 process at {tpp} thread(s) each: {speedup:.2f}x")
    payload = {
        "config": config.name,
        "samples": n,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "runs": rows,
        "speedup_nproc_vs_1": speedup,
    }
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
