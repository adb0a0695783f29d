"""The experiment configs shipped in the package (``car_attacks/configs/*.yaml``)."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError

__all__ = ["DEFAULT_CONFIG", "config_dir", "resolve_config_path", "shipped_configs"]

DEFAULT_CONFIG = "cifar10_resnet18"
"""The config ``car-attacks run`` uses when none is given."""


def config_dir() -> Path:
    """The folder of the shipped configs (also linked as ``configs/`` in a checkout)."""
    return Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Shipped config name -> file."""
    d = config_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve_config_path(spec: str | None) -> Path:
    """A config file from a path or a shipped config's name (``None``: the default)."""
    if spec is None:
        spec = DEFAULT_CONFIG
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if str(p.parent) in (".", "configs", str(config_dir())) and name in shipped:
        return shipped[name]
    known = ", ".join(shipped) or "(none)"
    raise ConfigError("", f"config file not found: {spec} (shipped configs: {known})")
