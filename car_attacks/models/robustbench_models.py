"""``robustbench:<dataset>/<threat_model>/<name>``: RobustBench model-zoo classifiers, loaded
from RobustBench's local model folder with RobustBench's own ``robustbench.utils.load_model``.

RobustBench keeps checkpoints as ``<model_dir>/<dataset>/<threat_model>/<name>.pt``
(Croce et al. 2021, "RobustBench: a standardized adversarial robustness benchmark").
``model_dir`` is ``$CAR_ATTACKS_ROBUSTBENCH_DIR`` (default ``./models``, RobustBench's own
default), or the folder three levels above a ``weights`` file in that layout. Nothing is
ever downloaded: a missing checkpoint is a ``FileNotFoundError`` naming the file. The
models take inputs in [0, 1]; their normalisation is part of RobustBench's architectures.
Needs the optional extra ``pip install "car-attacks[robustbench]"``.
"""

from __future__ import annotations

import difflib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from .spec import ModelSpec

__all__ = [
    "EXTRA_HINT",
    "MissingExtraError",
    "ROBUSTBENCH_DIR_ENV",
    "ROBUSTBENCH_PREFIX",
    "RobustBenchName",
    "load_robustbench_model",
    "parse_robustbench_name",
    "robustbench_spec",
]

#: ``load_model("robustbench:cifar10/Linf/Carmon2019Unlabeled")`` loads a RobustBench model.
ROBUSTBENCH_PREFIX = "robustbench:"
#: Environment variable naming RobustBench's model folder (``model_dir``).
ROBUSTBENCH_DIR_ENV = "CAR_ATTACKS_ROBUSTBENCH_DIR"
#: RobustBench's default ``model_dir``.
_DEFAULT_DIR = "./models"
#: How to install what RobustBench models need.
EXTRA_HINT = 'install the optional extra: pip install "car-attacks[robustbench]"'


class MissingExtraError(ImportError, ValueError):
    """An optional package a model source needs is not installed (a ``ValueError`` too, so
    that configs naming such a model fail like any other bad model name)."""


#: RobustBench data set -> (input shape, named data sets of car_attacks.data).
_TASKS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "cifar10": ((3, 32, 32), ("cifar10", "foolbox_cifar10")),
    "cifar100": ((3, 32, 32), ("foolbox_cifar100",)),
    "imagenet": ((3, 224, 224), ("imagenet_folder", "foolbox_imagenet")),
}


def robustbench_utils() -> ModuleType:
    """``robustbench.utils``; ``ImportError`` naming the extra when it is not installed.

    RobustBench imports AutoAttack as ``autoattack`` (its git install); the PyPI release
    of the same code is ``pyautoattack``, so it is made importable under that name."""
    try:
        import autoattack  # noqa: F401
    except ImportError:
        try:
            import pyautoattack
            import pyautoattack.state
        except ImportError as exc:
            raise MissingExtraError(f"RobustBench models need AutoAttack; {EXTRA_HINT}") from exc
        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)
    try:
        from robustbench import utils
    except ImportError as exc:
        raise MissingExtraError(
            f"RobustBench models need the robustbench package; {EXTRA_HINT}"
        ) from exc
    return utils


@dataclass(frozen=True, kw_only=True)
class RobustBenchName:
    """The parts of ``robustbench:<dataset>/<threat_model>/<name>``, checked against the zoo."""

    full: str
    dataset: str
    threat_model: str
    model: str

    def entry(self) -> dict[str, Any]:
        """The model zoo's entry (``model`` builder, ``gdrive_id``)."""
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        return dict(
            model_dicts[BenchmarkDataset(self.dataset)][ThreatModel(self.threat_model)][self.model]
        )

    def checkpoint(self, model_dir: str | os.PathLike[str]) -> Path:
        """Where RobustBench keeps the checkpoint: ``<model_dir>/<dataset>/<tm>/<name>.pt``."""
        return Path(model_dir) / self.dataset / self.threat_model / f"{self.model}.pt"

    def checkpoints(self, model_dir: str | os.PathLike[str]) -> list[Path]:
        """Every file RobustBench reads (ensembles: ``<name>.pt_m<i>.pt``, one per member)."""
        path = self.checkpoint(model_dir)
        ids = self.entry()["gdrive_id"]
        if isinstance(ids, list):
            return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
        return [path]


