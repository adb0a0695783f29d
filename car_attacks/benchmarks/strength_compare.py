"""Per-sample comparisons, timing and the resumable JSON of the attack-strength benchmark.

``scripts/bench_strength.py`` compares our attacks with their peers on the same images.
A sample counts as fooled by an attack when the model classified it correctly and the
attack's point is misclassified, so ``robust = correct - fooled`` and, for two attacks A
and B on the same ``n`` images,

    robust(A) - robust(B) = (only_B - only_A) / n,

where ``only_A`` counts the samples A fools and B does not. Minimization attacks are
compared on the norm they found (``inf`` where they fail).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "REL_TOL",
    "Timed",
    "ResultsFile",
    "fooled",
    "found_norms",
    "median",
    "pair_counts",
    "norm_counts",
    "row_key",
    "timed",
]

REL_TOL = 1e-3
"""Two found norms within this relative difference count as a tie."""


@dataclass(frozen=True)
class Timed:
    """An attack's output with its wall and CPU (``time.process_time``) seconds."""

    out: Tensor
    wall_s: float
    cpu_s: float


def timed(fn: Callable[[], Tensor]) -> Timed:
    """Run ``fn`` and measure it on both clocks."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return Timed(out.detach(), time.perf_counter() - wall, time.process_time() - cpu)


def fooled(model: torch.nn.Module, x: Tensor, adv: Tensor, y: Tensor) -> Tensor:
    """Per sample: ``x`` correctly classified and ``adv`` misclassified (bool)."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        wrong = model(adv).argmax(1) != y
    return correct & wrong


def found_norms(model: torch.nn.Module, x: Tensor, adv: Tensor, y: Tensor, p: float) -> Tensor:
    """Per sample: ``||adv - x||_p`` where ``adv`` fools the model, else ``inf``; ``nan``
    for the samples the model gets wrong already (they are left out of the medians)."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        wrong = model(adv).argmax(1) != y
    norms = (adv - x).flatten(1).norm(p=p, dim=1)
    norms = torch.where(wrong, norms, torch.full_like(norms, math.inf))
    return torch.where(correct, norms, torch.full_like(norms, math.nan))


def median(norms: Tensor) -> float:
    """Median over the correctly classified samples (``inf`` when half or more fail)."""
    kept = norms[~norms.isnan()]
    return float(kept.median()) if len(kept) else math.nan


def pair_counts(ours: Tensor, theirs: Tensor) -> dict[str, int]:
    """Samples only ours fools and samples only theirs fools (bool masks)."""
    return {
        "only_ours": int((ours & ~theirs).sum()),
        "only_theirs": int((theirs & ~ours).sum()),
    }


def norm_counts(ours: Tensor, theirs: Tensor) -> dict[str, int]:
    """Samples where our found norm is smaller (beyond :data:`REL_TOL`) and where theirs is.

    ``inf`` (failure) is larger than any norm; two failures tie; ``nan`` is left out.
    """
    keep = ~(ours.isnan() | theirs.isnan())
    a, b = ours[keep], theirs[keep]
    both_inf = a.isinf() & b.isinf()
    finite_b = torch.where(b.isinf(), torch.zeros_like(b), b)
    finite_a = torch.where(a.isinf(), torch.zeros_like(a), a)
    smaller = ~both_inf & (b.isinf() | (~a.isinf() & (a < finite_b * (1 - REL_TOL))))
    larger = ~both_inf & (a.isinf() | (~b.isinf() & (b < finite_a * (1 - REL_TOL))))
    return {"ours_smaller": int(smaller.sum()), "theirs_smaller": int(larger.sum())}


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row for ``--resume``."""
    return (row["part"], row["model"], row["n"], row["norm"], row.get("eps"), row["steps"])


class ResultsFile:
    """The benchmark's JSON, rewritten after every row (``settings``, ``note``, ``rows``)."""

    def __init__(self, path: Path, settings: dict[str, Any], note: str, resume: bool) -> None:
        self.path = path
        self.settings = settings
        self.note = note
        self.rows: list[dict[str, Any]] = []
        if resume and path.exists():
            self.rows = list(json.loads(path.read_text()).get("rows", []))

    def done(self, key: tuple[Any, ...]) -> bool:
        return any(row_key(r) == key for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"settings": self.settings, "note": self.note, "rows": _finite(self.rows)}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"nan"``: strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
