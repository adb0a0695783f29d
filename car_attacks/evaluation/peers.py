"""Adapters of peers that do not follow foolbox's call contract: AutoAttack's APGD,
APGD-T and the full AutoAttack ensemble (Croce & Hein, ICML 2020)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .methods import AttackTarget, MethodAdapter, MethodOutcome

if TYPE_CHECKING:
    from pyautoattack.autopgd_base import APGDAttack

__all__ = [
    "APGDPeer",
    "APGDTargetedPeer",
    "APGD_NORMS",
    "APGD_PARAMS",
    "APGDT_PARAMS",
    "AUTOATTACK_ATTACKS",
    "AUTOATTACK_PARAMS",
    "AUTOATTACK_VERSIONS",
    "AutoAttackPeer",
    "UnitBoxPeer",
]

APGD_NORMS: dict[str, str] = {"l1": "L1", "l2": "L2", "linf": "Linf"}
#: APGDAttack constructor arguments a config may set (the rest are set by the adapter).
APGD_PARAMS: tuple[str, ...] = (
    "n_iter",
    "n_restarts",
    "loss",
    "eot_iter",
    "rho",
    "topk",
    "use_largereps",
)
#: APGDAttack_targeted constructor arguments a config may set (its loss is fixed to the
#: targeted DLR loss by the library).
APGDT_PARAMS: tuple[str, ...] = tuple(p for p in APGD_PARAMS if p != "loss") + ("n_target_classes",)
#: AutoAttack settings a config may set: ``version`` (``attacks`` implies ``custom``), the
#: sub-attacks of a custom run, and overrides applied to the sub-attacks after the version.
AUTOATTACK_PARAMS: tuple[str, ...] = (
    "version",
    "attacks",
    "n_iter",
    "n_target_classes",
    "n_queries",
)
AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand", "custom")
AUTOATTACK_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")

Predict = Callable[[Tensor], Tensor]


class UnitBoxPeer(MethodAdapter):
    """A pyautoattack attack at each eps of one norm, run on inputs in [0, 1].

    pyautoattack works on inputs in [0, 1] and clips to [0, 1]; for a model with other
    bounds ``(lo, hi)`` the inputs are mapped to ``u = (x - lo) / (hi - lo)``, the model
    sees ``lo + u (hi - lo)`` and eps is divided by ``hi - lo`` (all Lp norms scale
    linearly). The attacks seed torch's generator themselves with ``seed``.
    """

    kind = "fixed"
    #: The constructor arguments a config may set.
    allowed_params: tuple[str, ...] = ()

    def __init__(self, *, norm: str, params: dict[str, Any]) -> None:
        if norm not in APGD_NORMS:
            raise ValueError(
                f"{type(self).__name__} supports norms {sorted(APGD_NORMS)}, got norm={norm!r}"
            )
        unknown = [k for k in params if k not in self.allowed_params]
        if unknown:
            raise ValueError(
                f"params {unknown} are not settable; known: {', '.join(self.allowed_params)}"
            )
        self.norm = norm
        self.params = dict(params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, params={self.params!r})"

    def run(
        self, target: AttackTarget, x: Tensor, y: Tensor, eps: tuple[float, ...], seed: int
    ) -> MethodOutcome:
        """The attack at each eps (counted queries); success is checked with the uncounted
        model."""
        advs = [self.perturb(target.counted, target.bounds, x, y, e, seed) for e in eps]
        with torch.no_grad():
            success = [(target.model(adv).argmax(dim=1) != y).tolist() for adv in advs]
        return MethodOutcome(clipped=advs, success=success)

    def perturb(
        self,
        model: torch.nn.Module,
        bounds: tuple[float, float],
        inputs: Tensor,
        labels: Tensor,
        eps: float,
        seed: int,
    ) -> Tensor:
        """Adversarial examples (clipped to ``bounds``) at ``eps``; non-fooled samples are
        returned unchanged, as pyautoattack does."""
        lo, hi = float(bounds[0]), float(bounds[1])
        scale = hi - lo
        unit = (lo, hi) == (0.0, 1.0)

        def predict(u: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = model(u if unit else lo + u * scale)
            return out

        u0 = inputs if unit else (inputs - lo) / scale
        adv = self.attack_unit(
            predict, u0.detach().clone(), labels.detach().clone(), float(eps) / scale, seed
        )
        adv = adv.detach().clamp(0.0, 1.0)
        return adv if unit else (lo + adv * scale).clamp(lo, hi)

    @abstractmethod
    def attack_unit(self, predict: Predict, u: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        """The library's adversarial examples of ``u`` (in [0, 1]) at ``eps`` (in [0, 1]
        units)."""


class _APGDFamilyPeer(UnitBoxPeer):
    """An APGD-style pyautoattack class: ``cls(predict, norm=, eps=, seed=, ...).perturb``."""

    @staticmethod
    @abstractmethod
    def apgd_class() -> type[APGDAttack]:
        """The pyautoattack class this peer runs."""

    def attack_unit(self, predict: Predict, u: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        apgd = self.apgd_class()(
            predict,
            norm=APGD_NORMS[self.norm],
            eps=eps,
            seed=seed,
            device=u.device,
            verbose=False,
            **self.params,
        )
        adv: Tensor = apgd.perturb(u, y)
        return adv


class APGDPeer(_APGDFamilyPeer):
    """AutoAttack's APGD (``pyautoattack.autopgd_base.APGDAttack``) for one norm."""

    allowed_params = APGD_PARAMS

    @staticmethod
    def apgd_class() -> type[APGDAttack]:
        from pyautoattack.autopgd_base import APGDAttack

        return APGDAttack


