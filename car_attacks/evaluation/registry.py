"""Names in a config -> things: models, data sets, attack classes and peers.

Attack classes are looked up by name at run time in :mod:`car_attacks.attacks`
and its submodules, so a class added there works in a config without changes
here. ``"package.module:Class"`` names any other importable class.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import NORMS, AttackConfig, ConfigError, ExperimentConfig, PeerConfig

__all__ = [
    "APGD_PARAMS",
    "AttackInfo",
    "attack_kind",
    "attack_norm",
    "car_attack_classes",
    "check_references",
    "dataset_entries",
    "foolbox_peer_classes",
    "make_attack",
    "make_peer",
    "model_entries",
    "resolve_attack_class",
    "resolve_peer_class",
]

#: APGDAttack constructor arguments a config may set (the rest are set by the runner).
APGD_PARAMS: tuple[str, ...] = (
    "n_iter",
    "n_restarts",
    "loss",
    "eot_iter",
    "rho",
    "topk",
    "use_largereps",
)
_APGD_NAMES = ("APGDAttack", "APGD")


# --------------------------------------------------------------------------- attacks


def _attack_base() -> type:
    from foolbox.attacks.base import Attack

    return Attack


def _attack_modules() -> list[Any]:
    import car_attacks.attacks as pkg

    mods: list[Any] = [pkg]
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            mods.append(importlib.import_module(f"{pkg.__name__}.{info.name}"))
        except Exception:  # a module being edited must not break the others
            continue
    return mods


def resolve_attack_class(name: str) -> type:
    """The attack class called ``name`` in :mod:`car_attacks.attacks` (or ``"mod:Class"``).

    Raises LookupError with a one-line reason.
    """
    if ":" in name:
        module_name, _, cls_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LookupError(f"cannot import {module_name!r}: {exc}") from None
        obj = getattr(module, cls_name, None)
    else:
        obj = None
        for module in _attack_modules():
            obj = getattr(module, name, None)
            if obj is not None:
                break
    if not (inspect.isclass(obj) and issubclass(obj, _attack_base())):
        known = ", ".join(sorted(car_attack_classes()))
        raise LookupError(f"unknown attack class {name!r}; known: {known}")
    return obj


def car_attack_classes() -> dict[str, type]:
    """Concrete attack classes of :mod:`car_attacks.attacks` that take ``rescaling``."""
    base = _attack_base()
    out: dict[str, type] = {}
    for module in _attack_modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isclass(obj) or name in out:
                continue
            if not issubclass(obj, base) or not obj.__module__.startswith("car_attacks."):
                continue
            if "rescaling" not in inspect.signature(obj).parameters:
                continue
            try:
                inst = obj()
                attack_norm(inst)
            except Exception:  # abstract bases have no norm
                continue
            out[name] = obj
    return dict(sorted(out.items()))


def attack_norm(attack: Any) -> float | None:
    """The p of an attack instance's distance (``None`` if it has none)."""
    distance = getattr(attack, "distance", None)
    p = getattr(distance, "p", None)
    if p is None:
        return None
    return float(p)


def attack_kind(attack: Any) -> str:
    """``"fixed"`` (FixedEpsilonAttack: one run per eps) or ``"minimization"`` (one run)."""
    from foolbox.attacks.base import FixedEpsilonAttack, MinimizationAttack

    if isinstance(attack, MinimizationAttack):
        return "minimization"
    if isinstance(attack, FixedEpsilonAttack):
        return "fixed"
    raise TypeError(
        f"{type(attack).__name__} is neither a foolbox FixedEpsilonAttack nor a MinimizationAttack"
    )


def _norm_name(p: float) -> str:
    return "linf" if math.isinf(p) else f"l{p:g}"


def make_attack(config: AttackConfig, rescaling: str, seed: int, *, path: str = "") -> Any:
    """Instantiate a car_attacks attack for one rescaling variant.

    ``seed`` is passed when the class takes one (and ``params`` does not set it).
    """
    where = path or f"attack {config.id!r}"
    try:
        cls = resolve_attack_class(config.cls)
    except LookupError as exc:
        raise ConfigError(f"{where}.class", str(exc)) from None
    sig = inspect.signature(cls).parameters
    if "rescaling" not in sig:
        raise ConfigError(
            f"{where}.class",
            f"{config.cls} takes no 'rescaling' argument; compare library attacks as peers",
        )
    if "rescaling" in config.params:
        raise ConfigError(f"{where}.params.rescaling", "set the variants with 'rescalings'")
    kwargs = dict(config.params)
    kwargs["rescaling"] = rescaling
    if "seed" in sig and "seed" not in kwargs:
        kwargs["seed"] = seed
    try:
        attack = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}.params", f"{config.cls} rejected the parameters: {exc}"
        ) from None
    _check_norm(attack, config.norm, f"{where}.norm", config.cls)
    try:
        kind = attack_kind(attack)
    except TypeError as exc:
        raise ConfigError(f"{where}.class", str(exc)) from None
    if config.init != "own" and kind != "minimization":
        raise ConfigError(
            f"{where}.init",
            f"{config.cls} is not a minimization attack; it takes no starting points",
        )
    return attack


