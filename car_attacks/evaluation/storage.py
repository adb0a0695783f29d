"""A run directory: manifest, config, per-sample results as JSON Lines, atomic writes.

Layout::

    DIR/manifest.json        format, config name and hash, environment, sessions, status
    DIR/config.yaml          the normalised config (what the hash is computed from)
    DIR/config.source.yaml   the config file as given (with its comments)
    DIR/results/*.jsonl      one file per method; one line per finished unit of work
    DIR/errors.jsonl         units that raised (they are not stored as results: a rerun
                             retries them)
    DIR/results/*.rank<R>.jsonl, DIR/errors.rank<R>.jsonl
                             what rank R of a sharded run (torchrun) wrote; rank 0 merges
                             them into the files above when every rank is done
    DIR/report.{json,md,html}, DIR/figures/*.png

Every result line is appended, flushed and fsync'd as soon as it is produced; a
line cut short by a kill is dropped on the next open, so a rerun redoes exactly
the units that have no complete line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .records import ErrorRecord, Manifest, UnitRecord, record_from_json, unit_key

__all__ = [
    "FORMAT",
    "RunDirError",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "unit_key",
]

FORMAT = "car-attacks-run/1"


class RunDirError(RuntimeError):
    """The run directory cannot be used (another config's run, not a run dir, locked)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _safe_name(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "__", method)


def _json_line(record: dict[str, Any]) -> str:
    """One stored line: compact JSON (NaN and inf allowed) and a newline."""
    return json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"


def _parse_record(line: bytes) -> UnitRecord | None:
    """The record of one stored line; ``None`` for a line that is not one."""
    try:
        data = json.loads(line)
        return record_from_json(data) if isinstance(data, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None


def _scan(path: Path) -> tuple[list[UnitRecord], int, int]:
    """``(records, end of the last good line, file size)`` of a results file.

    Only the last line may be bad (cut short by a kill: not JSON, or no newline);
    a bad line followed by others raises RunDirError."""
    data = path.read_bytes()
    records: list[UnitRecord] = []
    pos = good_end = 0
    lineno = 0
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl
        rec = _parse_record(data[pos:end]) if nl >= 0 else None
        if rec is None:
            rest = data[end + 1 :] if nl >= 0 else b""
            if rest.strip(b"\x00 \n\r\t"):
                raise RunDirError(
                    f"{path} is damaged at line {lineno} (not a result record) and has "
                    "results after it; it was changed outside car-attacks. Move the file "
                    "away to redo its units, or use another --out"
                )
            break
        records.append(rec)
        good_end = pos = nl + 1
    return records, good_end, len(data)


class RunStore:
    """Read and append the results of one run directory.

    ``shard`` (a rank of a sharded run) makes :meth:`append` and :meth:`append_error`
    write to that shard's own files, so that ranks never write to the same file; reading
    (:meth:`records`, :meth:`errors`) always covers every file of the directory.
    """

    def __init__(self, run_dir: str | Path, *, shard: int | None = None) -> None:
        self.dir = Path(run_dir)
        self.shard = shard
        self._suffix = "" if shard is None else f".rank{int(shard)}"
        self.results_dir = self.dir / "results"
        self.manifest_path = self.dir / "manifest.json"
        self.errors_path = self.dir / f"errors{self._suffix}.jsonl"

    # -- manifest ----------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> Manifest:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(
                f"{self.dir} is not a car-attacks run directory (no manifest.json)"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"cannot read {self.manifest_path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunDirError(f"{self.manifest_path} is not a {FORMAT} manifest")
        try:
            return Manifest.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"cannot read {self.manifest_path}: {exc!r}") from None

    def write_manifest(self, manifest: Manifest) -> None:
        text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.manifest_path, text)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the directory for the duration of a run (POSIX only)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        with open(self.dir / ".lock", "w") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunDirError(f"another process is running in {self.dir}") from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- results -----------------------------------------------------------------------------

    def path_for(self, method: str) -> Path:
        return self.results_dir / f"{_safe_name(method)}{self._suffix}.jsonl"

    def append(self, record: UnitRecord) -> None:
        """Append one record to its method's file; fsync before returning."""
        self._append(self.path_for(record.method), record.to_json())

    def append_error(self, record: ErrorRecord) -> None:
        """Append one error record to this store's errors file; fsync before returning."""
        self._append(self.errors_path, record.to_json())

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = _json_line(record)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def repair(self) -> int:
        """Drop incomplete trailing lines (a kill during a write); returns how many.

        Raises RunDirError for a damaged line *before* the last one: appends cannot
        cause that, so the file was changed by something else and is not guessed at."""
        dropped = 0
        for path in self._result_files():
            _, good_end, size = _scan(path)
            if good_end < size:
                dropped += 1
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    f.flush()
                    os.fsync(f.fileno())
        return dropped

    def _result_files(self) -> list[Path]:
        return sorted(self.results_dir.glob("*.jsonl")) if self.results_dir.is_dir() else []

    def records(self) -> list[UnitRecord]:
        """Every complete result record; for a unit stored twice the last one wins.

        An incomplete last line (a kill during a write) is left out; any other damage
        raises RunDirError naming the file and line."""
        by_key: dict[str, UnitRecord] = {}
        for path in self._result_files():
            for rec in _scan(path)[0]:
                by_key[rec.key] = rec
        return list(by_key.values())

    def errors(self) -> list[ErrorRecord]:
        """Every error record of the directory (all shards); unreadable lines are skipped."""
        out = []
        for path in self._error_files():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        if isinstance(rec, dict):
                            out.append(ErrorRecord.from_json(rec))
                    except (json.JSONDecodeError, TypeError, ValueError):
                        continue
        return out

    def _error_files(self) -> list[Path]:
        main = self.dir / "errors.jsonl"
        shards = sorted(self.dir.glob("errors.rank[0-9]*.jsonl"))
        return ([main] if main.is_file() else []) + shards

    def merge_shards(self, order: dict[str, int]) -> int:
        """Fold the shard files of a sharded run into one file per method (and one
        errors.jsonl); returns how many shard files were merged.

        Records are written in the order given by ``order`` (unit key -> position;
        unknown keys last), each unit once. Every merged file is written atomically
        before any shard file is removed, so a kill part way loses nothing (a unit
        stored twice is read once, see :meth:`records`)."""
        shard_files = (
            sorted(self.results_dir.glob("*.rank[0-9]*.jsonl")) if self.results_dir.is_dir() else []
        )
        error_shards = sorted(self.dir.glob("errors.rank[0-9]*.jsonl"))
        if not shard_files and not error_shards:
            return 0
        by_method: dict[str, list[UnitRecord]] = {}
        for rec in self.records():
            by_method.setdefault(rec.method, []).append(rec)
        last = len(order)
        for method, recs in by_method.items():
            recs.sort(key=lambda r: order.get(r.key, last))
            text = "".join(_json_line(r.to_json()) for r in recs)
            atomic_write_text(self.results_dir / f"{_safe_name(method)}.jsonl", text)
        if error_shards:
            text = "".join(_json_line(e.to_json()) for e in self.errors())
            atomic_write_text(self.dir / "errors.jsonl", text)
        for path in shard_files + error_shards:
            path.unlink()
        return len(shard_files) + len(error_shards)

    def done_keys(self) -> set[str]:
        """The keys of every stored unit."""
        return {r.key for r in self.records()}
