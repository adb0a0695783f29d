"""Experiment configs: YAML -> typed dataclasses, strictly validated.

A config file is a YAML mapping::

    name: cifar10_resnet18          # optional; default: the file name without .yaml
    seed: 0                         # 0 .. 2**32-1; attacks get seed=seed, peers torch.manual_seed
    device: cpu                     # torch device string ("cpu", "cuda", "cuda:1")
    model:
      name: cifar10_resnet18        # a car_attacks.models name or "torchvision:<arch>"
      weights: null                 # optional local weights file (replaces the default)
    data:
      name: foolbox_cifar10         # a car_attacks.data name
      split: test
      n: 20                         # number of samples
      batch_size: 20
      start: 0                      # index of the first sample
      root: null                    # data set root folder (torchvision / ImageFolder data)
      download: false               # allow a download (torchvision CIFAR-10) when online
    rescalings: [car, bisection, naive]   # the variants every attack is run with
    attacks:
      - id: pgd_linf                # optional; default: derived from the class
        class: LinfClippingAwarePGD # a class of car_attacks.attacks (or "module:Class")
        norm: linf                  # l1 | l2 | linf: the norm of eps
        params: {steps: 10}         # constructor keyword arguments
        eps: [1/255, 2/255]         # numbers, or strings "a/b"
        rescalings: [car, naive]    # optional: overrides the top-level list
        init: own                   # minimization attacks: own | batch_blend starting points
    peers:
      - id: foolbox_pgd_linf        # optional
        library: foolbox            # foolbox | autoattack | adv_lib
        class: LinfProjectedGradientDescentAttack   # foolbox.attacks.<class>, APGDAttack, ...
        compare_with: pgd_linf      # the attack whose eps grid and plot it shares
        params: {steps: 10}

Errors are :class:`ConfigError` whose message starts with the key path
(``attacks[2].parmas: unknown key ...``). :func:`parse_config` checks structure and
types only; names of models, data sets and attack classes are checked by
:func:`car_attacks.evaluation.catalog.check_references`. Reading YAML files and
``--set`` overrides: :mod:`car_attacks.evaluation.config_yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from ..attacks import RESCALINGS

__all__ = [
    "INIT_CHOICES",
    "MAX_SEED",
    "NORMS",
    "PEER_LIBRARIES",
    "RESCALING_CHOICES",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PeerConfig",
    "config_hash",
    "default_id",
    "parse_config",
    "parse_eps",
]

NORMS: dict[str, float] = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
RESCALING_CHOICES: tuple[str, ...] = RESCALINGS
"""The rescaling variants a config may name (:data:`car_attacks.attacks.RESCALINGS`)."""
PEER_LIBRARIES: tuple[str, ...] = ("foolbox", "autoattack", "adv_lib")
INIT_CHOICES: tuple[str, ...] = ("own", "batch_blend")
"""Starting points of minimization attacks: the attack's own initialisation, or
``batch_blend`` (see :func:`car_attacks.attacks.starting_points.batch_blend_starting_points`)."""
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Largest ``seed``: torch and numpy generators take seeds below 2**32 everywhere.
MAX_SEED = 2**32 - 1
#: Limits on ``params`` values, so that a recursive or exponential YAML alias is refused.
_MAX_DEPTH = 32
_MAX_VALUES = 100_000


class ConfigError(ValueError):
    """A config is malformed; the message starts with the offending key path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    weights: str | None = None


@dataclass(frozen=True)
class DataConfig:
    name: str
    split: str = "test"
    n: int = 20
    batch_size: int = 20
    start: int = 0
    root: str | None = None
    download: bool = False


@dataclass(frozen=True)
class AttackConfig:
    """One of our attacks, run with each of its rescaling variants."""

    id: str
    cls: str
    """A class name of :data:`car_attacks.evaluation.catalog.CAR_ATTACK_CLASSES`."""
    norm: str
    """``l1``, ``l2`` or ``linf``: the norm of ``eps``."""
    eps: tuple[float, ...]
    """Increasing, each finite and > 0."""
    params: dict[str, Any] = field(default_factory=dict)
    rescalings: tuple[str, ...] = RESCALING_CHOICES
    init: str = "own"
    """Starting points of a minimization attack: ``own`` or ``batch_blend``."""

    @property
    def p(self) -> float:
        return NORMS[self.norm]


