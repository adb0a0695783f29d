"""``car_attacks.evaluate``: the evaluation of ``car-attacks run`` on in-memory tensors.

>>> report = car_attacks.evaluate(net, images, labels)          # default suite, inputs in [0, 1]
>>> report.clean_accuracy, report.worst_case[0].robust_accuracy
>>> report.save("runs/mine"); html = report.to_html()

The model and the samples are registered under a name derived from their contents
(``memory-<sha256 prefix>``) for the length of the call only, and the run goes through
:func:`~.runner.run_experiment` exactly as a config does, so the run directory, the
report files and the numbers are those the CLI writes. The caller's model is never
changed: the run uses a deep copy, frozen in eval mode.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import eagerpy as ep
import torch
from torch import Tensor, nn

from ..core.tensors import UNIT_BOUNDS
from ..core.validation import as_bounds
from ..data.datasets import DATASETS
from ..data.spec import Batch, DatasetSpec, DataSource
from ..models.registry import MODELS, register_model
from ..models.spec import ModelSpec
from .catalog import check_references
from .config import AttackConfig, PeerConfig, parse_config
from .config_yaml import load_config
from .report.build import load_report
from .report.document import Report
from .report.worst_case import WorstCase
from .runner import run_experiment
from .shipped_configs import resolve_config_path

__all__ = ["EvaluationReport", "default_suite", "evaluate"]

#: Prefix of the temporary model and data-set names of an :func:`evaluate` call.
MEMORY_PREFIX = "memory-"
#: Samples per batch when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 20
#: Per norm, the exponent of ``d / d_default`` by which default eps scale with input size.
_EPS_DIMENSION_POWER = {"linf": 0.0, "l2": 0.5, "l1": 1.0}


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    """What :func:`evaluate` returns: the typed :class:`~.report.document.Report` (every
    number), the run directory it was built from, and the report pages."""

    report: Report
    run_dir: Path
    _keep: Any = field(default=None, repr=False, compare=False)
    """The temporary directory of a call with ``out=None`` (removed with this object)."""

    @property
    def clean_accuracy(self) -> float | None:
        return self.report.clean.accuracy

    @property
    def worst_case(self) -> list[WorstCase]:
        """Per norm, the worst case over every attack and peer of that norm."""
        return self.report.worst_case

    def robust_accuracy(self, attack: str, method: str) -> dict[float, float | None]:
        """eps -> robust accuracy of ``method`` (a rescaling or a peer id) on ``attack``."""
        for a in self.report.attacks:
            if a.config.id == attack:
                for m in a.methods:
                    if method in (m.variant, m.key):
                        return dict(zip(a.config.eps, m.robust_accuracy, strict=True))
                raise KeyError(f"attack {attack!r} has no method {method!r}")
        raise KeyError(f"no attack {attack!r}")

    def to_json(self) -> dict[str, Any]:
        """report.json's document."""
        return self.report.to_json()

    def to_markdown(self) -> str:
        """report.md, as ``car-attacks run`` writes it."""
        return (self.run_dir / "report.md").read_text(encoding="utf-8")

    def to_html(self) -> str:
        """report.html (self-contained, figures embedded), as ``car-attacks run`` writes it."""
        return (self.run_dir / "report.html").read_text(encoding="utf-8")

    def save(self, directory: str | Path) -> Path:
        """Copy the run directory (results, config, report files, figures) to ``directory``,
        which must not exist yet; ``car-attacks report DIR`` rebuilds it from there."""
        target = Path(directory)
        if target.exists():
            raise ValueError(f"directory={str(target)!r} already exists")
        shutil.copytree(self.run_dir, target)
        return target


class _TensorSource(DataSource):
    """The samples of one :func:`evaluate` call, in [0, 1]."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def size(self, spec: DatasetSpec, split: str, root: str | None, download: bool) -> int:
        return len(self.labels)

    def load(
        self, spec: DatasetSpec, split: str, root: str | None, start: int, n: int, download: bool
    ) -> Batch:
        return self.images[start : start + n], self.labels[start : start + n]

    def available(self, spec: DatasetSpec, root: str | None) -> tuple[bool, str]:
        return True, ""


def _check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` as floats (``ValueError`` naming ``bounds`` otherwise)."""
    lo, hi = as_bounds(bounds, ep.astensor(torch.zeros(1)))
    if not isinstance(lo, float) or not isinstance(hi, float):
        raise ValueError(f"bounds must be two numbers (lo, hi), got bounds={bounds!r}")
    return lo, hi