class APGDTargetedPeer(_APGDFamilyPeer):
    """AutoAttack's APGD-T (``pyautoattack.autopgd_base.APGDAttack_targeted``: APGD on the
    targeted DLR loss against each of the ``n_target_classes`` highest other classes)."""

    allowed_params = APGDT_PARAMS

    @staticmethod
    def apgd_class() -> type[APGDAttack]:
        from pyautoattack.autopgd_base import APGDAttack_targeted

        return APGDAttack_targeted


class AutoAttackPeer(UnitBoxPeer):
    """The AutoAttack ensemble (``pyautoattack.autoattack.AutoAttack``): its sub-attacks in
    turn on the samples not yet fooled, each sample keeping the first adversarial point."""

    allowed_params = AUTOATTACK_PARAMS

    def __init__(self, *, norm: str, params: dict[str, Any]) -> None:
        super().__init__(norm=norm, params=params)
        attacks = self.params.get("attacks")
        version = self.params.get("version", "custom" if attacks is not None else "standard")
        if version not in AUTOATTACK_VERSIONS:
            raise ValueError(f"version must be one of {AUTOATTACK_VERSIONS}, got {version!r}")
        if (attacks is not None) != (version == "custom"):
            raise ValueError(f"attacks={attacks!r} goes with version 'custom', got {version!r}")
        if attacks is not None and (
            not isinstance(attacks, list | tuple)
            or not attacks
            or any(a not in AUTOATTACK_ATTACKS for a in attacks)
        ):
            raise ValueError(f"attacks must be a list of {AUTOATTACK_ATTACKS}, got {attacks!r}")
        self.version: str = version
        self.attacks: list[str] | None = None if attacks is None else list(attacks)

    def attack_unit(self, predict: Predict, u: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        from pyautoattack.autoattack import AutoAttack

        aa = AutoAttack(
            predict,
            attacks=self.attacks,
            device=u.device,
            eps=eps,
            norm=APGD_NORMS[self.norm],
            seed=seed,
            version=self.version,
        )
        if "n_iter" in self.params:
            for sub in (aa.apgd, aa.apgd_targeted, aa.fab):
                sub.n_iter = int(self.params["n_iter"])
        if "n_target_classes" in self.params:
            for sub in (aa.apgd_targeted, aa.fab):
                sub.n_target_classes = int(self.params["n_target_classes"])
        if "n_queries" in self.params:
            aa.square.n_queries = int(self.params["n_queries"])
        adv: Tensor = aa.run_standard_evaluation(u, y, batch_size=max(1, u.shape[0]))[0]
        return adv
