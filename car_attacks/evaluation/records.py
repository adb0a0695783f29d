"""The typed records of a run directory, shared by the writer (the runner) and the readers
(the report, resume, shard merging).

A run directory holds ``manifest.json`` (:class:`Manifest`) and one JSON line per finished
unit of work in ``results/*.jsonl``: a :class:`CleanRecord` per batch (the model's
predictions, and for certified models the certified radii) or an :class:`AttackRecord`
per method, batch and eps group (per eps and sample: success and the effective L1, L2,
L-inf norms of ``clipped - x``). Failed units are :class:`ErrorRecord` lines in
``errors.jsonl``. ``to_json`` gives the stored dict (the on-disk format, unchanged since
format 1) and ``from_json`` reads it back, so the keys live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CLEAN",
    "AttackRecord",
    "Certificate",
    "CleanRecord",
    "PEER",
    "TIMING_KEYS",
    "ErrorRecord",
    "FoundPerturbation",
    "Manifest",
    "MethodRecord",
    "Session",
    "UnitRecord",
    "record_from_json",
    "unit_key",
]

CLEAN = "clean"
"""The method key (and attack and variant) of the clean-accuracy units."""

TIMING_KEYS = ("time_s", "cpu_s", "rescaling_s", "model_s", "compile_s")
"""The stored keys of an :class:`AttackRecord` that are measured times (they differ between
otherwise identical runs)."""

PEER = "peer"
"""The variant of a peer library's attack (ours are ``car``, ``bisection``, ``naive``)."""


def unit_key(method: str, batch: int, eps: list[float] | tuple[float, ...]) -> str:
    """The identity of a unit of work: method, batch and the eps it covers."""
    return f"{method}|{batch}|{','.join(repr(float(e)) for e in eps)}"


@dataclass(frozen=True)
class MethodRecord:
    """One evaluated method: an attack with one rescaling variant, or a peer's attack."""

    key: str
    attack: str
    variant: str
    """``car``, ``bisection``, ``naive`` or ``peer``."""
    cls: str
    kind: str
    """``fixed`` (attacks at each eps) or ``minimization`` (smallest perturbation found)."""
    library: str = "car_attacks"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MethodRecord:
        return cls(
            str(d["key"]),
            str(d["attack"]),
            str(d["variant"]),
            str(d["cls"]),
            str(d["kind"]),
            str(d.get("library", "")),
        )


@dataclass(frozen=True)
class Certificate:
    """A certified model's certificate for one batch: ``radius = margin / (sqrt(2) L)``."""

    lipschitz: float
    input_size: int
    radius: list[float]


@dataclass(frozen=True)
class CleanRecord:
    """The model's predictions on one batch."""

    batch: int
    indices: list[int]
    labels: list[int]
    pred: list[int]
    correct: list[bool]
    time_s: float
    certificate: Certificate | None = None
    method: str = CLEAN
    eps: tuple[float, ...] = ()

    @property
    def key(self) -> str:
        return unit_key(self.method, self.batch, self.eps)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": CLEAN,
            "attack": CLEAN,
            "variant": CLEAN,
            "batch": self.batch,
            "eps": [],
            "indices": list(self.indices),
            "labels": list(self.labels),
            "pred": list(self.pred),
            "correct": list(self.correct),
            "time_s": self.time_s,
        }
        if self.certificate is not None:
            out.update(
                lipschitz=self.certificate.lipschitz,
                input_size=self.certificate.input_size,
                radius=list(self.certificate.radius),
            )
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CleanRecord:
        cert = None
        if "radius" in d:
            cert = Certificate(float(d["lipschitz"]), int(d["input_size"]), list(d["radius"]))
        return cls(
            batch=int(d["batch"]),
            indices=[int(i) for i in d["indices"]],
            labels=[int(v) for v in d["labels"]],
            pred=[int(v) for v in d["pred"]],
            correct=[bool(v) for v in d["correct"]],
            time_s=float(d.get("time_s", 0.0)),
            certificate=cert,
        )


@dataclass(frozen=True)
class FoundPerturbation:
    """What a minimization attack found per sample, before it is shrunk to each eps."""

    l1: list[float]
    l2: list[float]
    linf: list[float]
    adversarial: list[bool]
    violation: list[bool] | None = None
    """Certified models: does the found point change the prediction inside the certificate?"""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "l1": list(self.l1),
            "l2": list(self.l2),
            "linf": list(self.linf),
            "adversarial": list(self.adversarial),
        }
        if self.violation is not None:
            out["violation"] = list(self.violation)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FoundPerturbation:
        violation = d.get("violation")
        return cls(
            [float(v) for v in d["l1"]],
            [float(v) for v in d["l2"]],
            [float(v) for v in d["linf"]],
            [bool(v) for v in d["adversarial"]],
            None if violation is None else [bool(v) for v in violation],
        )