@dataclass(frozen=True)
class PeerConfig:
    """A library's attack, compared with one of our attacks on its eps grid."""

    id: str
    library: str
    """``foolbox`` or ``autoattack``."""
    cls: str
    compare_with: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: model, data, attacks and peers (see the module docstring)."""

    name: str
    model: ModelConfig
    data: DataConfig
    attacks: tuple[AttackConfig, ...]
    peers: tuple[PeerConfig, ...] = ()
    rescalings: tuple[str, ...] = RESCALING_CHOICES
    seed: int = 0
    device: str = "cpu"

    def attack(self, attack_id: str) -> AttackConfig:
        for a in self.attacks:
            if a.id == attack_id:
                return a
        raise KeyError(attack_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able, YAML-able), with the YAML key names (``class``)."""
        d = asdict(self)
        for group in ("attacks", "peers"):
            for item in d[group]:
                item["class"] = item.pop("cls")
        d["rescalings"] = list(d["rescalings"])
        for a in d["attacks"]:
            a["eps"] = list(a["eps"])
            a["rescalings"] = list(a["rescalings"])
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def config_hash(config: ExperimentConfig) -> str:
    """SHA-256 of the normalised config: equal iff every setting that affects results is."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- parsing


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path or "config", f"expected a mapping, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path or "config", f"keys must be strings, got {key!r}")
    return value


def _check_keys(
    m: Mapping[str, Any], path: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    allowed = required + optional
    for key in m:
        if key not in allowed:
            raise ConfigError(_join(path, key), f"unknown key (allowed keys: {', '.join(allowed)})")
    for key in required:
        if key not in m:
            raise ConfigError(_join(path, key), "missing required key")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _str(value: Any, path: str, *, allow_none: bool = False, nonempty: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        expected = "str or null" if allow_none else "str"
        raise ConfigError(path, f"expected {expected}, got {_type_name(value)} {value!r}")
    if nonempty and not value.strip():
        raise ConfigError(path, "must not be empty")
    return value


def _int(value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected int, got {_type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be <= {maximum}, got {value}")
    return value


def _identifier(value: Any, path: str, what: str = "ids") -> str:
    """A name made of letters, digits, ``_ . -`` (ids of attacks and peers, the config's
    name)."""
    text = _str(value, path)
    if not _ID_RE.match(text):
        raise ConfigError(path, f"{what} may use letters, digits, _ . - only: {text!r}")
    return str(text)


def _nonempty_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, f"expected a non-empty list, got {_type_name(value)} {value!r}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected bool, got {_type_name(value)} {value!r}")
    return value


def parse_eps(value: Any, path: str) -> float:
    """A positive finite number, or a string ``"a/b"`` (e.g. ``"8/255"``)."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a number or 'a/b', got bool {value!r}")
    if isinstance(value, int | float):
        eps = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+)\s*)?", value)
        try:
            if m is None:
                raise ValueError(value)
            eps = float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                path, f"expected a number or a fraction like '8/255', got {value!r}"
            ) from None
    else:
        raise ConfigError(path, f"expected a number or 'a/b', got {_type_name(value)} {value!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ConfigError(path, f"eps must be finite and > 0, got {value!r}")
    return eps


def _rescalings(value: Any, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(_nonempty_list(value, path)):
        if v not in RESCALING_CHOICES:
            raise ConfigError(
                f"{path}[{i}]",
                f"unknown rescaling {v!r} (choose from {', '.join(RESCALING_CHOICES)})",
            )
        if v in out:
            raise ConfigError(f"{path}[{i}]", f"duplicate rescaling {v!r}")
        out.append(v)
    return tuple(out)


def _params(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    m = _mapping(value, path)
    budget = [_MAX_VALUES]
    for key, v in m.items():
        _check_plain(v, _join(path, key), budget, 1)
    return dict(m)


def _check_plain(value: Any, path: str, budget: list[int], depth: int) -> None:
    """Plain YAML data (null, bool, numbers, strings, lists, string-keyed mappings) of
    bounded depth and size; ``budget[0]`` counts down the values left to check."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(path, f"more than {_MAX_VALUES} values (a YAML alias bomb?)")
    if depth > _MAX_DEPTH:
        raise ConfigError(path, f"nested more than {_MAX_DEPTH} levels deep (a recursive alias?)")
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]", budget, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in _mapping(value, path).items():
            _check_plain(v, _join(path, k), budget, depth + 1)
        return
    raise ConfigError(path, f"unsupported value of type {_type_name(value)}")


def default_id(cls: str) -> str:
    """The default id of an attack class name (and of a config file's stem)."""
    base = cls.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def _attack(value: Any, path: str, default_rescalings: tuple[str, ...]) -> AttackConfig:
    m = _mapping(value, path)
    _check_keys(m, path, ("class", "norm", "eps"), ("id", "params", "rescalings", "init"))
    cls = _str(m["class"], _join(path, "class"))
    norm = _str(m["norm"], _join(path, "norm"))
    if norm not in NORMS:
        raise ConfigError(_join(path, "norm"), f"unknown norm {norm!r} (choose from l1, l2, linf)")
    eps_raw = _nonempty_list(m["eps"], _join(path, "eps"))
    eps = tuple(parse_eps(v, f"{path}.eps[{i}]") for i, v in enumerate(eps_raw))
    if len(set(eps)) != len(eps):
        raise ConfigError(_join(path, "eps"), "duplicate eps values")
    if list(eps) != sorted(eps):
        raise ConfigError(_join(path, "eps"), "eps values must be increasing")
    attack_id = _identifier(m.get("id", default_id(cls)), _join(path, "id"))
    rescalings = (
        _rescalings(m["rescalings"], _join(path, "rescalings"))
        if "rescalings" in m
        else default_rescalings
    )
    init = _str(m.get("init", "own"), _join(path, "init"))
    if init not in INIT_CHOICES:
        raise ConfigError(
            _join(path, "init"), f"unknown init {init!r} (choose from {', '.join(INIT_CHOICES)})"
        )
    return AttackConfig(
        id=attack_id,
        init=init,
        cls=cls,
        norm=norm,
        eps=eps,
        params=_params(m.get("params"), _join(path, "params")),
        rescalings=rescalings,
    )


def _peer(value: Any, path: str) -> PeerConfig:
    m = _mapping(value, path)
    _check_keys(m, path, ("library", "class", "compare_with"), ("id", "params"))
    library = _str(m["library"], _join(path, "library"))
    if library not in PEER_LIBRARIES:
        raise ConfigError(
            _join(path, "library"),
            f"unknown peer library {library!r} (choose from {', '.join(PEER_LIBRARIES)})",
        )
    cls = _str(m["class"], _join(path, "class"))
    peer_id = _identifier(m.get("id", f"{library}_{default_id(cls)}"), _join(path, "id"))
    return PeerConfig(
        id=peer_id,
        library=library,
        cls=cls,
        compare_with=_str(m["compare_with"], _join(path, "compare_with")),
        params=_params(m.get("params"), _join(path, "params")),
    )


def parse_config(raw: Any, *, default_name: str = "experiment") -> ExperimentConfig:
    """Validate the structure and types of a loaded YAML document."""
    m = _mapping(raw, "")
    _check_keys(
        m,
        "",
        ("model", "data", "attacks"),
        ("name", "seed", "device", "rescalings", "peers"),
    )
    name = _identifier(m.get("name", default_name), "name", what="names")

    mm = _mapping(m["model"], "model")
    _check_keys(mm, "model", ("name",), ("weights",))
    model = ModelConfig(
        name=_str(mm["name"], "model.name"),
        weights=_str(mm.get("weights"), "model.weights", allow_none=True),
    )

    dm = _mapping(m["data"], "data")
    _check_keys(dm, "data", ("name",), ("split", "n", "batch_size", "start", "root", "download"))
    data = DataConfig(
        name=_str(dm["name"], "data.name"),
        split=_str(dm.get("split", "test"), "data.split"),
        n=_int(dm.get("n", 20), "data.n", minimum=1),
        batch_size=_int(dm.get("batch_size", 20), "data.batch_size", minimum=1),
        start=_int(dm.get("start", 0), "data.start", minimum=0),
        root=_str(dm.get("root"), "data.root", allow_none=True),
        download=_bool(dm.get("download", False), "data.download"),
    )

    rescalings = (
        _rescalings(m["rescalings"], "rescalings") if "rescalings" in m else RESCALING_CHOICES
    )
    attacks_raw = _nonempty_list(m["attacks"], "attacks")
    attacks = tuple(_attack(a, f"attacks[{i}]", rescalings) for i, a in enumerate(attacks_raw))
    peers_raw = m.get("peers", [])
    if peers_raw is None:
        peers_raw = []
    if not isinstance(peers_raw, list):
        raise ConfigError("peers", f"expected a list, got {_type_name(peers_raw)} {peers_raw!r}")
    peers = tuple(_peer(p, f"peers[{i}]") for i, p in enumerate(peers_raw))

    seen: dict[str, str] = {}
    for i, a in enumerate(attacks):
        if a.id in seen:
            raise ConfigError(f"attacks[{i}].id", f"duplicate id {a.id!r} (set a distinct 'id')")
        seen[a.id] = f"attacks[{i}]"
    for i, p in enumerate(peers):
        if p.id in seen:
            raise ConfigError(f"peers[{i}].id", f"duplicate id {p.id!r} (set a distinct 'id')")
        seen[p.id] = f"peers[{i}]"
        if p.compare_with not in {a.id for a in attacks}:
            raise ConfigError(
                f"peers[{i}].compare_with",
                f"no attack with id {p.compare_with!r} (attack ids: "
                f"{', '.join(a.id for a in attacks)})",
            )
    if "clean" in seen:
        raise ConfigError(seen["clean"] + ".id", "the id 'clean' is reserved")

    device = _str(m.get("device", "cpu"), "device")
    try:
        import torch

        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError("device", f"not a torch device: {device!r} ({exc})") from None

    return ExperimentConfig(
        name=name,
        model=model,
        data=data,
        attacks=attacks,
        peers=peers,
        rescalings=rescalings,
        seed=_int(m.get("seed", 0), "seed", minimum=0, maximum=MAX_SEED),
        device=device,
    )
