"""Names in a config -> things: the attack classes, peers, models and data sets it names.

Our attacks are the explicit table :data:`CAR_ATTACK_CLASSES`; foolbox peers are the
attack classes of :mod:`foolbox.attacks`; AutoAttack's APGD, APGD-T and the full AutoAttack
are the adapters of :mod:`~.peers`; adv-lib's attacks those of :mod:`~.adv_lib_peers`.
:func:`check_references` resolves every name of a config without loading weights or data
and returns its methods, each attack built once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from foolbox.attacks.base import (
    Attack,
    AttackWithDistance,
    FixedEpsilonAttack,
    MinimizationAttack,
)
from foolbox.distances import LpDistance

from .. import attacks as ca
from ..data import DatasetSpec, list_datasets
from ..models import ModelSpec
from ..models import model_spec as _model_spec
from .adv_lib_peers import ADV_LIB_ATTACKS, AdvLibPeer
from .config import NORMS, AttackConfig, ConfigError, ExperimentConfig, PeerConfig
from .methods import FoolboxMethod, MethodAdapter, PreparedMethod
from .peers import APGD_PARAMS, APGDPeer, APGDTargetedPeer, AutoAttackPeer, UnitBoxPeer
from .records import MethodRecord

__all__ = [
    "APGD_CLASS",
    "AUTOATTACK_PEER_CLASSES",
    "CAR_ATTACK_CLASSES",
    "attack_kind",
    "attack_norm",
    "check_inputs",
    "check_references",
    "dataset_spec",
    "foolbox_attack_classes",
    "make_attack",
    "make_peer",
    "model_spec",
    "norm_name",
    "prepare_methods",
]

#: The attack classes a config's ``attacks[].class`` may name (all take ``rescaling``).
CAR_ATTACK_CLASSES: dict[str, type[Attack]] = {
    cls.__name__: cls
    for cls in (
        ca.ClippingAwareAutoAttack,
        ca.ClippingAwareBoundaryAttack,
        ca.L1ClippingAwareAPGD,
        ca.L2ClippingAwareAPGD,
        ca.LinfClippingAwareAPGD,
        ca.ClippingAwareHopSkipJump,
        ca.L1ClippingAwareFMN,
        ca.L2ClippingAwareFMN,
        ca.LinfClippingAwareFMN,
        ca.L2ClippingAwareDDN,
        ca.L1ClippingAwareAdditiveGaussianNoiseAttack,
        ca.L1ClippingAwareAdditiveUniformNoiseAttack,
        ca.L1ClippingAwareBasicIterativeAttack,
        ca.L1ClippingAwareFastGradientAttack,
        ca.L1ClippingAwarePGD,
        ca.L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
        ca.L1ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        ca.L2ClippingAwareAdditiveGaussianNoiseAttack,
        ca.L2ClippingAwareAdditiveUniformNoiseAttack,
        ca.L2ClippingAwareBasicIterativeAttack,
        ca.L2ClippingAwareFastGradientAttack,
        ca.L2ClippingAwarePGD,
        ca.L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
        ca.L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        ca.LinfClippingAwareAdditiveGaussianNoiseAttack,
        ca.LinfClippingAwareAdditiveUniformNoiseAttack,
        ca.LinfClippingAwareBasicIterativeAttack,
        ca.LinfClippingAwareFastGradientAttack,
        ca.LinfClippingAwarePGD,
        ca.LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
        ca.LinfClippingAwareRepeatedAdditiveUniformNoiseAttack,
    )
}

#: The AutoAttack class a peer names (``library: autoattack``).
APGD_CLASS = "APGDAttack"
_APGD_ALIASES = (APGD_CLASS, "APGD")
#: The other AutoAttack peers a config may name (``library: autoattack``), by class or alias.
AUTOATTACK_PEER_CLASSES: dict[str, type[UnitBoxPeer]] = {
    "APGDAttack_targeted": APGDTargetedPeer,
    "APGD-T": APGDTargetedPeer,
    "AutoAttack": AutoAttackPeer,
}


# --------------------------------------------------------------------------- attacks


def foolbox_attack_classes() -> dict[str, type[Attack]]:
    """The fixed-eps and minimization attack classes of :mod:`foolbox.attacks`, by name."""
    import foolbox.attacks as fa

    kinds = (FixedEpsilonAttack, MinimizationAttack)
    return {
        name: obj
        for name, obj in sorted(vars(fa).items())
        if isinstance(obj, type)
        and issubclass(obj, kinds)
        and obj not in kinds
        and obj.__module__.startswith("foolbox.attacks.")
        and not name.startswith("_")
    }


def attack_norm(attack: Attack) -> float | None:
    """The p of an attack's Lp distance (``None``: no Lp distance, or none set yet)."""
    if not isinstance(attack, AttackWithDistance):
        return None
    try:
        distance = attack.distance
    except (ValueError, AttributeError):  # a foolbox attack with no distance set (yet)
        return None
    return float(distance.p) if isinstance(distance, LpDistance) else None


