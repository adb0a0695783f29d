"""What ``car-attacks list`` shows: the named models, data sets, attack classes, peers and
shipped configs, and whether each is usable offline here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

from ..data import list_datasets
from ..models import (
    ROBUSTBENCH_DIR_ENV,
    ROBUSTBENCH_PREFIX,
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    list_models,
)
from ..models.robustbench_models import EXTRA_HINT, default_model_dir
from .catalog import (
    APGD_CLASS,
    CAR_ATTACK_CLASSES,
    attack_kind,
    attack_norm,
    check_references,
    dataset_spec,
    foolbox_attack_classes,
    norm_name,
)
from .config import ConfigError
from .config_yaml import load_config
from .shipped_configs import DEFAULT_CONFIG, shipped_configs

__all__ = [
    "AttackInfo",
    "ConfigEntry",
    "DatasetEntry",
    "Listing",
    "ModelEntry",
    "Unavailable",
    "dataset_available",
    "listing",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    bounds: list[float]
    available: bool
    reason: str


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    available: bool
    reason: str


@dataclass(frozen=True)
class AttackInfo:
    """An attack class a config may name: its norm and kind, and where it comes from."""

    name: str
    norm: str
    kind: str
    source: str


@dataclass(frozen=True)
class ConfigEntry:
    """A shipped config; ``model`` and ``data`` are ``None`` when it does not load."""

    name: str
    path: str
    default: bool
    available: bool
    reason: str
    model: str | None = None
    data: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path, "default": self.default}
        if self.model is not None:
            out.update(model=self.model, data=self.data)
        out.update(available=self.available, reason=self.reason)
        return out


@dataclass(frozen=True)
class Unavailable:
    """A section that could not be listed, and why."""

    error: str


@dataclass(frozen=True)
class Listing:
    models: list[ModelEntry] | Unavailable
    datasets: list[DatasetEntry] | Unavailable
    attacks: list[AttackInfo] | Unavailable
    peers: list[AttackInfo] | Unavailable
    configs: list[ConfigEntry]

    def to_json(self) -> dict[str, Any]:
        """The ``car-attacks list --json`` document."""

        def section(items: list[Any] | Unavailable) -> Any:
            return asdict(items) if isinstance(items, Unavailable) else [asdict(i) for i in items]

        return {
            "models": section(self.models),
            "datasets": section(self.datasets),
            "attacks": section(self.attacks),
            "peers": section(self.peers),
            "configs": [c.to_json() for c in self.configs],
        }


def _probe(available: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """An availability probe's answer; one that raises says so instead of breaking a list."""
    try:
        ok, reason = available()
    except Exception as exc:  # availability probes must not break listing
        return False, f"{type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


def _guard(fn: Callable[[], list[T]]) -> list[T] | Unavailable:
    try:
        return fn()
    except Exception as exc:  # one broken section must not hide the others
        return Unavailable(f"{type(exc).__name__}: {exc}")


#: An ensemble member's checkpoint, ``<name>.pt_m<i>.pt``, in RobustBench's model folder.
_ENSEMBLE_MEMBER = re.compile(r"\.pt_m\d+\.pt$")


def robustbench_entries() -> list[ModelEntry]:
    """``robustbench:<dataset>/<threat_model>/<name>``, and each checkpoint found in
    RobustBench's model folder (``model_dir``) without importing robustbench."""
    model_dir = Path(default_model_dir())
    installed = find_spec("robustbench") is not None
    missing = "" if installed else f"robustbench not installed; {EXTRA_HINT}"
    names = sorted(
        {
            f"{p.parent.parent.name}/{p.parent.name}/{_ENSEMBLE_MEMBER.sub('.pt', p.name)[:-3]}"
            for p in model_dir.glob("*/*/*.pt")
        }
    )
    out = [
        ModelEntry(
            f"{ROBUSTBENCH_PREFIX}<dataset>/<threat_model>/<name>",
            f"a RobustBench model-zoo classifier, loaded by RobustBench from model_dir "
            f"{str(model_dir)!r} (${ROBUSTBENCH_DIR_ENV}); inputs in [0, 1]",
            [0.0, 1.0],
            installed and bool(names),
            missing or ("" if names else f"no checkpoint in {model_dir}/<dataset>/<threat_model>/"),
        )
    ]
    out += [
        ModelEntry(
            f"{ROBUSTBENCH_PREFIX}{name}",
            f"RobustBench checkpoint in {model_dir}",
            [0.0, 1.0],
            installed,
            missing,
        )
        for name in names
    ]
    return out


