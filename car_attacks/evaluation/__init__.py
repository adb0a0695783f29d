"""Evaluate attacks on a model: run an experiment config, store per-sample results, report.

>>> from car_attacks.evaluation import load_config, run_experiment
>>> config, text = load_config("configs/cifar10_resnet18.yaml")
>>> summary = run_experiment(config, "runs/example", source_text=text)

The command line front end is ``car-attacks run`` (:mod:`car_attacks.cli`).
"""

from .api import EvaluationReport, evaluate
from .catalog import check_references
from .config import (
    NORMS,
    RESCALING_CHOICES,
    AttackConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PeerConfig,
    config_hash,
    parse_config,
)
from .config_yaml import load_config
from .report import build_report, compute_report, expected_figures
from .runner import (
    ExperimentError,
    QueryCounter,
    RunSummary,
    plan_methods,
    plan_units,
    run_experiment,
)
from .shipped_configs import DEFAULT_CONFIG, config_dir, resolve_config_path, shipped_configs
from .storage import RunDirError, RunStore

__all__ = [
    "DEFAULT_CONFIG",
    "NORMS",
    "RESCALING_CHOICES",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "EvaluationReport",
    "ExperimentError",
    "ModelConfig",
    "PeerConfig",
    "QueryCounter",
    "RunDirError",
    "RunStore",
    "RunSummary",
    "build_report",
    "check_references",
    "compute_report",
    "config_dir",
    "config_hash",
    "evaluate",
    "expected_figures",
    "load_config",
    "parse_config",
    "plan_methods",
    "plan_units",
    "resolve_config_path",
    "run_experiment",
    "shipped_configs",
]
