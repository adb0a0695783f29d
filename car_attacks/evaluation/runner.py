"""Run an experiment: every attack x rescaling variant x eps x batch, plus the peers.

Units of work
    ``clean`` (one per batch: the model's prediction), and one per method, batch and
    eps group. A *method* is an attack with one rescaling variant
    (``"<attack id>/<variant>"``) or a peer (``"<peer id>"``). Fixed-eps attacks
    (foolbox ``FixedEpsilonAttack``, APGD) run once per eps; minimization attacks
    (Boundary, HopSkipJump) run once per batch for the whole eps grid, following
    foolbox's contract (the found perturbation is shrunk to each eps and checked).

What is stored per sample (see :mod:`car_attacks.evaluation.records`)
    clean: label, prediction, correctness. Attacks: success at each eps and the L1,
    L2, L-inf norms of ``clipped - x`` (the perturbation the model actually saw);
    minimization attacks also store the norms of the perturbation they found (before
    it is shrunk to each eps) and whether it is adversarial (checked with one extra,
    uncounted forward pass). Per unit: wall time, process CPU time, model queries, the
    wall time of the model's forward passes (``model_s``; backward passes are not in it)
    and, for our attacks, of their rescaling and projection work (``rescaling_s``,
    :mod:`car_attacks.core.clock`).

Queries
    Rows of input passed through the model's ``forward`` during the attack call
    (forward passes for gradients included, each image counts once); for foolbox
    attacks that includes foolbox's final success check. Per sample and eps the report
    divides the unit's count evenly by batch size and number of eps.

Seeding
    car_attacks attacks get ``seed=config.seed`` (per-sample random streams, so results
    do not depend on batch composition or order); before every unit the runner calls
    ``torch.manual_seed(config.seed + batch)``, which is what seeds foolbox's attacks;
    APGD gets ``seed=config.seed + batch``. A resumed run therefore repeats exactly what
    an uninterrupted one computes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.clock import Clock, rescaling_clock, synchronize_like
from ..lipschitz import certified_radius, prediction_margin, soundness_column
from .catalog import check_references
from .config import ExperimentConfig
from .distributed import Distributed, init_distributed, rank_device, shard
from .inputs import ExperimentError, certified_lipschitz, load_inputs
from .methods import AttackTarget, PreparedMethod, batch_blend_starting_points
from .planning import Unit, batch_slice, plan_methods, plan_units
from .records import (
    CLEAN,
    PEER,
    AttackRecord,
    Certificate,
    CleanRecord,
    FoundPerturbation,
    MethodRecord,
    UnitRecord,
)
from .session import RunSession
from .storage import RunStore

__all__ = [
    "ExperimentError",
    "Method",
    "QueryCounter",
    "RunSummary",
    "Unit",
    "batch_blend_starting_points",
    "certified_lipschitz",
    "load_inputs",
    "plan_methods",
    "plan_units",
    "run_experiment",
]

Method = MethodRecord
"""One evaluated method (the runner's name for :class:`~.records.MethodRecord`)."""

Executor = Callable[[Unit], UnitRecord]
ExecutorFactory = Callable[[ExperimentConfig, list[PreparedMethod]], Executor]


@dataclass
class RunSummary:
    run_dir: Path
    units_total: int
    units_skipped: int
    units_run: int
    units_failed: int
    wall_time_s: float
    failures: list[str] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    storage_s: float = 0.0
    """Time spent storing results (appends with fsync, merging shards) in this session."""
    rank: int = 0
    world_size: int = 1


class QueryCounter(torch.nn.Module):
    """Wraps a model; counts the rows of input its ``forward`` sees and times the forward
    passes (``clock``; synchronised on CUDA)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        self.clock = Clock()

    def reset(self) -> None:
        """Start counting queries and forward time from zero."""
        self.count = 0
        self.clock = Clock()

    def forward(self, x: Tensor) -> Tensor:
        self.count += int(x.shape[0])
        with self.clock.timing(x):
            out: Tensor = self.model(x)
        return out


# --------------------------------------------------------------------------- execution


def _norms(delta: Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per sample ``(L1, L2, L-inf)`` norms of ``delta``."""
    d = delta.detach().flatten(1).double().cpu()
    return d.abs().sum(1).tolist(), d.norm(dim=1).tolist(), d.abs().amax(1).tolist()


def warm_up(model: torch.nn.Module, x: Tensor) -> None:
    """One untimed forward and input-gradient pass of ``model`` on ``x`` (no query counted,
    no ``.grad`` on parameters), so that the first timed attack unit is not charged for the
    framework's one-time set-up of the model's kernels (CUDA's lazy loading, cuDNN and oneDNN
    handles). The attack's own kernels are not warmed: on an H200 the first variant still
    took ~0.1 s more "other" time than the ones after it (README, "On a GPU")."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        torch.autograd.grad(out.sum(), xg)
    synchronize_like(x)


class _Executor:
    """Runs units on the config's model and data: the clean predictions of a batch, or a
    method through its :class:`~.methods.MethodAdapter`."""

    def __init__(self, config: ExperimentConfig, methods: list[PreparedMethod]) -> None:
        import foolbox

        self.config = config
        model, bounds, self.images, self.labels = load_inputs(config)
        self.model = model
        self.counter = QueryCounter(model).eval()
        fmodel = foolbox.PyTorchModel(self.counter, bounds=bounds, device=self.images.device)
        self.target = AttackTarget(model=model, counted=self.counter, fmodel=fmodel, bounds=bounds)
        self.methods = {m.record.key: m.adapter for m in methods}
        self.lipschitz = certified_lipschitz(config, model, tuple(self.images.shape[1:]))
        self._certificates: dict[int, tuple[Tensor, Tensor]] = {}
        self._warm = False

    def certificate(self, batch: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(predictions, certified L2 radii)`` of a batch (certified models only), cached."""
        if self.lipschitz is None:
            raise ExperimentError(f"model {self.config.model.name!r} is not certified")
        if batch not in self._certificates:
            with torch.no_grad():
                pred, _ = prediction_margin(self.model(x))
            radius = certified_radius(self.model, x, self.lipschitz)
            self._certificates[batch] = (pred, radius)
        return self._certificates[batch]

    def violations(self, batch: int, x: Tensor, y: Tensor, adv: Tensor) -> list[bool]:
        """The soundness column (certified models only): per sample, does ``adv`` change
        the prediction from inside the certified L2 ball?"""
        pred, radii = self.certificate(batch, x)
        return soundness_column(self.model, x, y, adv, radii, predictions=pred)

    def __call__(self, unit: Unit) -> UnitRecord:
        sl = batch_slice(self.config, unit.batch)
        x, y = self.images[sl], self.labels[sl]
        indices = list(range(sl.start, sl.stop))
        if unit.method == CLEAN:
            return self.clean(unit.batch, x, y, indices)
        if not self._warm:
            warm_up(self.model, x)
            self._warm = True
        seed = self.config.seed + unit.batch
        torch.manual_seed(seed)
        self.counter.reset()
        t0 = time.perf_counter()
        c0 = time.process_time()
        with rescaling_clock() as rescaling:
            outcome = self.methods[unit.method].run(self.target, x, y, unit.eps, seed)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        queries = self.counter.count
        norms = [_norms(c - x) for c in outcome.clipped]
        certified = self.lipschitz is not None
        found = None
        if outcome.found is not None:
            with torch.no_grad():
                adv = (self.model(outcome.found).argmax(dim=1) != y).tolist()
            f1, f2, finf = _norms(outcome.found - x)
            found_violation = (
                self.violations(unit.batch, x, y, outcome.found) if certified else None
            )
            found = FoundPerturbation(f1, f2, finf, adv, found_violation)
        violation = None
        if certified:
            violation = [self.violations(unit.batch, x, y, c) for c in outcome.clipped]
        return AttackRecord(
            method=unit.method,
            attack=unit.attack,
            variant=unit.variant,
            batch=unit.batch,
            eps=unit.eps,
            indices=indices,
            success=outcome.success,
            l1=[n[0] for n in norms],
            l2=[n[1] for n in norms],
            linf=[n[2] for n in norms],
            queries=queries,
            time_s=elapsed,
            cpu_s=cpu,
            found=found,
            violation=violation,
            rescaling_s=None if unit.variant == PEER else rescaling.seconds,
            model_s=self.counter.clock.seconds,
            compile_s=rescaling.compile_seconds or None,
        )

    def clean(self, batch: int, x: Tensor, y: Tensor, indices: list[int]) -> CleanRecord:
        """The model's predictions on a batch (and its certificate, for certified models)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = self.model(x).argmax(dim=1)
        elapsed = time.perf_counter() - t0
        cert = None
        if self.lipschitz is not None:
            radius = self.certificate(batch, x)[1].double().tolist()
            cert = Certificate(self.lipschitz, int(x[0].numel()), radius)
        return CleanRecord(
            batch=batch,
            indices=indices,
            labels=y.tolist(),
            pred=pred.tolist(),
            correct=(pred == y).tolist(),
            time_s=elapsed,
            certificate=cert,
        )


# --------------------------------------------------------------------------- the run


@contextmanager
def _progress(total: int, initial: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        file=sys.stderr,
        unit="unit",
        dynamic_ncols=True,
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    source_text: str | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
    executor_factory: ExecutorFactory | None = None,
    dist: Distributed | None = None,
    methods: list[PreparedMethod] | None = None,
) -> RunSummary:
    """Run (or resume) ``config`` in ``run_dir`` and build the report.

    Units already stored in ``run_dir`` are skipped. A unit that raises is logged to
    ``errors.jsonl`` and retried by the next run. The model and data are loaded before
    anything is written, so a run that cannot start leaves no run directory behind.
    ``executor_factory(config, methods)`` (default: the model and data of ``config``)
    gives the function that runs one unit. ``methods``: what :func:`check_references`
    returned for ``config`` (default: it is called here), so that each attack is built
    once.

    Under torchrun (``WORLD_SIZE > 1``, or an initialised default process group, or
    ``dist``), every rank runs its share of the units (:func:`distributed.shard`) and
    writes its own result files; rank 0 holds the directory lock, merges the shards
    when all ranks are done and builds the report. Raises ConfigError, RunDirError,
    ExperimentError (DistributedError on the other ranks when rank 0 fails).
    """
    if methods is None:
        methods = check_references(config)
    owned = dist is None
    dist = init_distributed(config.device) if dist is None else dist
    try:
        return _run(
            config,
            methods,
            Path(run_dir),
            source_text,
            progress,
            report,
            log,
            executor_factory,
            dist,
        )
    finally:
        if owned:
            dist.close()


def _run(
    config: ExperimentConfig,
    methods: list[PreparedMethod],
    run_dir: Path,
    source_text: str | None,
    progress: bool,
    report: bool,
    log: Callable[[str], None] | None,
    executor_factory: ExecutorFactory | None,
    dist: Distributed,
) -> RunSummary:
    def say(msg: str) -> None:
        if log is not None and dist.is_main:
            log(msg)

    def make_executor() -> Executor:
        """The model and data on this rank's device."""
        local = replace(config, device=rank_device(config.device, dist))
        return (executor_factory or _Executor)(local, methods)

    t_start = time.perf_counter()
    records = [m.record for m in methods]
    units = plan_units(config, records)
    store = RunStore(run_dir, shard=dist.rank if dist.active else None)
    session = RunSession(
        store=store,
        config=config,
        methods=records,
        units=units,
        source_text=source_text,
        world_size=dist.world_size if dist.active else None,
        log=say,
    )
    dist.on_main(session.existing)  # refuse early, write nothing
    execute: Executor | None = None
    if session.pending():
        say(f"loading model {config.model.name!r} and data {config.data.name!r}")
        error: BaseException | None = None
        try:
            execute = make_executor()
        except Exception as exc:
            error = exc
        dist.check_all(error)

    with session:
        dist.on_main(session.begin)
        # rank 0's view, given to every rank: a rank that looked at the directory itself
        # could see a unit rank 0 had already finished, shard a different list and leave
        # a unit to nobody (seen under load: one clean unit missing from a 2-rank run)
        todo = dist.on_main(session.pending)
        mine = shard(todo, dist, group=lambda u: u.method)
        skipped = len(units) - len(todo)
        if skipped:
            say(f"resuming {store.dir}: {skipped} of {len(units)} units already done")
        if dist.active:
            say(f"{dist.world_size} ranks; rank 0 runs {len(mine)} of {len(todo)} units")
        try:
            if mine and execute is None:  # the directory changed since the first look
                execute = make_executor()
            total, initial = (len(mine), 0) if dist.active else (len(units), skipped)
            with _progress(total, initial, progress and dist.is_main) as bar:
                for unit in mine:
                    assert execute is not None
                    eps = ",".join(f"{e:.4g}" for e in unit.eps)
                    bar.set_description(f"{unit.method} eps={eps} b{unit.batch}"[:60])
                    try:
                        record = execute(unit)
                    except Exception as exc:  # recorded and retried by the next run
                        msg = session.fail(unit, exc, dist.rank)
                        bar.write(f"car-attacks: unit failed: {msg}", file=sys.stderr)
                    else:
                        session.record(record)
                    bar.update(1)
        finally:
            counts = dist.gather((session.units_run, session.failures, session.storage_s))
            run = sum(c[0] for c in counts)
            failures = [f for c in counts for f in c[1]]
            storage_s = sum(c[2] for c in counts)
            finished = dist.on_main(lambda: session.finish(run, len(failures), storage_s))
    paths: list[Path] = []
    if report and dist.is_main:
        from .report import build_report

        paths = build_report(store.dir)
    return RunSummary(
        run_dir=store.dir,
        units_total=len(units),
        units_skipped=skipped,
        units_run=run,
        units_failed=len(failures),
        wall_time_s=time.perf_counter() - t_start,
        failures=failures,
        report_paths=paths,
        storage_s=finished.storage_s or 0.0,
        rank=dist.rank,
        world_size=dist.world_size,
    )