def _check_tensors(inputs: Any, labels: Any, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """``inputs`` as float32 ``(N, C, H, W)`` in ``bounds``, ``labels`` as int64 ``(N,)``."""
    x, y = torch.as_tensor(inputs), torch.as_tensor(labels)
    if x.dim() != 4 or len(x) == 0 or not x.is_floating_point():
        raise ValueError(
            f"inputs must be a non-empty floating-point (N, C, H, W) tensor, got "
            f"{x.dtype} of shape {tuple(x.shape)}"
        )
    if y.shape != (len(x),) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor of shape ({len(x)},), got {y.dtype} of shape "
            f"{tuple(y.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("inputs contain NaN or infinite values")
    lo, hi = bounds
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo or x_max > hi:
        raise ValueError(f"inputs lie in [{x_min:g}, {x_max:g}], outside bounds=({lo:g}, {hi:g})")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return x.detach().float(), y.detach().long()


def _content_name(model: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float]) -> str:
    """``memory-<hash>`` of the weights, samples and bounds: the same call resumes its run."""
    h = hashlib.sha256(repr((bounds, tuple(x.shape), type(model).__qualname__)).encode())
    for t in (x, y, *model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return MEMORY_PREFIX + h.hexdigest()[:16]


def default_suite(
    input_shape: Sequence[int], bounds: Sequence[float] = UNIT_BOUNDS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(attacks, peers)`` of the default config (``car-attacks run``), eps scaled to the
    input: by ``hi - lo`` and, for L2 / L1, by ``sqrt(d / d0)`` / ``d / d0`` where ``d0`` is
    the input size of the default config's data set."""
    config, _ = load_config(resolve_config_path(None))
    lo, hi = _check_bounds(bounds)
    d0 = math.prod(DATASETS[config.data.name].input_shape)
    ratio = math.prod(input_shape) / d0
    raw = config.to_dict()
    for a in raw["attacks"]:
        scale = (hi - lo) * ratio ** _EPS_DIMENSION_POWER[a["norm"]]
        a["eps"] = [e * scale for e in a["eps"]]
    return list(raw["attacks"]), list(raw["peers"])


def _plain(items: Sequence[Mapping[str, Any] | AttackConfig | PeerConfig]) -> list[Any]:
    """Config entries as the dicts a YAML config holds (``class``, not ``cls``)."""
    out = []
    for item in items:
        if isinstance(item, AttackConfig | PeerConfig):
            d = asdict(item)
            d["class"] = d.pop("cls")
            out.append({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()})
        else:
            out.append(dict(item))
    return out


@contextmanager
def _registered(model_spec: ModelSpec, data_spec: DatasetSpec) -> Iterator[None]:
    """``model_spec`` and ``data_spec`` in the catalogs for the duration of the block."""
    if data_spec.name in DATASETS:
        raise RuntimeError(f"data set {data_spec.name!r} is already registered")
    register_model(model_spec)
    DATASETS[data_spec.name] = data_spec
    try:
        yield
    finally:
        MODELS.pop(model_spec.name, None)
        DATASETS.pop(data_spec.name, None)


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    attacks: Sequence[Mapping[str, Any] | AttackConfig] | None = None,
    peers: Sequence[Mapping[str, Any] | PeerConfig] | None = None,
    bounds: Sequence[float] = UNIT_BOUNDS,
    rescalings: Sequence[str] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | None = None,
    name: str = "evaluate",
    progress: bool = False,
) -> EvaluationReport:
    """Run the evaluation of ``car-attacks run`` on ``model`` (inputs in ``bounds`` ->
    logits) and the samples ``inputs`` ``(N, C, H, W)`` / ``labels`` ``(N,)``.

    ``attacks`` / ``peers``: entries as in a config's ``attacks`` / ``peers`` (dicts with
    ``id``, ``class``, ``norm``, ``eps``, ``params`` ... or the parsed dataclasses); default:
    the default config's suite with eps scaled to the input (:func:`default_suite`), its
    peers only when ``attacks`` is not given. ``out``: the run directory (rerunning the
    same call with the same ``out`` resumes); ``None`` writes to a temporary directory that
    lives as long as the returned report. Raises ``ValueError`` (bad tensors, bounds or
    entries; :class:`~.config.ConfigError`), :class:`~.storage.RunDirError` and
    :class:`~.inputs.ExperimentError`; nothing is written before the checks pass.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lo, hi = _check_bounds(bounds)
    x, y = _check_tensors(inputs, labels, (lo, hi))
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    run_device = device or str(x.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x[:1].to(next(model.parameters(), x).device))
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model cannot classify inputs of shape {tuple(x.shape)}: {text}") from exc
    finally:
        model.train(was_training)
    if logits.dim() != 2 or len(logits) != 1:
        raise ValueError(f"model must map (N, C, H, W) to (N, classes), gave {tuple(logits.shape)}")
    num_classes = int(logits.shape[1])
    if int(y.max()) >= num_classes:
        raise ValueError(
            f"labels must be < {num_classes} (the model's classes), got {int(y.max())}"
        )

    if attacks is None:
        suite, default_peers = default_suite(shape, (lo, hi))
        attack_entries = suite
        peer_entries = _plain(peers) if peers is not None else default_peers
    else:
        attack_entries, peer_entries = _plain(attacks), _plain(peers or [])
    token = _content_name(model, x, y, (lo, hi))
    raw: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "device": run_device,
        "model": {"name": token},
        "data": {"name": token, "n": len(x), "batch_size": batch_size or DEFAULT_BATCH_SIZE},
        "attacks": attack_entries,
        "peers": peer_entries,
    }
    if rescalings is not None:
        raw["rescalings"] = list(rescalings)
    config = parse_config(raw)

    def frozen_copy() -> nn.Module:
        return copy.deepcopy(model).cpu()

    model_spec = ModelSpec(
        name=token,
        description=f"in-memory {type(model).__name__} (car_attacks.evaluate)",
        num_classes=num_classes,
        input_shape=shape,
        offline=True,
        bounds=(lo, hi),
        architecture=frozen_copy,
        fetch_weights=lambda: {k: v.detach().cpu() for k, v in model.state_dict().items()},
    )
    unit = (x.cpu() - lo) / (hi - lo)
    data_spec = DatasetSpec(
        name=token,
        description=f"{len(x)} in-memory samples (car_attacks.evaluate)",
        num_classes=num_classes,
        input_shape=shape,
        size=len(x),
        offline=True,
        split_sizes={"test": len(x)},
        source=_TensorSource(unit, y.cpu()),
    )
    keep = None
    if out is None:
        keep = tempfile.TemporaryDirectory(prefix="car-attacks-evaluate-")
        out = Path(keep.name) / "run"
    with _registered(model_spec, data_spec):
        methods = check_references(config)
        summary = run_experiment(config, out, methods=methods, progress=progress)
        report = load_report(summary.run_dir)
    return EvaluationReport(report=report, run_dir=summary.run_dir, _keep=keep)