@dataclass(frozen=True)
class AttackRecord:
    """One method on one batch for a group of eps; per-eps lists hold one value per sample."""

    method: str
    attack: str
    variant: str
    batch: int
    eps: tuple[float, ...]
    indices: list[int]
    success: list[list[bool]]
    l1: list[list[float]]
    l2: list[list[float]]
    linf: list[list[float]]
    queries: int
    time_s: float
    cpu_s: float
    found: FoundPerturbation | None = None
    violation: list[list[bool]] | None = None
    """Certified models: per eps and sample, a result inside the certified ball that
    changes the prediction (must never be true)."""
    rescaling_s: float | None = None
    """Wall time of the attack's rescaling and projection work (our attacks; absent in
    older run directories and for peers)."""
    model_s: float | None = None
    """Wall time of the model's forward passes during the attack (absent in older run
    directories)."""
    compile_s: float | None = None
    """Wall time spent compiling the fused kernels (``CAR_ATTACKS_COMPILE``) during the
    attack: inside ``time_s``, outside ``rescaling_s``; absent when nothing was compiled."""

    @property
    def key(self) -> str:
        return unit_key(self.method, self.batch, self.eps)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "attack": self.attack,
            "variant": self.variant,
            "batch": self.batch,
            "eps": list(self.eps),
            "indices": list(self.indices),
        }
        if self.found is not None:
            out["found"] = self.found.to_json()
        out.update(
            success=self.success,
            l1=self.l1,
            l2=self.l2,
            linf=self.linf,
            queries=self.queries,
            time_s=self.time_s,
            cpu_s=self.cpu_s,
        )
        if self.violation is not None:
            out["violation"] = self.violation
        timings = {
            "rescaling_s": self.rescaling_s,
            "model_s": self.model_s,
            "compile_s": self.compile_s,
        }
        out.update({k: v for k, v in timings.items() if v is not None})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackRecord:
        found = d.get("found")
        return cls(
            method=str(d["method"]),
            attack=str(d["attack"]),
            variant=str(d["variant"]),
            batch=int(d["batch"]),
            eps=tuple(float(e) for e in d["eps"]),
            indices=[int(i) for i in d["indices"]],
            success=[[bool(v) for v in row] for row in d["success"]],
            l1=[[float(v) for v in row] for row in d["l1"]],
            l2=[[float(v) for v in row] for row in d["l2"]],
            linf=[[float(v) for v in row] for row in d["linf"]],
            queries=int(d.get("queries", 0)),
            time_s=float(d.get("time_s", 0.0)),
            cpu_s=float(d.get("cpu_s", 0.0)),
            found=None if found is None else FoundPerturbation.from_json(found),
            violation=None if d.get("violation") is None else d["violation"],
            rescaling_s=_optional_float(d.get("rescaling_s")),
            model_s=_optional_float(d.get("model_s")),
            compile_s=_optional_float(d.get("compile_s")),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


UnitRecord = CleanRecord | AttackRecord
"""One line of ``results/*.jsonl``."""


def record_from_json(d: dict[str, Any]) -> UnitRecord:
    """The typed record of one stored result line."""
    if d.get("method") == CLEAN:
        return CleanRecord.from_json(d)
    return AttackRecord.from_json(d)


@dataclass(frozen=True)
class ErrorRecord:
    """A unit that raised; kept in ``errors.jsonl`` and retried by the next run."""

    key: str
    method: str
    batch: int
    eps: tuple[float, ...]
    error: str
    traceback: str
    time: str
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "eps": list(self.eps)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ErrorRecord:
        return cls(
            key=str(d.get("key", "")),
            method=str(d.get("method", "")),
            batch=int(d.get("batch", 0)),
            eps=tuple(float(e) for e in d.get("eps", [])),
            error=str(d.get("error", "")),
            traceback=str(d.get("traceback", "")),
            time=str(d.get("time", "")),
            rank=int(d.get("rank", 0)),
        )


@dataclass
class Session:
    """One invocation of ``car-attacks run`` on a run directory (a resumed run has several)."""

    started: str
    units_run: int = 0
    units_failed: int = 0
    world_size: int | None = None
    finished: str | None = None
    wall_s: float | None = None
    storage_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "started": self.started,
            "units_run": self.units_run,
            "units_failed": self.units_failed,
        }
        optional = {
            "world_size": self.world_size,
            "finished": self.finished,
            "wall_s": self.wall_s,
            "storage_s": self.storage_s,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Session:
        def opt(key: str, kind: type) -> Any:
            return None if d.get(key) is None else kind(d[key])

        return cls(
            started=str(d.get("started", "")),
            units_run=int(d.get("units_run", 0)),
            units_failed=int(d.get("units_failed", 0)),
            world_size=opt("world_size", int),
            finished=opt("finished", str),
            wall_s=opt("wall_s", float),
            storage_s=opt("storage_s", float),
        )


@dataclass
class Manifest:
    """``manifest.json``: which config a run directory belongs to, its plan and its sessions."""

    format: str
    config_name: str
    config_hash: str
    created: str
    units_total: int
    methods: list[MethodRecord]
    environment: dict[str, Any]
    """Free-form facts about the machine (:func:`car_attacks.evaluation.environment`)."""
    status: str = "created"
    units_done: int = 0
    sessions: list[Session] = field(default_factory=list)
    wall_time_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "config_name": self.config_name,
            "config_hash": self.config_hash,
            "created": self.created,
            "status": self.status,
            "units_total": self.units_total,
            "units_done": self.units_done,
            "methods": [m.to_json() for m in self.methods],
            "environment": self.environment,
            "sessions": [s.to_json() for s in self.sessions],
        }
        if self.wall_time_s is not None:
            out["wall_time_s"] = self.wall_time_s
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        wall = d.get("wall_time_s")
        return cls(
            format=str(d.get("format", "")),
            config_name=str(d.get("config_name", "")),
            config_hash=str(d.get("config_hash", "")),
            created=str(d.get("created", "")),
            units_total=int(d.get("units_total", 0)),
            methods=[MethodRecord.from_json(m) for m in d.get("methods", [])],
            environment=dict(d.get("environment", {})),
            status=str(d.get("status", "")),
            units_done=int(d.get("units_done", 0)),
            sessions=[Session.from_json(s) for s in d.get("sessions", [])],
            wall_time_s=None if wall is None else float(wall),
        )