def model_entries() -> list[ModelEntry]:
    """The named models, ``torchvision:<arch>``, RobustBench models and ``timm:<name>``."""
    out = [
        ModelEntry(spec.name, spec.description, list(spec.bounds), *_probe(spec.available))
        for spec in list_models()
    ]
    out.append(
        ModelEntry(
            f"{TORCHVISION_PREFIX}<arch>",
            "any torchvision classifier; weights download when online, "
            "or model.weights: <local file>",
            [0.0, 1.0],
            False,
            "needs a download or a local weights file (model.weights)",
        )
    )
    out += robustbench_entries()
    timm_installed = find_spec("timm") is not None
    out.append(
        ModelEntry(
            f"{TIMM_PREFIX}<name>",
            "any timm classifier with model.weights: <local state-dict file>; the "
            "normalisation of its pretrained config as a layer, inputs in [0, 1]",
            [0.0, 1.0],
            False,
            "needs a local weights file (model.weights)"
            if timm_installed
            else "timm not installed: pip install timm",
        )
    )
    return out


def dataset_entries() -> list[DatasetEntry]:
    specs = sorted(list_datasets(), key=lambda s: s.name)
    return [DatasetEntry(s.name, s.description, *_probe(s.available)) for s in specs]


def dataset_available(name: str, root: str | None = None) -> tuple[bool, str]:
    """Whether data set ``name`` loads here (from ``root``), with the reason if not."""
    try:
        spec = dataset_spec(name)
    except ConfigError:
        return False, f"unknown data set {name!r}"
    return _probe(lambda: spec.available(root))


def attack_entries() -> list[AttackInfo]:
    out = []
    for name, cls in sorted(CAR_ATTACK_CLASSES.items()):
        inst = cls()
        p = attack_norm(inst)
        norm = norm_name(p) if p is not None else "?"
        out.append(AttackInfo(name, norm, attack_kind(inst), "car_attacks"))
    return out


def peer_entries() -> list[AttackInfo]:
    out = []
    for name, cls in foolbox_attack_classes().items():
        try:
            inst = cls()
            p, kind = attack_norm(inst), attack_kind(inst)
        except Exception:  # needs arguments
            p, kind = None, "?"
        out.append(AttackInfo(name, norm_name(p) if p is not None else "?", kind, "foolbox"))
    out.append(AttackInfo(APGD_CLASS, "l1/l2/linf", "fixed", "autoattack"))
    return out


def config_entries(models: list[ModelEntry] | Unavailable) -> list[ConfigEntry]:
    """The shipped configs: usable offline when they load and their model and data are."""
    model_ok = {m.name: m for m in models} if isinstance(models, list) else {}
    out = []
    for name, path in shipped_configs().items():
        default = name == DEFAULT_CONFIG
        try:
            cfg, _ = load_config(path)
            check_references(cfg)
        except Exception as exc:
            out.append(ConfigEntry(name, str(path), default, False, str(exc)))
            continue
        reasons = []
        m = model_ok.get(cfg.model.name)
        if cfg.model.weights is None and (m is None or not m.available):
            reasons.append(m.reason if m else f"model {cfg.model.name} needs weights")
        ok, why = dataset_available(cfg.data.name, cfg.data.root)
        if not ok:
            reasons.append(why)
        entry = ConfigEntry(
            name, str(path), default, not reasons, "; ".join(reasons), cfg.model.name, cfg.data.name
        )
        out.append(entry)
    return out


def listing() -> Listing:
    """Everything ``car-attacks list`` shows."""
    models = _guard(model_entries)
    return Listing(
        models=models,
        datasets=_guard(dataset_entries),
        attacks=_guard(attack_entries),
        peers=_guard(peer_entries),
        configs=config_entries(models),
    )
