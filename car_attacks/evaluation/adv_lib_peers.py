"""adv-lib's attacks as peers (``library: adv_lib``; the optional extra ``peers``).

adv-lib (Rony et al., https://github.com/jeromerony/adv_lib, 0.2.8) has plain PyTorch
functions on inputs in [0, 1]: ``apgd`` and ``apgd_targeted`` (Croce & Hein 2020/2021;
fixed eps), ``fmn`` (Pintor et al. 2021), ``ddn`` (Rony et al. 2019) and ``alma`` (Rony
et al. 2021; minimization). adv_lib is imported only when such a peer runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import foolbox as fb
import torch
from torch import Tensor

from .methods import AttackTarget, MethodAdapter, MethodOutcome

__all__ = ["ADV_LIB_ATTACKS", "AdvLibAttack", "AdvLibPeer", "adv_lib_attack"]

_P = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


class AdvLibAttack:
    """What the adapter knows about one adv-lib attack function."""

    def __init__(self, *, kind: str, norms: tuple[str, ...], params: tuple[str, ...]) -> None:
        self.kind = kind
        self.norms = norms
        self.params = params


_APGD_PARAMS = ("n_iter", "n_restarts", "loss_function", "eot_iter", "rho", "use_large_reps")
#: The adv-lib attacks a config may name, their kind, norms and the parameters it may set.
ADV_LIB_ATTACKS: dict[str, AdvLibAttack] = {
    "apgd": AdvLibAttack(kind="fixed", norms=("l1", "l2", "linf"), params=_APGD_PARAMS),
    "apgd_targeted": AdvLibAttack(
        kind="fixed", norms=("l1", "l2", "linf"), params=_APGD_PARAMS + ("num_targets",)
    ),
    "fmn": AdvLibAttack(
        kind="minimization",
        norms=("l1", "l2", "linf"),
        params=("steps", "α_init", "α_final", "γ_init", "γ_final", "binary_search_steps"),
    ),
    "ddn": AdvLibAttack(
        kind="minimization", norms=("l2",), params=("steps", "γ", "init_norm", "levels")
    ),
    "alma": AdvLibAttack(
        kind="minimization",
        norms=("l1", "l2"),
        params=("num_steps", "lr_init", "lr_reduction", "init_lr_distance", "μ_init", "ρ_init"),
    ),
}


def adv_lib_attack(name: str) -> Callable[..., Tensor]:
    """The adv-lib function called ``name`` (imports adv_lib)."""
    from adv_lib.attacks import alma, apgd, apgd_targeted, ddn, fmn

    functions: dict[str, Callable[..., Tensor]] = {
        "apgd": apgd,
        "apgd_targeted": apgd_targeted,
        "fmn": fmn,
        "ddn": ddn,
        "alma": alma,
    }
    return functions[name]


class AdvLibPeer(MethodAdapter):
    """One adv-lib attack in one norm.

    For a model with bounds ``(lo, hi)`` other than (0, 1) the inputs are mapped to
    [0, 1], the model sees ``lo + u (hi - lo)`` and eps is divided by ``hi - lo``.
    Minimization attacks return the point found; it is shrunk to each eps with foolbox's
    ``LpDistance.clip_perturbation`` (as foolbox does for its own minimization attacks).
    The global torch generator is seeded with ``seed`` inside ``torch.random.fork_rng``.
    """

    def __init__(self, *, attack: str, norm: str, params: dict[str, Any]) -> None:
        spec = ADV_LIB_ATTACKS.get(attack)
        if spec is None:
            raise ValueError(f"attack must be one of {sorted(ADV_LIB_ATTACKS)}, got {attack!r}")
        if norm not in spec.norms:
            raise ValueError(f"adv-lib's {attack} supports norms {spec.norms}, got norm={norm!r}")
        for key in params:
            if key not in spec.params:
                raise ValueError(
                    f"params: {key!r} is not a parameter of adv-lib's {attack} a config may "
                    f"set ({', '.join(spec.params)})"
                )
        self.attack = attack
        self.norm = norm
        self.kind = spec.kind
        self.params = dict(params)

    def __repr__(self) -> str:
        return f"AdvLibPeer(attack={self.attack!r}, norm={self.norm!r}, params={self.params!r})"

    def _call(self, model: torch.nn.Module, u: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """The attack on ``u`` in [0, 1] (``eps`` already in [0, 1] units)."""
        fn = adv_lib_attack(self.attack)
        kwargs: dict[str, Any] = dict(self.params)
        if self.attack in ("apgd", "apgd_targeted", "fmn"):
            kwargs["norm"] = _P[self.norm]
        if self.attack == "alma":
            kwargs["distance"] = self.norm
        if eps is not None:
            kwargs["eps"] = eps
        out: Tensor = fn(model, u, y, **kwargs)
        return out.detach().clamp(0.0, 1.0)

    def run(
        self, target: AttackTarget, x: Tensor, y: Tensor, eps: tuple[float, ...], seed: int
    ) -> MethodOutcome:
        lo, hi = target.bounds
        scale = hi - lo

        def unit_model(u: Tensor) -> Tensor:
            out: Tensor = target.counted(lo + u * scale)
            return out

        model = _Wrapped(unit_model)
        u0 = ((x - lo) / scale).detach()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.kind == "fixed":
                advs = [lo + self._call(model, u0, y, e / scale) * scale for e in eps]
                found = None
            else:
                found = (lo + self._call(model, u0, y, None) * scale).clamp(lo, hi)
                distance = fb.distances.LpDistance(_P[self.norm])
                advs = [distance.clip_perturbation(x, found, e) for e in eps]
        advs = [a.clamp(lo, hi) for a in advs]
        with torch.no_grad():
            success = [(target.model(a).argmax(dim=1) != y).tolist() for a in advs]
        return MethodOutcome(clipped=advs, success=success, found=found)


class _Wrapped(torch.nn.Module):
    """A callable as an ``nn.Module`` (adv-lib calls ``model(inputs)``)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, u: Tensor) -> Tensor:
        return self.fn(u)
