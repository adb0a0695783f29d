"""``scripts/check_cuda.py``: the device check runs (here on the CPU) and refuses CUDA
where there is none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_cuda.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_cuda", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_cuda"] = module
    spec.loader.exec_module(module)
    return module


def test_contract_checks_pass_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    main = _script().main
    argv = ["--data", "foolbox_fashion_mnist", "--n", "4", "--devices", "cpu", "--steps", "2"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cpu")]
    assert len(lines) == 7
    assert all("in box True  within eps True  success == model True" in line for line in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="--devices cuda: CUDA is not available here"):
        _script().main(["--devices", "cuda"])
