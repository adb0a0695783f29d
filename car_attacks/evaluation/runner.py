"""Run an experiment: every attack x rescaling variant x eps x batch, plus the peers.

Units of work
    ``clean`` (one per batch: the model's prediction), and one per method, batch and
    eps group. A *method* is an attack with one rescaling variant
    (``"<attack id>/<variant>"``) or a peer (``"<peer id>"``). Fixed-eps attacks
    (foolbox ``FixedEpsilonAttack``, APGD) run once per eps; minimization attacks
    (Boundary, HopSkipJump) run once per batch for the whole eps grid, following
    foolbox's contract (the found perturbation is shrunk to each eps and checked).

What is stored per sample (see :mod:`car_attacks.evaluation.storage`)
    clean: label, prediction, correctness. Attacks: success at each eps and the L1,
    L2, L-inf norms of ``clipped - x`` (the perturbation the model actually saw);
    minimization attacks also store the norms of the perturbation they found (before
    it is shrunk to each eps) and whether it is adversarial (checked with one extra,
    uncounted forward pass). Per unit: wall time, process CPU time and model queries.

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

import datetime as _dt
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig, config_hash
from .distributed import Distributed, init_distributed, rank_device, shard
from .environment import environment
from .peers import APGDPeer
from .registry import attack_kind, check_references, make_attack, make_peer
from .storage import FORMAT, RunDirError, RunStore, atomic_write_text, unit_key

__all__ = [
    "ExperimentError",
    "Method",
    "batch_blend_starting_points",
    "QueryCounter",
    "RunSummary",
    "Unit",
    "load_inputs",
    "plan_methods",
    "plan_units",
    "run_experiment",
]


class ExperimentError(RuntimeError):
    """The experiment cannot run (weights or data missing, shapes that do not match...)."""


@dataclass(frozen=True)
class Method:
    key: str
    attack: str
    variant: str  # car | bisection | naive | peer
    cls: str
    kind: str  # fixed | minimization
    library: str = "car_attacks"


@dataclass(frozen=True)
class Unit:
    method: str
    attack: str
    variant: str
    batch: int
    eps: tuple[float, ...]

    @property
    def key(self) -> str:
        return unit_key(self.method, self.batch, self.eps)


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
    """Wraps a model; counts the rows of input its ``forward`` sees."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += int(x.shape[0])
        out: torch.Tensor = self.model(x)
        return out


# --------------------------------------------------------------------------- planning


def plan_methods(config: ExperimentConfig) -> list[Method]:
    """Attacks x variants and the peers, each peer right after the attack it is compared with.

    Instantiates every attack once (cheap) to learn its kind; raises ConfigError."""
    out: list[Method] = []
    for i, a in enumerate(config.attacks):
        for variant in a.rescalings:
            inst = make_attack(a, variant, config.seed, path=f"attacks[{i}]")
            out.append(Method(f"{a.id}/{variant}", a.id, variant, a.cls, attack_kind(inst)))
        for j, peer in enumerate(config.peers):
            if peer.compare_with != a.id:
                continue
            inst = make_peer(peer, a.norm, path=f"peers[{j}]")
            kind = "fixed" if isinstance(inst, APGDPeer) else attack_kind(inst)
            out.append(Method(peer.id, a.id, "peer", peer.cls, kind, peer.library))
    return out


def n_batches(config: ExperimentConfig) -> int:
    return math.ceil(config.data.n / config.data.batch_size)


def batch_slice(config: ExperimentConfig, batch: int) -> slice:
    bs = config.data.batch_size
    return slice(batch * bs, min(config.data.n, (batch + 1) * bs))


def plan_units(config: ExperimentConfig, methods: list[Method]) -> list[Unit]:
    """Every unit of the experiment, in execution order.

    Per attack, the methods (variants and peers) take turns on each eps and batch, so
    that a change in the machine's load during the run affects them alike."""
    nb = n_batches(config)
    units = [Unit("clean", "clean", "clean", b, ()) for b in range(nb)]
    for a in config.attacks:
        mine = [m for m in methods if m.attack == a.id]
        groups: list[tuple[Method, tuple[float, ...]]] = []
        for m in mine:
            if m.kind == "minimization":
                groups.append((m, a.eps))
        for e in a.eps:
            groups += [(m, (e,)) for m in mine if m.kind != "minimization"]
        for b in range(nb):
            for m, group in groups:
                units.append(Unit(m.key, m.attack, m.variant, b, tuple(group)))
    return units