def attack_kind(attack: Attack) -> str:
    """``"fixed"`` (FixedEpsilonAttack: one run per eps) or ``"minimization"`` (one run)."""
    if isinstance(attack, MinimizationAttack):
        return "minimization"
    if isinstance(attack, FixedEpsilonAttack):
        return "fixed"
    raise TypeError(
        f"{type(attack).__name__} is neither a foolbox FixedEpsilonAttack nor a MinimizationAttack"
    )


def norm_name(p: float) -> str:
    """``linf``, ``l1``, ``l2``... for a p."""
    return "linf" if math.isinf(p) else f"l{p:g}"


def _build(cls: type[Attack], params: dict[str, Any], where: str, name: str) -> Attack:
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.params", f"{name} rejected the parameters: {exc}") from None


def _foolbox_method(
    attack: Attack, norm: str, where: str, name: str, *, path: str, batch_blend: bool
) -> FoolboxMethod:
    """Check an attack's norm and kind; ``batch_blend``: it gets batch starting points when
    it is a minimization attack."""
    p = attack_norm(attack)
    if p is not None and p != NORMS[norm]:
        raise ConfigError(path, f"{norm} does not match {name}, which attacks in {norm_name(p)}")
    try:
        kind = attack_kind(attack)
    except TypeError as exc:
        raise ConfigError(f"{where}.class", str(exc)) from None
    return FoolboxMethod(attack=attack, kind=kind, batch_blend=batch_blend and kind != "fixed")


def make_attack(
    config: AttackConfig, rescaling: str, seed: int, *, path: str = ""
) -> FoolboxMethod:
    """One of our attacks for one rescaling variant, with ``seed`` (unless ``params`` sets
    it). Raises ConfigError."""
    where = path or f"attack {config.id!r}"
    cls = CAR_ATTACK_CLASSES.get(config.cls)
    if cls is None:
        known = ", ".join(sorted(CAR_ATTACK_CLASSES))
        raise ConfigError(f"{where}.class", f"unknown attack class {config.cls!r}; known: {known}")
    if "rescaling" in config.params:
        raise ConfigError(f"{where}.params.rescaling", "set the variants with 'rescalings'")
    params = {**config.params, "rescaling": rescaling}
    params.setdefault("seed", seed)
    method = _foolbox_method(
        _build(cls, params, where, config.cls),
        config.norm,
        where,
        config.cls,
        path=f"{where}.norm",
        batch_blend=config.init != "own",
    )
    if config.init != "own" and method.kind != "minimization":
        raise ConfigError(
            f"{where}.init",
            f"{config.cls} is not a minimization attack; it takes no starting points",
        )
    return method


def make_peer(peer: PeerConfig, compared: AttackConfig, *, path: str = "") -> MethodAdapter:
    """A peer (a foolbox attack, AutoAttack's APGD / APGD-T / AutoAttack, or adv-lib's) in
    the norm of the attack it is compared with; minimization peers share that attack's
    starting points. Raises ConfigError."""
    where = path or f"peer {peer.id!r}"
    if peer.library == "autoattack" and peer.cls in AUTOATTACK_PEER_CLASSES:
        return _autoattack_peer(AUTOATTACK_PEER_CLASSES[peer.cls], peer, compared, where)
    if peer.library == "autoattack":
        if peer.cls not in _APGD_ALIASES:
            raise ConfigError(
                f"{where}.class",
                f"unknown AutoAttack peer {peer.cls!r}; known: "
                + ", ".join((APGD_CLASS, *AUTOATTACK_PEER_CLASSES)),
            )
        for key in peer.params:
            if key not in APGD_PARAMS:
                raise ConfigError(
                    f"{where}.params.{key}",
                    f"not an APGDAttack parameter a config may set ({', '.join(APGD_PARAMS)})",
                )
        return APGDPeer(norm=compared.norm, params=dict(peer.params))
    if peer.library == "adv_lib":
        if peer.cls not in ADV_LIB_ATTACKS:
            known = ", ".join(ADV_LIB_ATTACKS)
            raise ConfigError(
                f"{where}.class", f"unknown adv_lib peer {peer.cls!r}; known: {known}"
            )
        try:
            return AdvLibPeer(attack=peer.cls, norm=compared.norm, params=dict(peer.params))
        except ValueError as exc:
            raise ConfigError(f"{where}.params", str(exc)) from None
    if peer.library != "foolbox":
        raise ConfigError(f"{where}.class", f"unknown peer library {peer.library!r}")
    classes = foolbox_attack_classes()
    cls = classes.get(peer.cls)
    if cls is None:
        raise ConfigError(
            f"{where}.class", f"unknown foolbox attack {peer.cls!r}; known: {', '.join(classes)}"
        )
    return _foolbox_method(
        _build(cls, dict(peer.params), where, peer.cls),
        compared.norm,
        where,
        peer.cls,
        path=f"{where}.class",
        batch_blend=compared.init != "own",
    )