def _check_norm(attack: Any, norm: str, path: str, cls: str) -> None:
    p = attack_norm(attack)
    if p is not None and p != NORMS[norm]:
        raise ConfigError(path, f"{norm} does not match {cls}, which attacks in {_norm_name(p)}")


def resolve_peer_class(library: str, name: str) -> type:
    """A foolbox attack class or AutoAttack's APGDAttack; LookupError if unknown."""
    if library == "foolbox":
        import foolbox.attacks as fa

        obj = getattr(fa, name, None)
        if not (inspect.isclass(obj) and issubclass(obj, _attack_base())):
            raise LookupError(
                f"unknown foolbox attack {name!r}; known: {', '.join(foolbox_peer_classes())}"
            )
        return obj
    if library == "autoattack":
        if name not in _APGD_NAMES:
            raise LookupError(f"unknown AutoAttack peer {name!r}; known: APGDAttack")
        from pyautoattack.autopgd_base import APGDAttack

        return APGDAttack
    raise LookupError(f"unknown peer library {library!r}")


def foolbox_peer_classes() -> list[str]:
    import foolbox.attacks as fa
    from foolbox.attacks.base import FixedEpsilonAttack, MinimizationAttack

    return sorted(
        n
        for n, obj in vars(fa).items()
        if inspect.isclass(obj)
        and issubclass(obj, FixedEpsilonAttack | MinimizationAttack)
        and obj.__module__.startswith("foolbox.attacks.")
        and not n.startswith("_")
        and obj not in (FixedEpsilonAttack, MinimizationAttack)
    )