# --------------------------------------------------------------------------- model and data


def load_inputs(config: ExperimentConfig) -> tuple[torch.nn.Module, tuple[float, float], Any, Any]:
    """``(model, bounds, images, labels)``: the model in eval mode on the config's device and
    the samples scaled from [0, 1] into the model's bounds. Raises ExperimentError."""
    import importlib

    models = importlib.import_module("car_attacks.models")
    data = importlib.import_module("car_attacks.data")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"device {config.device!r} requested but CUDA is not available")
    spec = models.model_spec(config.model.name)
    try:
        model = models.load_model(
            config.model.name, weights=config.model.weights, device=str(device)
        )
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as exc:
        raise ExperimentError(f"cannot load model {config.model.name!r}: {_one_line(exc)}") from exc
    try:
        images, labels = data.load_samples(
            config.data.name,
            n=config.data.n,
            split=config.data.split,
            root=config.data.root,
            start=config.data.start,
            **({"download": True} if config.data.download else {}),
        )
    except (FileNotFoundError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ExperimentError(
            f"cannot load data set {config.data.name!r}: {_one_line(exc)}"
        ) from exc
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if len(x) != config.data.n or len(y) != config.data.n:
        raise ExperimentError(
            f"data set {config.data.name!r} gave {len(x)} samples, the config asks for "
            f"data.n={config.data.n}"
        )
    expected = tuple(getattr(spec, "input_shape", tuple(x.shape[1:])))
    if tuple(x.shape[1:]) != expected:
        raise ExperimentError(
            f"data set {config.data.name!r} gives images of shape {tuple(x.shape[1:])}, "
            f"model {config.model.name!r} expects {expected}"
        )
    lo, hi = (float(b) for b in spec.bounds)
    if (lo, hi) != (0.0, 1.0):
        x = lo + x * (hi - lo)
    model.eval()
    return model, (lo, hi), x.to(device), y.to(device)


def certified_lipschitz(
    config: ExperimentConfig, model: torch.nn.Module, input_shape: tuple[int, ...]
) -> float | None:
    """The Lipschitz bound of a certified model (``ModelSpec.certified``), else ``None``.

    Raises ExperimentError when the model is registered as certified but its layers have
    no exact norm (e.g. a ``model.weights`` file of another architecture)."""
    from ..lipschitz import lipschitz_bound
    from ..models import model_spec

    if not model_spec(config.model.name).certified:
        return None
    try:
        return float(lipschitz_bound(model, input_shape))
    except TypeError as exc:
        raise ExperimentError(
            f"model {config.model.name!r} is registered as certified but its Lipschitz "
            f"bound cannot be computed: {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    first = text.splitlines()[0] if text else type(exc).__name__
    return first


# --------------------------------------------------------------------------- execution


def batch_blend_starting_points(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10
) -> torch.Tensor:
    """Starting points for minimization attacks from the batch itself (``init: batch_blend``).

    For every image the nearest (L2) image of the batch that the model assigns to a class
    other than the image's label, blended towards the image by a binary search of
    ``steps`` forward passes, so that the start lies just on the adversarial side of the
    decision boundary. Misclassified images start at themselves. Deterministic, costs
    ``steps + 1`` forward passes of the batch, and gives every variant and peer of an
    attack the same start. Raises ExperimentError if some image has no candidate.
    """
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
        flat = x.flatten(1).double()
        dist = torch.cdist(flat, flat)
        candidate = pred[None, :] != y[:, None]
        if not bool(candidate.any(dim=1).all()):
            raise ExperimentError(
                "init: batch_blend needs, for every image, another image in its batch that "
                "the model assigns to a different class; use a larger data.batch_size"
            )
        nearest = torch.where(candidate, dist, torch.inf).argmin(dim=1)
        target = x[nearest]
        lo = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        hi = torch.ones_like(lo)
        shape = (-1,) + (1,) * (x.ndim - 1)
        for _ in range(steps):
            mid = (lo + hi) / 2
            adv = model(x + mid.view(shape) * (target - x)).argmax(dim=1) != y
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
        return x + hi.view(shape) * (target - x)


def _norms(delta: torch.Tensor) -> dict[str, list[float]]:
    d = delta.detach().flatten(1).double().cpu()
    return {
        "l1": d.abs().sum(1).tolist(),
        "l2": d.norm(dim=1).tolist(),
        "linf": d.abs().amax(1).tolist(),
    }


class _Executor:
    def __init__(self, config: ExperimentConfig, methods: list[Method]) -> None:
        import foolbox

        self.config = config
        model, self.bounds, self.images, self.labels = load_inputs(config)
        self.model = model
        self.counter = QueryCounter(model).eval()
        self.fmodel = foolbox.PyTorchModel(
            self.counter, bounds=self.bounds, device=self.images.device
        )
        self.attacks: dict[str, Any] = {}
        for i, a in enumerate(config.attacks):
            for variant in a.rescalings:
                self.attacks[f"{a.id}/{variant}"] = make_attack(
                    a, variant, config.seed, path=f"attacks[{i}]"
                )
        for j, peer in enumerate(config.peers):
            norm = config.attack(peer.compare_with).norm
            self.attacks[peer.id] = make_peer(peer, norm, path=f"peers[{j}]")
        self.methods = {m.key: m for m in methods}
        self.lipschitz = certified_lipschitz(config, model, tuple(self.images.shape[1:]))
        self._certificates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def certificate(self, batch: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predictions, certified L2 radii)`` of a batch (certified models only), cached:
        one forward pass, ``radius = margin / (sqrt(2) L)``."""
        from ..lipschitz import prediction_margin

        if self.lipschitz is None:
            raise ExperimentError(f"model {self.config.model.name!r} is not certified")
        if batch not in self._certificates:
            with torch.no_grad():
                pred, margin = prediction_margin(self.model(x))
            self._certificates[batch] = (pred, margin / (math.sqrt(2.0) * self.lipschitz))
        return self._certificates[batch]

    def violations(self, batch: int, x: torch.Tensor, y: torch.Tensor, adv: Any) -> list[bool]:
        """The soundness column: per sample, does ``adv`` change the prediction from
        inside the certified L2 ball? (:func:`car_attacks.soundness.soundness_column`)."""
        from ..soundness import soundness_column

        pred, radii = self.certificate(batch, x)
        return soundness_column(self.model, x, y, adv, radii, predictions=pred)

    def __call__(self, unit: Unit) -> dict[str, Any]:
        sl = batch_slice(self.config, unit.batch)
        x, y = self.images[sl], self.labels[sl]
        record: dict[str, Any] = {
            "method": unit.method,
            "attack": unit.attack,
            "variant": unit.variant,
            "batch": unit.batch,
            "eps": list(unit.eps),
            "indices": list(range(sl.start, sl.stop)),
        }
        if unit.method == "clean":
            t0 = time.perf_counter()
            with torch.no_grad():
                pred = self.model(x).argmax(dim=1)
            record.update(
                labels=y.tolist(),
                pred=pred.tolist(),
                correct=(pred == y).tolist(),
                time_s=time.perf_counter() - t0,
            )
            if self.lipschitz is not None:
                record.update(
                    lipschitz=self.lipschitz,
                    input_size=int(x[0].numel()),
                    radius=self.certificate(unit.batch, x)[1].double().tolist(),
                )
            return record
        seed = self.config.seed + unit.batch
        attack = self.attacks[unit.method]
        method = self.methods[unit.method]
        torch.manual_seed(seed)
        self.counter.count = 0
        success: list[list[bool]] = []
        norms: dict[str, list[list[float]]] = {"l1": [], "l2": [], "linf": []}
        t0 = time.perf_counter()
        c0 = time.process_time()
        if isinstance(attack, APGDPeer):
            advs = [attack.run(self.counter, self.bounds, x, y, e, seed) for e in unit.eps]
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            queries = self.counter.count
            with torch.no_grad():
                for adv in advs:
                    success.append((self.model(adv).argmax(dim=1) != y).tolist())
                    for k, v in _norms(adv - x).items():
                        norms[k].append(v)
            results: list[Any] = advs
        else:
            from foolbox.criteria import Misclassification

            kwargs: dict[str, Any] = {}
            if method.kind == "minimization" and self.config.attack(unit.attack).init != "own":
                kwargs["starting_points"] = batch_blend_starting_points(self.counter, x, y)
            raw, clipped, ok = attack(
                self.fmodel, x, Misclassification(y), epsilons=list(unit.eps), **kwargs
            )
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            queries = self.counter.count
            for i in range(len(unit.eps)):
                success.append(torch.as_tensor(ok[i]).bool().tolist())
                for k, v in _norms(clipped[i] - x).items():
                    norms[k].append(v)
            results = [torch.as_tensor(c) for c in clipped]
            if method.kind == "minimization":
                # the perturbation the attack found, before foolbox shrinks it to each eps
                found = torch.as_tensor(raw[0])
                with torch.no_grad():
                    adv = (self.model(found).argmax(dim=1) != y).tolist()
                record["found"] = dict(_norms(found - x), adversarial=adv)
                if self.lipschitz is not None:
                    record["found"]["violation"] = self.violations(unit.batch, x, y, found)
        record.update(success=success, **norms, queries=queries, time_s=elapsed, cpu_s=cpu)
        if self.lipschitz is not None:
            record["violation"] = [self.violations(unit.batch, x, y, r) for r in results]
        return record


# --------------------------------------------------------------------------- the run


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _existing_manifest(store: RunStore, config: ExperimentConfig) -> dict[str, Any] | None:
    """The manifest of a run of ``config`` already in ``store`` (``None``: a new or empty
    directory). Raises RunDirError for another config's run or a foreign directory.
    Writes nothing."""
    if store.exists():
        manifest = store.read_manifest()
        digest = config_hash(config)
        if manifest.get("config_hash") != digest:
            raise RunDirError(
                f"{store.dir} holds a run of a different config (config "
                f"{manifest.get('config_name')!r}, hash {str(manifest.get('config_hash'))[:12]}; "
                f"this config: {config.name!r}, hash {digest[:12]}); use another --out"
            )
        return manifest
    if store.dir.exists() and not store.dir.is_dir():
        raise RunDirError(f"{store.dir} exists and is not a directory")
    if store.dir.exists() and any(p.name != ".lock" for p in store.dir.iterdir()):
        raise RunDirError(
            f"{store.dir} exists, is not empty and is not a car-attacks run directory"
        )
    return None


def _prepare(
    store: RunStore,
    config: ExperimentConfig,
    source_text: str | None,
    methods: list[Method],
    units: list[Unit],
) -> dict[str, Any]:
    """The manifest of the run in ``store``, creating the run directory if it is new."""
    manifest = _existing_manifest(store, config)
    if manifest is not None:
        return manifest
    store.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.dir / "config.yaml", config.to_yaml())
    if source_text is not None:
        atomic_write_text(store.dir / "config.source.yaml", source_text)
    manifest = {
        "format": FORMAT,
        "config_name": config.name,
        "config_hash": config_hash(config),
        "created": _now(),
        "status": "created",
        "units_total": len(units),
        "units_done": 0,
        "methods": [m.__dict__ for m in methods],
        "environment": environment(config.device),
        "sessions": [],
    }
    store.write_manifest(manifest)
    return manifest


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
    executor_factory: Callable[[ExperimentConfig, list[Method]], Callable[[Unit], Any]]
    | None = None,
    dist: Distributed | None = None,
) -> RunSummary:
    """Run (or resume) ``config`` in ``run_dir`` and build the report.

    Units already stored in ``run_dir`` are skipped. A unit that raises is logged to
    ``errors.jsonl`` and retried by the next run. The model and data are loaded before
    anything is written, so a run that cannot start leaves no run directory behind.

    Under torchrun (``WORLD_SIZE > 1``, or an initialised default process group, or
    ``dist``), every rank runs its share of the units (:func:`distributed.shard`) and
    writes its own result files; rank 0 holds the directory lock, merges the shards
    when all ranks are done and builds the report. Raises ConfigError, RunDirError,
    ExperimentError (DistributedError on the other ranks when rank 0 fails).
    """
    check_references(config)
    owned = dist is None
    dist = init_distributed(config.device) if dist is None else dist
    try:
        return _run(
            config, Path(run_dir), source_text, progress, report, log, executor_factory, dist
        )
    finally:
        if owned:
            dist.close()


def _run(
    config: ExperimentConfig,
    run_dir: Path,
    source_text: str | None,
    progress: bool,
    report: bool,
    log: Callable[[str], None] | None,
    executor_factory: Callable[[ExperimentConfig, list[Method]], Callable[[Unit], Any]] | None,
    dist: Distributed,
) -> RunSummary:
    def say(msg: str) -> None:
        if log is not None and dist.is_main:
            log(msg)

    store = RunStore(run_dir, shard=dist.rank if dist.active else None)
    methods = plan_methods(config)
    units = plan_units(config, methods)
    order = {u.key: i for i, u in enumerate(units)}
    t_start = time.perf_counter()
    dist.on_main(lambda: _existing_manifest(store, config))  # refuse early, write nothing
    pending = [u for u in units if u.key not in store.done_keys()]
    execute: Callable[[Unit], Any] | None = None

    def make_executor() -> Callable[[Unit], Any]:
        """The model and data on this rank's device."""
        local = replace(config, device=rank_device(config.device, dist))
        return (executor_factory or _Executor)(local, methods)

    if pending:
        say(f"loading model {config.model.name!r} and data {config.data.name!r}")
        error: BaseException | None = None
        try:
            execute = make_executor()
        except Exception as exc:
            error = exc
        dist.check_all(error)

    with ExitStack() as stack:
        session: dict[str, Any] = {"started": _now(), "units_run": 0, "units_failed": 0}
        if dist.active:
            session["world_size"] = dist.world_size

        def begin() -> dict[str, Any]:
            stack.enter_context(store.lock())
            manifest = _prepare(store, config, source_text, methods, units)
            dropped = store.repair()
            if dropped:
                say(f"dropped {dropped} incomplete result line(s) from an interrupted run")
            manifest["sessions"].append(session)
            manifest["status"] = "running"
            manifest["environment"] = environment(config.device)
            store.write_manifest(manifest)
            return manifest

        manifest = dist.on_main(begin)
        done = store.done_keys()
        todo = [u for u in units if u.key not in done]
        mine = shard(todo, dist, group=lambda u: u.method)
        skipped = len(units) - len(todo)
        if skipped:
            say(f"resuming {store.dir}: {skipped} of {len(units)} units already done")
        if dist.active:
            say(f"{dist.world_size} ranks; rank 0 runs {len(mine)} of {len(todo)} units")
        failures: list[str] = []
        run = 0
        storage_s = 0.0
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
                        msg = f"{unit.method} batch {unit.batch} eps {eps}: {_one_line(exc)}"
                        failures.append(msg)
                        t0 = time.perf_counter()
                        store.append_error(
                            {
                                "key": unit.key,
                                "method": unit.method,
                                "batch": unit.batch,
                                "eps": list(unit.eps),
                                "error": f"{type(exc).__name__}: {_one_line(exc)}",
                                "traceback": traceback.format_exc(limit=8),
                                "time": _now(),
                                "rank": dist.rank,
                            }
                        )
                        storage_s += time.perf_counter() - t0
                        bar.write(f"car-attacks: unit failed: {msg}", file=sys.stderr)
                    else:
                        t0 = time.perf_counter()
                        store.append(record)
                        storage_s += time.perf_counter() - t0
                        run += 1
                    bar.update(1)
        finally:
            counts = dist.gather((run, failures, storage_s))
            run = sum(c[0] for c in counts)
            failures = [f for c in counts for f in c[1]]

            def finish() -> dict[str, Any]:
                t0 = time.perf_counter()
                store.merge_shards(order)
                session.update(
                    finished=_now(),
                    wall_s=round(time.perf_counter() - t_start, 3),
                    units_run=run,
                    units_failed=len(failures),
                    storage_s=round(sum(c[2] for c in counts) + time.perf_counter() - t0, 4),
                )
                manifest["units_done"] = len(store.done_keys() & set(order))
                manifest["status"] = (
                    "complete" if manifest["units_done"] == len(units) else "incomplete"
                )
                manifest["wall_time_s"] = round(
                    sum(float(s.get("wall_s", 0.0)) for s in manifest["sessions"]), 3
                )
                store.write_manifest(manifest)
                return session

            session = dist.on_main(finish)
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
        storage_s=float(session.get("storage_s", 0.0)),
        rank=dist.rank,
        world_size=dist.world_size,
    )