def _autoattack_peer(
    cls: type[UnitBoxPeer], peer: PeerConfig, compared: AttackConfig, where: str
) -> MethodAdapter:
    """An AutoAttack peer of class ``cls``; each unknown param is named. Raises ConfigError."""
    for key in peer.params:
        if key not in cls.allowed_params:
            raise ConfigError(
                f"{where}.params.{key}",
                f"not a {peer.cls} parameter a config may set ({', '.join(cls.allowed_params)})",
            )
    try:
        return cls(norm=compared.norm, params=dict(peer.params))
    except ValueError as exc:
        raise ConfigError(f"{where}.params", str(exc)) from None


def prepare_methods(config: ExperimentConfig) -> list[PreparedMethod]:
    """Attacks x variants and the peers, each peer right after the attack it is compared
    with, each built once. Raises ConfigError."""
    out: list[PreparedMethod] = []
    for i, a in enumerate(config.attacks):
        for variant in a.rescalings:
            method = make_attack(a, variant, config.seed, path=f"attacks[{i}]")
            record = MethodRecord(f"{a.id}/{variant}", a.id, variant, a.cls, method.kind)
            out.append(PreparedMethod(record=record, adapter=method))
        for j, peer in enumerate(config.peers):
            if peer.compare_with == a.id:
                adapter = make_peer(peer, a, path=f"peers[{j}]")
                record = MethodRecord(peer.id, a.id, "peer", peer.cls, adapter.kind, peer.library)
                out.append(PreparedMethod(record=record, adapter=adapter))
    return out


# --------------------------------------------------------------------------- models, data


def model_spec(name: str) -> ModelSpec:
    """The model called ``name``; ConfigError naming ``model.name`` if unknown."""
    try:
        return _model_spec(name)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ConfigError("model.name", str(msg)) from None


def dataset_spec(name: str) -> DatasetSpec:
    """The data set called ``name``; ConfigError naming ``data.name`` if unknown."""
    specs = {s.name: s for s in list_datasets()}
    if name not in specs:
        known = ", ".join(sorted(specs)) or "(none)"
        raise ConfigError("data.name", f"unknown data set {name!r}; known: {known}")
    return specs[name]


def check_inputs(config: ExperimentConfig) -> None:
    """Resolve the model, weights file and data set of ``config`` (split, size, shape)
    without loading them. Raises ConfigError."""
    mspec = model_spec(config.model.name)
    if config.model.weights is not None:
        w = Path(config.model.weights).expanduser()
        if not w.is_file():
            raise ConfigError("model.weights", f"weights file not found: {w}")
    data = config.data
    dspec = dataset_spec(data.name)
    if dspec.splits and data.split not in dspec.splits:
        raise ConfigError(
            "data.split",
            f"data set {data.name!r} has no split {data.split!r} "
            f"(splits: {', '.join(dspec.splits)})",
        )
    total = dspec.split_sizes.get(data.split)
    if total is not None and data.root is None and dspec.offline and data.start + data.n > total:
        raise ConfigError(
            "data.n",
            f"data set {data.name!r} has {total} samples in split "
            f"{data.split!r}; start + n = {data.start + data.n}",
        )
    if tuple(mspec.input_shape) != tuple(dspec.input_shape):
        raise ConfigError(
            "data.name",
            f"data set {data.name!r} gives inputs of shape {tuple(dspec.input_shape)}, model "
            f"{config.model.name!r} expects {tuple(mspec.input_shape)}",
        )


def check_references(config: ExperimentConfig) -> list[PreparedMethod]:
    """Resolve every name in ``config`` (model, data set, weights file, attack classes,
    parameters, peers) without loading weights or data; returns the methods, built.
    Raises :class:`ConfigError`."""
    check_inputs(config)
    return prepare_methods(config)
