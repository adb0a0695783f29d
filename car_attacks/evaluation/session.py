"""One invocation of ``car-attacks run`` on a run directory: the manifest's lifecycle.

:meth:`RunSession.existing` refuses another config's run or a foreign directory (writing
nothing); :meth:`RunSession.begin` locks the directory, creates it if new, drops what a
kill left and adds a session entry to the manifest; :meth:`RunSession.record` and
:meth:`RunSession.fail` store what each unit gave; :meth:`RunSession.finish` merges the
shards of a sharded run and writes the totals.
"""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType

from .config import ExperimentConfig, config_hash
from .environment import environment
from .inputs import one_line
from .planning import Unit
from .records import ErrorRecord, Manifest, MethodRecord, Session, UnitRecord
from .storage import FORMAT, RunDirError, RunStore, atomic_write_text

__all__ = ["RunSession", "now"]


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


class RunSession:
    """The manifest lifecycle of one run of ``config`` in ``store`` (a context manager:
    leaving it releases the directory lock)."""

    def __init__(
        self,
        *,
        store: RunStore,
        config: ExperimentConfig,
        methods: list[MethodRecord],
        units: list[Unit],
        source_text: str | None,
        world_size: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.methods = methods
        self.units = units
        self.source_text = source_text
        self.order = {u.key: i for i, u in enumerate(units)}
        self.session = Session(started=now(), world_size=world_size)
        self.units_run = 0
        self.failures: list[str] = []
        self.storage_s = 0.0
        """Time spent storing results (appends with fsync) by this process."""
        self._say = log or (lambda msg: None)
        self._t_start = time.perf_counter()
        self._stack = ExitStack()
        self._manifest: Manifest | None = None

    def __enter__(self) -> RunSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def existing(self) -> Manifest | None:
        """The manifest of a run of this config already in the directory (``None``: a new
        or empty directory). Raises RunDirError for another config's run or a foreign
        directory. Writes nothing."""
        store = self.store
        if store.exists():
            manifest = store.read_manifest()
            digest = config_hash(self.config)
            if manifest.config_hash != digest:
                raise RunDirError(
                    f"{store.dir} holds a run of a different config (config "
                    f"{manifest.config_name!r}, hash {manifest.config_hash[:12]}; "
                    f"this config: {self.config.name!r}, hash {digest[:12]}); use another --out"
                )
            return manifest
        if store.dir.exists() and not store.dir.is_dir():
            raise RunDirError(f"{store.dir} exists and is not a directory")
        if store.dir.exists() and any(p.name != ".lock" for p in store.dir.iterdir()):
            raise RunDirError(
                f"{store.dir} exists, is not empty and is not a car-attacks run directory"
            )
        return None

    def pending(self) -> list[Unit]:
        """The units that have no stored result, in plan order."""
        done = self.store.done_keys()
        return [u for u in self.units if u.key not in done]

    def _create(self) -> Manifest:
        """Create the run directory: its config files and a new manifest."""
        store, config = self.store, self.config
        store.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store.dir / "config.yaml", config.to_yaml())
        if self.source_text is not None:
            atomic_write_text(store.dir / "config.source.yaml", self.source_text)
        manifest = Manifest(
            format=FORMAT,
            config_name=config.name,
            config_hash=config_hash(config),
            created=now(),
            units_total=len(self.units),
            methods=list(self.methods),
            environment=environment(config.device),
        )
        store.write_manifest(manifest)
        return manifest

    def begin(self) -> None:
        """Lock the directory (until the session is left), create it if it is new, drop
        incomplete lines of a killed run and add this session to the manifest."""
        self._stack.enter_context(self.store.lock())
        manifest = self.existing() or self._create()
        dropped = self.store.repair()
        if dropped:
            self._say(f"dropped {dropped} incomplete result line(s) from an interrupted run")
        manifest.sessions.append(self.session)
        manifest.status = "running"
        manifest.environment = environment(self.config.device)
        self.store.write_manifest(manifest)
        self._manifest = manifest

    def record(self, record: UnitRecord) -> None:
        """Store the result of a unit."""
        t0 = time.perf_counter()
        self.store.append(record)
        self.storage_s += time.perf_counter() - t0
        self.units_run += 1

    def fail(self, unit: Unit, exc: BaseException, rank: int) -> str:
        """Store that a unit raised ``exc`` (the next run retries it); returns a one-line
        description. Call it from the ``except`` block (it stores the traceback)."""
        eps = ",".join(f"{e:.4g}" for e in unit.eps)
        msg = f"{unit.method} batch {unit.batch} eps {eps}: {one_line(exc)}"
        self.failures.append(msg)
        t0 = time.perf_counter()
        self.store.append_error(
            ErrorRecord(
                key=unit.key,
                method=unit.method,
                batch=unit.batch,
                eps=unit.eps,
                error=f"{type(exc).__name__}: {one_line(exc)}",
                traceback=traceback.format_exc(limit=8),
                time=now(),
                rank=rank,
            )
        )
        self.storage_s += time.perf_counter() - t0
        return msg

    def finish(self, units_run: int, failures: int, storage_s: float) -> Session:
        """Merge the shards, close this session's entry with the totals of every rank and
        set the manifest's status. Call after :meth:`begin`."""
        assert self._manifest is not None, "finish() before begin()"
        manifest, session = self._manifest, self.session
        t0 = time.perf_counter()
        self.store.merge_shards(self.order)
        session.finished = now()
        session.wall_s = round(time.perf_counter() - self._t_start, 3)
        session.units_run = units_run
        session.units_failed = failures
        session.storage_s = round(storage_s + time.perf_counter() - t0, 4)
        manifest.units_done = len(self.store.done_keys() & set(self.order))
        manifest.status = "complete" if manifest.units_done == len(self.units) else "incomplete"
        manifest.wall_time_s = round(sum(s.wall_s or 0.0 for s in manifest.sessions), 3)
        self.store.write_manifest(manifest)
        return session
