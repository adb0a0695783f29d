"""``robustbench:<dataset>/<threat_model>/<name>`` models: checkpoints saved in RobustBench's
layout and loaded through the real ``robustbench.utils.load_model``; clear errors that
change nothing on disk; the base install never imports robustbench or timm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from car_attacks.evaluation import check_references, parse_config, run_experiment
from car_attacks.evaluation.report.build import load_report
from car_attacks.models import ROBUSTBENCH_DIR_ENV, load_model, model_spec
from car_attacks.models.robustbench_models import robustbench_utils

NAME = "robustbench:cifar10/Linf/Sehwag2021Proxy_R18"


def _architecture(dataset: str, threat_model: str, model: str) -> torch.nn.Module:
    robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    net: torch.nn.Module = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][model][
        "model"
    ]()
    return net.eval()


def _save_checkpoint(model_dir: Path, name: str, seed: int = 0) -> torch.nn.Module:
    """Random weights of Sehwag2021Proxy_R18 (a ResNet-18) saved as RobustBench stores them:
    ``{"state_dict": ...}`` with DataParallel's ``module.`` prefix, at ``<dir>/<ds>/<tm>/``."""
    torch.manual_seed(seed)
    net = _architecture("cifar10", "Linf", "Sehwag2021Proxy_R18")
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    folder = model_dir / "cifar10" / "Linf"
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, folder / f"{name}.pt")
    return net


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_loads_through_robustbench_and_matches_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _save_checkpoint(tmp_path, "Sehwag2021Proxy_R18")
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path))
    net = load_model(NAME)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    from robustbench.utils import load_model as rb_load_model

    direct = rb_load_model("Sehwag2021Proxy_R18", model_dir=str(tmp_path), dataset="cifar10")
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(net(x), expected)
        torch.testing.assert_close(direct(x), expected)
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training
    # the same file named by a weights path in RobustBench's layout, model_dir elsewhere
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path / "nowhere"))
    path = tmp_path / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    with torch.no_grad():
        torch.testing.assert_close(load_model(NAME, weights=str(path))(x), expected)
    assert not (tmp_path / "nowhere").exists()


def test_spec_describes_task_and_offline_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path))
    spec = model_spec(NAME)
    assert (spec.num_classes, spec.input_shape, spec.bounds) == (10, (3, 32, 32), (0.0, 1.0))
    assert "foolbox_cifar10" in spec.datasets
    ok, reason = spec.available()
    assert not ok and "Sehwag2021Proxy_R18.pt" in reason
    _save_checkpoint(tmp_path, "Sehwag2021Proxy_R18")
    assert model_spec(NAME).available() == (True, "")
    inet = model_spec("robustbench:imagenet/Linf/Salman2020Do_R18")
    assert (inet.num_classes, inet.input_shape) == (1000, (3, 224, 224))


def test_missing_checkpoint_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_model("robustbench:cifar10/Linf/Carmon2019Unlabeled")
    text = str(err.value)
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in text
    assert "load_model('Carmon2019Unlabeled'" in text  # how to get it
    assert _tree(tmp_path) == ["models"]  # RobustBench would have created folders


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("robustbench:cifar10/Linf/Carmon2019Unlabelled", "did you mean Carmon2019Unlabeled"),
        ("robustbench:cifar10/L3/Carmon2019Unlabeled", "unknown RobustBench threat model 'L3'"),
        ("robustbench:svhn/Linf/Carmon2019Unlabeled", "unknown RobustBench data set 'svhn'"),
        ("robustbench:cifar10/Carmon2019Unlabeled", "<dataset>/<threat_model>/<name>"),
    ],
)
def test_unknown_names(
    name: str, fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path))
    for call in (lambda: model_spec(name), lambda: load_model(name)):
        with pytest.raises(ValueError, match="RobustBench|robustbench") as err:
            call()
        assert fragment in str(err.value)
    assert _tree(tmp_path) == []


def test_checkpoint_of_another_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save_checkpoint(tmp_path, "Carmon2019Unlabeled")  # ResNet-18 weights, WRN-28-10 name
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path))
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="does not fit the architecture") as err:
        load_model("robustbench:cifar10/Linf/Carmon2019Unlabeled")
    assert "Carmon2019Unlabeled.pt" in str(err.value)
    assert _tree(tmp_path) == before


def test_evaluation_runs_a_robustbench_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    reference = _save_checkpoint(models, "Sehwag2021Proxy_R18")
    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(models))
    config = parse_config(
        {
            "name": "rb",
            "model": {"name": NAME},
            "data": {"name": "foolbox_cifar10", "n": 6, "batch_size": 6},
            "rescalings": ["car"],
            "attacks": [
                {
                    "id": "noise_l2",
                    "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
                    "norm": "l2",
                    "eps": [1.0],
                }
            ],
        }
    )
    methods = check_references(config)
    summary = run_experiment(config, tmp_path / "run", methods=methods, progress=False)
    assert summary.units_failed == 0
    report = load_report(summary.run_dir)
    from car_attacks.data import load_samples

    x, y = load_samples("foolbox_cifar10", n=6)
    with torch.no_grad():
        correct = (reference(torch.as_tensor(x)).argmax(1) == torch.as_tensor(y)).sum()
    assert report.clean.correct == int(correct)
    assert report.clean.evaluated == 6


def test_base_install_never_imports_robustbench_or_timm() -> None:
    code = (
        "import sys, car_attacks, car_attacks.cli, car_attacks.evaluation, car_attacks.models\n"
        "from car_attacks.cli import main\n"
        "rc = main(['validate', 'cifar10_resnet18'])\n"
        "assert rc == 0, rc\n"
        "print(sorted(m for m in ('robustbench', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_listing_shows_checkpoints_in_model_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from car_attacks.evaluation.listing import model_entries

    monkeypatch.setenv(ROBUSTBENCH_DIR_ENV, str(tmp_path))
    entries = {e.name: e for e in model_entries()}
    generic = entries["robustbench:<dataset>/<threat_model>/<name>"]
    assert not generic.available and str(tmp_path) in generic.reason
    assert "timm:<name>" in entries
    _save_checkpoint(tmp_path, "Sehwag2021Proxy_R18")
    entries = {e.name: e for e in model_entries()}
    assert entries[NAME].available and entries[NAME].bounds == [0.0, 1.0]
    assert entries["robustbench:<dataset>/<threat_model>/<name>"].available


def test_missing_extra_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from car_attacks.evaluation import ConfigError
    from car_attacks.evaluation.catalog import model_spec as config_model_spec

    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"model.name.*car-attacks\[robustbench\]"):
        config_model_spec(NAME)
    with pytest.raises(ImportError, match="pip install"):
        load_model(NAME)
