"""What a run ran on: package versions, platform, device."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "environment"]

PACKAGES: tuple[str, ...] = (
    "car-attacks",
    "torch",
    "torchvision",
    "foolbox",
    "eagerpy",
    "numpy",
    "pyautoattack",
    "matplotlib",
    "pyyaml",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions and hardware facts worth printing next to timings."""
    import torch

    dev: dict[str, Any] = {"requested": device, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        dev["name"] = torch.cuda.get_device_name(idx)
        dev["cuda"] = torch.version.cuda
    else:
        dev["name"] = platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": dev,
    }
