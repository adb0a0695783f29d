"""The adapter of a peer that does not follow foolbox's call contract (AutoAttack's APGD)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .methods import AttackTarget, MethodAdapter, MethodOutcome

__all__ = ["APGD_NORMS", "APGD_PARAMS", "APGDPeer"]

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


class APGDPeer(MethodAdapter):
    """AutoAttack's APGD (``pyautoattack.autopgd_base.APGDAttack``) for one norm.

    APGD works on inputs in [0, 1] and clips to [0, 1]; for a model with other bounds
    ``(lo, hi)`` the inputs are mapped to [0, 1], the model sees ``lo + u (hi - lo)`` and
    eps is divided by ``hi - lo`` (all Lp norms scale linearly). APGD seeds torch's
    generator itself with ``seed`` (``torch.manual_seed``).
    """

    kind = "fixed"

    def __init__(self, *, norm: str, params: dict[str, Any]) -> None:
        if norm not in APGD_NORMS:
            raise ValueError(f"APGD supports norms {sorted(APGD_NORMS)}, got {norm!r}")
        self.norm = norm
        self.params = dict(params)

    def __repr__(self) -> str:
        return f"APGDPeer(norm={self.norm!r}, params={self.params!r})"

    def run(
        self, target: AttackTarget, x: Tensor, y: Tensor, eps: tuple[float, ...], seed: int
    ) -> MethodOutcome:
        """APGD at each eps (counted queries); success is checked with the uncounted model."""
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
        returned unchanged, as APGD does."""
        from pyautoattack.autopgd_base import APGDAttack

        lo, hi = float(bounds[0]), float(bounds[1])
        scale = hi - lo
        unit = (lo, hi) == (0.0, 1.0)

        def predict(u: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = model(u if unit else lo + u * scale)
            return out

        apgd = APGDAttack(
            predict,
            norm=APGD_NORMS[self.norm],
            eps=float(eps) / scale,
            seed=seed,
            device=inputs.device,
            verbose=False,
            **self.params,
        )
        u0 = inputs if unit else (inputs - lo) / scale
        adv: torch.Tensor = apgd.perturb(u0.detach().clone(), labels.detach().clone())
        adv = adv.detach().clamp(0.0, 1.0)
        return adv if unit else (lo + adv * scale).clamp(lo, hi)