def make_peer(peer: PeerConfig, norm: str, *, path: str = "") -> Any:
    """Instantiate a peer: a foolbox attack, or an :class:`APGDPeer` for AutoAttack."""
    where = path or f"peer {peer.id!r}"
    try:
        cls = resolve_peer_class(peer.library, peer.cls)
    except LookupError as exc:
        raise ConfigError(f"{where}.class", str(exc)) from None
    if peer.library == "autoattack":
        from .peers import APGDPeer

        for key in peer.params:
            if key not in APGD_PARAMS:
                raise ConfigError(
                    f"{where}.params.{key}",
                    f"not an APGDAttack parameter a config may set ({', '.join(APGD_PARAMS)})",
                )
        return APGDPeer(norm=norm, params=dict(peer.params))
    try:
        attack = cls(**peer.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.params", f"{peer.cls} rejected the parameters: {exc}") from None
    _check_norm(attack, norm, f"{where}.class", peer.cls)
    try:
        attack_kind(attack)
    except TypeError as exc:
        raise ConfigError(f"{where}.class", str(exc)) from None
    return attack


# --------------------------------------------------------------------------- models, data


@dataclass(frozen=True)
class AttackInfo:
    name: str
    norm: str
    kind: str
    source: str


def _models_module() -> Any:
    try:
        return importlib.import_module("car_attacks.models")
    except ImportError as exc:
        raise ConfigError("model.name", f"car_attacks.models cannot be imported: {exc}") from None


def _data_module() -> Any:
    try:
        return importlib.import_module("car_attacks.data")
    except ImportError as exc:
        raise ConfigError("data.name", f"car_attacks.data cannot be imported: {exc}") from None


def model_spec(name: str) -> Any:
    """``car_attacks.models.model_spec(name)``; ConfigError naming ``model.name`` if unknown."""
    models = _models_module()
    try:
        return models.model_spec(name)
    except (KeyError, ValueError, LookupError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ConfigError("model.name", str(msg)) from None


def dataset_registry() -> dict[str, Any]:
    data = _data_module()
    reg = getattr(data, "DATASETS", None)
    if isinstance(reg, dict):
        return dict(reg)
    names = getattr(data, "list_datasets", None)
    if callable(names):
        return {str(getattr(s, "name", s)): s for s in names()}
    return {}


def check_dataset(name: str) -> Any:
    reg = dataset_registry()
    if name not in reg:
        raise ConfigError(
            "data.name", f"unknown data set {name!r}; known: {', '.join(sorted(reg)) or '(none)'}"
        )
    return reg[name]


def _availability(spec: Any) -> tuple[bool, str]:
    fn = getattr(spec, "available", None)
    if callable(fn):
        try:
            ok, reason = fn()
        except Exception as exc:  # availability probes must not break listing
            return False, f"{type(exc).__name__}: {exc}"
        return bool(ok), str(reason)
    if isinstance(fn, bool):
        return fn, ""
    offline = getattr(spec, "offline", None)
    return (
        (bool(offline), "" if offline else "needs a download")
        if offline is not None
        else (
            True,
            "",
        )
    )


def dataset_available(name: str, root: str | None = None) -> tuple[bool, str]:
    """Whether data set ``name`` loads here (from ``root``), with the reason if not."""
    try:
        spec = dataset_registry().get(name)
    except ConfigError as exc:
        return False, exc.message
    if spec is None:
        return False, f"unknown data set {name!r}"
    fn = getattr(spec, "available", None)
    if callable(fn):
        try:
            ok, reason = fn(root) if root is not None else fn()
        except TypeError:
            ok, reason = fn()
        except Exception as exc:  # availability probes must not raise
            return False, f"{type(exc).__name__}: {exc}"
        return bool(ok), str(reason)
    return _availability(spec)


def model_entries() -> list[dict[str, Any]]:
    models = _models_module()
    out = []
    for spec in models.list_models():
        if isinstance(spec, str):
            spec = models.model_spec(spec)
        ok, reason = _availability(spec)
        out.append(
            {
                "name": spec.name,
                "description": getattr(spec, "description", ""),
                "bounds": list(getattr(spec, "bounds", (0.0, 1.0))),
                "available": ok,
                "reason": reason,
            }
        )
    prefix = getattr(models, "TORCHVISION_PREFIX", "torchvision:")
    out.append(
        {
            "name": f"{prefix}<arch>",
            "description": "any torchvision classifier; weights download when online, "
            "or model.weights: <local file>",
            "bounds": [0.0, 1.0],
            "available": False,
            "reason": "needs a download or a local weights file (model.weights)",
        }
    )
    return out


def dataset_entries() -> list[dict[str, Any]]:
    out = []
    for name, spec in sorted(dataset_registry().items()):
        ok, reason = _availability(spec)
        out.append(
            {
                "name": name,
                "description": getattr(spec, "description", ""),
                "available": ok,
                "reason": reason,
            }
        )
    return out


def attack_entries() -> list[AttackInfo]:
    out = []
    for name, cls in car_attack_classes().items():
        inst = cls()
        p = attack_norm(inst)
        out.append(
            AttackInfo(
                name, _norm_name(p) if p is not None else "?", attack_kind(inst), "car_attacks"
            )
        )
    return out


def peer_entries() -> list[AttackInfo]:
    out = []
    import foolbox.attacks as fa

    for name in foolbox_peer_classes():
        cls = getattr(fa, name)
        try:
            inst = cls()
            p = attack_norm(inst)
            kind = attack_kind(inst)
        except Exception:  # needs arguments
            p, kind = None, "?"
        out.append(AttackInfo(name, _norm_name(p) if p is not None else "?", kind, "foolbox"))
    out.append(AttackInfo("APGDAttack", "l1/l2/linf", "fixed", "autoattack"))
    return out


# --------------------------------------------------------------------------- check a config


def check_references(config: ExperimentConfig) -> None:
    """Resolve every name in ``config`` (model, data set, weights file, attack classes,
    parameters, peers) without loading weights or data. Raises :class:`ConfigError`."""
    model_spec(config.model.name)
    if config.model.weights is not None:
        w = Path(config.model.weights).expanduser()
        if not w.is_file():
            raise ConfigError("model.weights", f"weights file not found: {w}")
    dspec = check_dataset(config.data.name)
    splits = getattr(dspec, "splits", None)
    if splits and config.data.split not in splits:
        raise ConfigError(
            "data.split",
            f"data set {config.data.name!r} has no split {config.data.split!r} "
            f"(splits: {', '.join(splits)})",
        )
    sizes = getattr(dspec, "split_sizes", None) or {}
    total = sizes.get(config.data.split)
    if total is not None and config.data.root is None and getattr(dspec, "offline", False):
        if config.data.start + config.data.n > total:
            raise ConfigError(
                "data.n",
                f"data set {config.data.name!r} has {total} samples in split "
                f"{config.data.split!r}; start + n = {config.data.start + config.data.n}",
            )
    mspec = model_spec(config.model.name)
    m_shape = getattr(mspec, "input_shape", None)
    d_shape = getattr(dspec, "input_shape", None)
    if m_shape is not None and d_shape is not None and tuple(m_shape) != tuple(d_shape):
        raise ConfigError(
            "data.name",
            f"data set {config.data.name!r} gives inputs of shape {tuple(d_shape)}, model "
            f"{config.model.name!r} expects {tuple(m_shape)}",
        )
    norms: dict[str, str] = {}
    for i, a in enumerate(config.attacks):
        for variant in a.rescalings:
            make_attack(a, variant, config.seed, path=f"attacks[{i}]")
        norms[a.id] = a.norm
    for i, peer in enumerate(config.peers):
        make_peer(peer, norms[peer.compare_with], path=f"peers[{i}]")
