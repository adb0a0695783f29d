"""Safe loading of weight files: tensors only, never pickled code."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "WRAPPER_KEYS",
    "load_checkpoint",
    "load_weights_into",
    "normalize_state_dict",
]

#: Keys under which training scripts commonly nest the actual state dict.
WRAPPER_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "weights",
)

#: Prefixes added by ``nn.DataParallel`` / ``DistributedDataParallel`` and ``torch.compile``.
_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """First non-empty line of an exception message, shortened."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(exc).__name__


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def normalize_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style containers and strip ``module.`` prefixes.

    Raises ``ValueError`` (one line) when ``obj`` holds no mapping of names to tensors.
    """
    for _ in range(3):  # allow e.g. {"model": {"state_dict": {...}}}
        if _is_state_dict(obj) or not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source} is not a state dict: it holds a {type(obj).__name__}, "
            "expected a mapping of parameter names to tensors"
        )
    if not _is_state_dict(obj):
        bad = next(
            (
                f"{k!r}: {type(v).__name__}"
                for k, v in obj.items()
                if not (isinstance(k, str) and isinstance(v, torch.Tensor))
            ),
            "it is empty",
        )
        raise ValueError(
            f"{source} is not a state dict of tensors (found {bad}); "
            f"known wrapper keys are {', '.join(WRAPPER_KEYS)}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def _load_failure(path: str, exc: Exception) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` raised ``exc``."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"refusing to load {path}: weights_only load failed: it holds pickled code or "
            f"objects (GLOBAL {found.group(1)}), which weights_only=True never runs; "
            "save model.state_dict() instead"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    if not head:
        return f"{path} is empty, not a torch checkpoint"
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # zip or pickle
        return f"{path} is not a torch checkpoint (expected a file written by torch.save)"
    # Skip torch's generic preamble ("Weights only load failed. In PyTorch 2.6, ...").
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next(
        (line for line in lines[1:] if not line.startswith(("Please file", "Check the"))),
        lines[0] if lines else type(exc).__name__,
    )
    first = _one_line(ValueError(detail.split(". ")[0]))
    return (
        f"refusing to load {path}: weights_only load failed ({first}): a damaged file, or "
        "not a plain tensor checkpoint; save model.state_dict() instead"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict with ``torch.load(..., weights_only=True)``.

    ``FileNotFoundError`` for a missing file; ``ValueError`` (one line) for a file that
    holds pickled code or objects, is not a torch file, or is not a state dict.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # a plain pickle: the error below says more
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, zip errors, EOFError, ...
        raise ValueError(_load_failure(path, exc)) from None
    return normalize_state_dict(obj, source=path)


def _fix_legacy_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old torchvision DenseNet keys (``norm.1.weight`` -> ``norm1.weight``)."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
        r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
    )
    out = {}
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_weights_into(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> nn.Module:
    """Strictly load ``state`` into ``module``; mismatches become a one-line ``ValueError``."""
    state = dict(state)
    expected = module.state_dict()
    if any(".norm.1." in k or ".conv.1." in k for k in state) and not any(
        ".norm.1." in k or ".conv.1." in k for k in expected
    ):
        state = _fix_legacy_densenet_keys(state)
    if not expected.keys() & state.keys():
        # e.g. the state dict of a Preprocessed wrapper (keys "model.<name>").
        for prefix in ("model.",):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if len(stripped) == len(state) and expected.keys() & stripped.keys():
                state = stripped
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise ValueError(f"{source} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return module