def _choose(kind: str, value: str, known: list[str], name: str) -> None:
    if value in known:
        return
    close = difflib.get_close_matches(value, known, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    raise ValueError(f"unknown RobustBench {kind} {value!r} in {name!r}{hint}")


def parse_robustbench_name(name: str) -> RobustBenchName:
    """Split and check ``robustbench:<dataset>/<threat_model>/<name>``; ``ValueError`` for an
    unknown data set, threat model or model (with the closest known names)."""
    robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    parts = name[len(ROBUSTBENCH_PREFIX) :].split("/")
    if not name.startswith(ROBUSTBENCH_PREFIX) or len(parts) != 3 or not all(parts):
        raise ValueError(
            f"model name {name!r} is not {ROBUSTBENCH_PREFIX}<dataset>/<threat_model>/<name> "
            f"(e.g. {ROBUSTBENCH_PREFIX}cifar10/Linf/Carmon2019Unlabeled)"
        )
    dataset, threat_model, model = parts
    _choose("data set", dataset, [d.value for d in BenchmarkDataset], name)
    zoo = model_dicts[BenchmarkDataset(dataset)]
    _choose("threat model", threat_model, [t.value for t in zoo], name)
    _choose("model", model, list(zoo[ThreatModel(threat_model)]), name)
    return RobustBenchName(full=name, dataset=dataset, threat_model=threat_model, model=model)


def default_model_dir() -> str:
    """RobustBench's model folder: ``$CAR_ATTACKS_ROBUSTBENCH_DIR`` or ``./models``."""
    return os.environ.get(ROBUSTBENCH_DIR_ENV) or _DEFAULT_DIR


def _model_dir_of(parsed: RobustBenchName, weights: str | os.PathLike[str]) -> Path:
    """The ``model_dir`` of a checkpoint file in RobustBench's layout."""
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"RobustBench checkpoint not found: {path}")
    model_dir = path.parents[2] if len(path.parents) > 2 else path.parent
    if parsed.checkpoint(model_dir) != path:
        raise ValueError(
            f"weights={os.fspath(weights)!r}: a RobustBench checkpoint must lie at "
            f"<model_dir>/{parsed.dataset}/{parsed.threat_model}/{parsed.model}.pt"
        )
    return model_dir


def _missing_message(parsed: RobustBenchName, missing: list[Path], model_dir: str) -> str:
    return (
        f"RobustBench checkpoint {missing[0]} not found (model {parsed.full!r}, model_dir "
        f"{model_dir!r}; set ${ROBUSTBENCH_DIR_ENV} or model.weights to another place). "
        f'Get it while online with: python -c "from robustbench.utils import load_model; '
        f"load_model('{parsed.model}', model_dir='{model_dir}', dataset='{parsed.dataset}', "
        f"threat_model='{parsed.threat_model}')\""
    )


def _unsupported(parsed: RobustBenchName) -> str | None:
    """Why RobustBench would load this model from somewhere other than ``model_dir``."""
    import timm

    timm_name = f"{parsed.model.lower().replace('-', '_')}_{parsed.dataset}_" + (
        parsed.threat_model.lower()
    )
    if timm.is_model(timm_name):
        return f"RobustBench serves {parsed.full!r} through timm's hub ({timm_name}), not model_dir"
    entry = parsed.entry()
    if entry["gdrive_id"] is None or (parsed.dataset == "imagenet" and "Standard" in parsed.model):
        return f"RobustBench builds {parsed.full!r} with downloaded torchvision weights"
    return None


def robustbench_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``robustbench:<dataset>/<threat_model>/<name>``: inputs in
    [0, 1] (normalisation inside RobustBench's architecture); offline when the checkpoint
    is in ``model_dir``. ``ValueError`` for an unknown name."""
    parsed = parse_robustbench_name(name)
    shape, datasets = _TASKS[parsed.dataset]
    utils = robustbench_utils()
    from robustbench.model_zoo.enums import BenchmarkDataset

    model_dir = default_model_dir()
    files = parsed.checkpoints(model_dir)
    reason = _unsupported(parsed)

    def locate() -> str | None:
        return None if reason is not None else str(files[0])

    return ModelSpec(
        name=name,
        description=f"RobustBench {parsed.dataset} {parsed.threat_model} model {parsed.model} "
        f"from {parsed.checkpoint(model_dir)}; inputs in [0, 1] at {shape[1]}x{shape[2]}",
        num_classes=int(utils.DATASET_CLASSES[BenchmarkDataset(parsed.dataset)]),
        input_shape=shape,
        offline=reason is None and all(f.is_file() for f in files),
        datasets=datasets,
        architecture=parsed.entry()["model"],
        locate_weights=locate,
        weights_hint=reason
        or f"RobustBench's loader fetches it when online (model_dir {model_dir!r})",
    )


def load_robustbench_model(
    name: str, *, weights: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> nn.Module:
    """Load ``robustbench:<dataset>/<threat_model>/<name>`` with ``robustbench.utils.load_model``
    from ``model_dir`` (or the layout around ``weights``), in eval mode, frozen.

    Raises ``ValueError`` (unknown name, checkpoint of another architecture),
    ``FileNotFoundError`` (checkpoint missing; nothing is downloaded or created)."""
    parsed = parse_robustbench_name(name)
    reason = _unsupported(parsed)
    if reason is not None:
        raise ValueError(f"{reason}; car-attacks loads RobustBench models from model_dir only")
    model_dir = str(_model_dir_of(parsed, weights)) if weights is not None else default_model_dir()
    files = parsed.checkpoints(model_dir)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(_missing_message(parsed, missing, model_dir))
    utils = robustbench_utils()
    try:
        net: nn.Module = utils.load_model(
            parsed.model,
            model_dir=model_dir,
            dataset=parsed.dataset,
            threat_model=parsed.threat_model,
        )
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"RobustBench checkpoint {files[0]} does not fit the architecture of "
            f"{parsed.full!r}: {text}"
        ) from exc
    net.requires_grad_(False)
    return net.to(device).eval()
