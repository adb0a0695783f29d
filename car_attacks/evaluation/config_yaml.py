"""Config files: strict YAML (no Python tags, no duplicate keys), ``--set`` overrides, and
:func:`load_config` (read, override, parse; see :mod:`car_attacks.evaluation.config`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, ExperimentConfig, default_id, parse_config

__all__ = ["apply_overrides", "load_config", "select_attacks"]


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only, no Python tags) that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: construct_mapping below reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """``raw`` with ``KEY=VALUE`` overrides applied (the command line's ``--set``).

    ``KEY`` is a dotted path (``model.name``, ``data.n``, ``attacks.0.params.steps``:
    list items by index); ``VALUE`` is parsed as YAML (``0.5``, ``[car, naive]``,
    ``null``). A path must lead through existing mappings and lists; its last key may
    be new (the schema then checks it). Raises :class:`ConfigError` naming the override.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value_text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError("--set", f"expected KEY=VALUE with a dotted KEY, got {item!r}")
        try:
            value = yaml.load(value_text, Loader=_StrictLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}", f"invalid YAML value {value_text!r}: {exc}") from None
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    raise ConfigError(
                        f"--set {key}", f"{where}: no item {part!r} (the list has {len(node)})"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                elif part not in node:
                    raise ConfigError(f"--set {key}", f"{where}: no such key in the config")
                else:
                    node = node[part]
            else:
                raise ConfigError(
                    f"--set {key}", f"{'.'.join(parts[:depth])} is a value, not a mapping or list"
                )
    return out


def load_config(
    path: str | Path, *, overrides: Sequence[str] = (), only: Sequence[str] = ()
) -> tuple[ExperimentConfig, str]:
    """Read and parse a YAML config file (structure and types; the names it uses are
    checked by :func:`car_attacks.evaluation.catalog.check_references`).

    ``overrides`` are ``KEY=VALUE`` strings (:func:`apply_overrides`); ``only``, when not
    empty, keeps just those attack ids (:func:`select_attacks`). Returns the config and the
    file's text (with the overrides and the selection appended as comments). Raises
    :class:`ConfigError`.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {p}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"{p}: not a UTF-8 text file (byte {exc.start}); a config is a YAML text file"
        ) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python tags
    except yaml.YAMLError as exc:
        marked = exc if isinstance(exc, yaml.MarkedYAMLError) else None
        mark = marked.problem_mark if marked is not None else None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = (marked.problem if marked is not None else None) or str(exc).splitlines()[0]
        raise ConfigError("", f"{p}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError("", f"{p}: invalid YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError("", f"{p}: the config file is empty")
    if overrides:
        raw = apply_overrides(raw, overrides)
        text = text.rstrip("\n") + "\n" + "".join(f"# --set {o}\n" for o in overrides)
    config = parse_config(raw, default_name=default_id(p.stem))
    if only:
        config = select_attacks(config, only)
        text = text.rstrip("\n") + "\n" + "".join(f"# --only {i}\n" for i in only)
    return config, text


def select_attacks(config: ExperimentConfig, ids: Sequence[str]) -> ExperimentConfig:
    """``config`` with only the attacks named in ``ids`` and the peers compared with them
    (the command line's ``--only``). Raises :class:`ConfigError` for an unknown id."""
    known = [a.id for a in config.attacks]
    for i in ids:
        if i not in known:
            raise ConfigError("--only", f"no attack with id {i!r} (attack ids: {', '.join(known)})")
    keep = set(ids)
    return replace(
        config,
        attacks=tuple(a for a in config.attacks if a.id in keep),
        peers=tuple(p for p in config.peers if p.compare_with in keep),
    )
