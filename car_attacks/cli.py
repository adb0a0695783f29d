"""The ``car-attacks`` command: run experiments, rebuild reports, benchmark, list.

Exit codes: 0 success; 1 a runtime failure (weights or data that cannot be
loaded, units that failed); 2 a usage or config error (bad config, unknown
model, data set or attack, a run directory of another config); 130 interrupted.
Expected errors print one line, ``car-attacks: error: <reason>``, without a
traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["build_parser", "main"]

PROG = "car-attacks"


class _Failure(Exception):
    """An expected failure: one line for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _err(msg: str) -> None:
    line = " ".join(str(msg).split())
    print(f"{PROG}: error: {line}", file=sys.stderr)


def _info(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def _default_out(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _config_path(spec: str | None) -> Path:
    """``resolve_config_path``; a name the OS cannot even look up is a usage error."""
    from .evaluation import resolve_config_path

    try:
        return resolve_config_path(spec)
    except OSError as exc:
        raise _Failure(f"config file {spec!r}: {exc.strerror or exc}", 2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from .evaluation import check_references, load_config, run_experiment

    path = _config_path(args.config)
    config, text = load_config(path, overrides=args.set, only=args.only)
    methods = check_references(config)
    out = Path(args.out) if args.out else _default_out(config.name)
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun rank other than 0: errors only
        args.quiet = True
    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise _Failure("sharded runs (torchrun) need --out DIR, the same for every rank", 2)
    if not args.quiet:
        _info(f"config {path} -> {out}")
    summary = run_experiment(
        config,
        out,
        source_text=text,
        progress=not args.no_progress and not args.quiet,
        report=not args.no_report,
        log=None if args.quiet else _info,
        methods=methods,
    )
    if not args.quiet:
        _print_summary(summary.run_dir)
        print(f"results: {summary.run_dir}")
        for p in summary.report_paths:
            print(f"report: {p}")
        print(
            f"units: {summary.units_run} run, {summary.units_skipped} already done, "
            f"{summary.units_failed} failed, of {summary.units_total}; "
            f"wall time {summary.wall_time_s:.1f} s"
        )
    if summary.units_failed:
        raise _Failure(
            f"{summary.units_failed} unit(s) failed (first: {summary.failures[0]}); "
            f"see {summary.run_dir / 'errors.jsonl'}; rerun to retry them",
            1,
        )
    return 0


def _print_summary(run_dir: Path) -> None:
    report = run_dir / "report.json"
    if report.is_file():
        data = json.loads(report.read_text(encoding="utf-8"))
        for line in data.get("headline", []):
            print(f"  {line}")


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation import build_report

    run_dir = Path(args.dir)
    if not run_dir.is_dir():
        raise _Failure(f"no such run directory: {run_dir}", 2)
    paths = build_report(run_dir)
    if not args.quiet:
        _print_summary(run_dir)
        for p in paths:
            print(f"report: {p}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .evaluation import check_references, load_config

    for spec in args.configs:
        path = _config_path(spec)
        config, _ = load_config(path, overrides=args.set)
        check_references(config)
        n_units = len(config.attacks)
        print(f"{path}: ok ({config.name}: {n_units} attack(s), {len(config.peers)} peer(s))")
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    """The rescaling benchmark (:mod:`car_attacks.benchmarks.rescaling_timing`)."""
    from .benchmarks.rescaling_timing import main as bench_main

    old = sys.argv[0]
    sys.argv[0] = f"{PROG} bench"  # argparse takes its prog from argv[0]
    try:
        return int(bench_main(list(argv)) or 0)
    finally:
        sys.argv[0] = old


def _yes(ok: bool) -> str:
    return "yes" if ok else "no "


def _section(out: list[str], title: str, items: list[T] | Any, fmt: Callable[[T], str]) -> None:
    """A titled section of ``car-attacks list``; ``items`` may be a section that failed."""
    from .evaluation.listing import Unavailable

    out.append(title)
    if isinstance(items, Unavailable):
        out.append(f"  unavailable: {items.error}")
    else:
        out.extend(fmt(i) for i in items)
    out.append("")


def _offline_line(name: str, width: int, available: bool, text: str, reason: str) -> str:
    """``  NAME  offline: yes|no  TEXT`` and, when not available, the reason below it."""
    line = f"  {name:<{width}} offline: {_yes(available)}  {text}"
    return line if available else f"{line}\n  {'':<{width}} -> {reason}"


def cmd_list(args: argparse.Namespace) -> int:
    from .evaluation.listing import AttackInfo, ConfigEntry, DatasetEntry, ModelEntry, listing

    data = listing()
    if args.json:
        print(json.dumps(data.to_json(), indent=2))
        return 0
    out: list[str] = []

    def named(i: ModelEntry | DatasetEntry) -> str:
        return _offline_line(i.name, 30, i.available, i.description, i.reason)

    def config(i: ConfigEntry) -> str:
        name = i.name + (" (default)" if i.default else "")
        return _offline_line(name, 40, i.available, f"{i.model or ''} on {i.data or ''}", i.reason)

    def attack(i: AttackInfo) -> str:
        return f"  {i.name:<48} {i.norm:<5} {i.kind}"

    def peer(i: AttackInfo) -> str:
        return f"  {i.source:<10} {i.name:<44} {i.norm:<10} {i.kind}"

    _section(
        out, "Models (model.name; offline = usable here without a download):", data.models, named
    )
    _section(out, "Data sets (data.name):", data.datasets, named)
    _section(
        out,
        "Attacks (attacks[].class; each runs with rescaling car | bisection | naive):",
        data.attacks,
        attack,
    )
    _section(
        out,
        "Peers (peers[].library / class; compared on the same axes as an attack):",
        data.peers,
        peer,
    )
    _section(out, "Configs (car-attacks run NAME):", data.configs, config)
    print("\n".join(out).rstrip("\n"))
    return 0


# --------------------------------------------------------------------------- parser


def _add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.name=fashion_mnist_cnn_pgd "
        "--set data.n=1000 --set attacks.0.params.steps=50 (VALUE is YAML; repeatable)",
    )


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str
) -> argparse.ArgumentParser:
    """The sub-command ``name``, which ``func`` runs."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Adversarial attacks that are exact about perturbation size: run attack "
        "experiments comparing clipping-aware rescaling (CAR) with the bisection baseline and "
        "naive rescaling, and write a robustness report.",
        epilog="Start with: car-attacks run  (the default CIFAR-10 config, offline, a few "
        "minutes on a laptop CPU). Exit codes: 0 ok, 1 runtime failure, 2 usage/config error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = _command(
        sub,
        "run",
        cmd_run,
        "run an experiment config and write results and a report",
        "Run an experiment from a YAML config and write per-sample results and a report "
        "(report.json, report.md, report.html) to DIR. Rerunning with the same config and "
        "--out resumes an interrupted run and redoes only the missing work.",
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG",
        help="a YAML config file or the name of a shipped config (see `car-attacks list`); "
        "default: cifar10_resnet18",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run directory (default: runs/<config name>-<date>-<time>)",
    )
    _add_set_option(p)
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ATTACK_ID",
        help="run only this attack of the config (and the peers compared with it); repeatable",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="store results only")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")

    p = _command(
        sub,
        "report",
        cmd_report,
        "rebuild the report of a run directory from its stored results",
        "Rebuild report.json, report.md, report.html and figures/ of a run directory from "
        "its stored results (also for an incomplete run).",
    )
    p.add_argument("dir", metavar="DIR", help="a run directory written by `car-attacks run`")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")

    sub.add_parser(
        "bench",
        help="the rescaling benchmark (CAR vs bisection vs naive); "
        "`car-attacks bench --help` for its options",
        add_help=False,
    )

    p = _command(
        sub,
        "list",
        cmd_list,
        "named models, data sets, attacks, peers and configs, and which work offline",
        "List the named models, data sets, attack classes, peers and shipped configs, and "
        "whether each is usable offline on this machine.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "validate",
        cmd_validate,
        "check config files without running them",
        "Parse and check config files (keys, types, model, data set, attack classes and "
        "parameters) without loading weights or data.",
    )
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="config files or shipped names")
    _add_set_option(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``car-attacks`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    from .evaluation.config import ConfigError
    from .evaluation.distributed import DistributedError
    from .evaluation.runner import ExperimentError
    from .evaluation.storage import RunDirError

    try:
        if args_list and args_list[0] == "bench":
            return cmd_bench(args_list[1:])
        args = build_parser().parse_args(args_list)
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except RunDirError as exc:
        _err(str(exc))
        return 2
    except _Failure as exc:
        _err(str(exc))
        return exc.code
    except (ExperimentError, DistributedError) as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        _err("interrupted; rerun the same command (same config and --out) to resume")
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # e.g. a run directory that cannot be created or written
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
