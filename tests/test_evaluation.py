"""car_attacks.evaluation: config validation, runs, resuming, reports.

A tiny model (``tiny_test``, 3x8x8 inputs, 10 classes) and data set (``tiny_data``,
12 images) are registered here, so the end-to-end tests take seconds; the helpers are
imported by test_cli.py and test_report_browser.py.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from car_attacks.evaluation import (
    ConfigError,
    RunDirError,
    build_report,
    check_references,
    config_hash,
    load_config,
    parse_config,
    run_experiment,
    shipped_configs,
)
from car_attacks.evaluation.records import TIMING_KEYS, AttackRecord, UnitRecord
from car_attacks.evaluation.runner import _Executor, warm_up
from car_attacks.evaluation.storage import RunStore

TINY_SHAPE = (3, 8, 8)
TINY_N = 12


class TinyNet(nn.Module):
    """Linear classifier on 2x2-average-pooled pixels; ``calls`` counts forward passes."""

    calls = 0

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        TinyNet.calls += 1
        z = nn.functional.avg_pool2d(x / self.scale, 2).flatten(1)
        return self.fc(z)


def _tiny_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(10, 48, generator=g) * 2.0,
        "fc.bias": torch.zeros(10),
    }


def _tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(TINY_N, *TINY_SHAPE, generator=g)
    x[:3] = (x[:3] > 0.5).float()  # saturated images: clipping matters
    net = TinyNet()
    net.load_state_dict(_tiny_state())
    with torch.no_grad():
        pred = net(x).argmax(1)
    labels = pred.clone()
    labels[1::4] = (pred[1::4] + 1) % 10  # a quarter misclassified
    return x, labels


class _TinySource:
    splits = ("test",)

    def size(self, spec: Any, split: str, root: str | None, download: bool) -> int:
        return TINY_N

    def load(
        self, spec: Any, split: str, root: str | None, start: int, n: int, download: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _tiny_images()
        if start + n > TINY_N:
            raise ValueError(f"tiny_data has {TINY_N} samples")
        return x[start : start + n], y[start : start + n]

    def available(self, spec: Any, root: str | None) -> tuple[bool, str]:
        return True, ""


def register_tiny() -> None:
    """Register ``tiny_test`` / ``tiny255_test`` models and the ``tiny_data`` data set."""
    from car_attacks import data, models

    for name, scale in (("tiny_test", 1.0), ("tiny255_test", 255.0)):
        models.register_model(
            models.ModelSpec(
                name=name,
                description=f"test model, bounds (0, {scale:g})",
                num_classes=10,
                input_shape=TINY_SHAPE,
                bounds=(0.0, scale),
                offline=True,
                architecture=lambda scale=scale: TinyNet(scale),
                fetch_weights=_tiny_state,
            ),
            replace=True,
        )
    data.DATASETS["tiny_data"] = data.DatasetSpec(
        name="tiny_data",
        description="test data",
        num_classes=10,
        input_shape=TINY_SHAPE,
        bounds=(0.0, 1.0),
        size=TINY_N,
        offline=True,
        splits=("test",),
        split_sizes={"test": TINY_N},
        source=_TinySource(),  # type: ignore[arg-type]
    )


TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "tiny_test"},
    "data": {"name": "tiny_data", "n": 6, "batch_size": 4},
    "attacks": [
        {
            "id": "pgd_linf",
            "class": "LinfClippingAwarePGD",
            "norm": "linf",
            "eps": ["8/255", 0.2],
            "params": {"steps": 2, "rel_stepsize": 0.5},
        },
        {
            "id": "noise_l2",
            "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
            "norm": "l2",
            "eps": [1.0, 3.0],
        },
        {
            "id": "boundary",
            "class": "ClippingAwareBoundaryAttack",
            "norm": "l2",
            "eps": [2.0, 6.0],
            "params": {"steps": 3},
            "rescalings": ["car", "naive"],
        },
    ],
    "peers": [
        {
            "id": "fb_pgd",
            "library": "foolbox",
            "class": "LinfProjectedGradientDescentAttack",
            "compare_with": "pgd_linf",
            "params": {"steps": 2, "rel_stepsize": 0.5},
        },
        {
            "id": "apgd",
            "library": "autoattack",
            "class": "APGDAttack",
            "compare_with": "pgd_linf",
            "params": {"n_iter": 2},
        },
        {
            "id": "fb_boundary",
            "library": "foolbox",
            "class": "BoundaryAttack",
            "compare_with": "boundary",
            "params": {"steps": 3},
        },
    ],
}
# units: 2 clean + 2 batches x (pgd: 3 variants + 2 peers) x 2 eps + noise 3 x 2 eps
#        + boundary (2 variants + 1 peer) x 1 = 2 + 20 + 12 + 6
TINY_UNITS = 40


def tiny_raw(**changes: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(TINY_CONFIG))
    raw.update(changes)
    return raw


def write_tiny_config(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump(tiny_raw(**changes), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny() -> Iterator[None]:
    register_tiny()
    yield


@pytest.fixture(scope="module")
def tiny_run(tiny: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the tiny config (shared, do not modify)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg, text = load_config(write_tiny_config(out.parent / "tiny.yaml"))
    summary = run_experiment(cfg, out, source_text=text, progress=False)
    assert summary.units_failed == 0, summary.failures
    return out


def _results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stored records keyed by unit, without wall times."""
    out = {}
    for stored in RunStore(run_dir).records():
        rec = {k: v for k, v in stored.to_json().items() if k not in TIMING_KEYS}
        out[f"{rec['method']}|{rec['batch']}|{rec['eps']}"] = rec
    return out


# --------------------------------------------------------------------------- configs


def _err(raw: dict[str, Any], check: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        cfg = parse_config(raw)
        if check:
            check_references(cfg)
    return str(info.value)


def test_config_parses_and_fractions(tiny: None) -> None:
    cfg = parse_config(tiny_raw())
    assert cfg.attacks[0].eps == (8 / 255, 0.2)
    assert cfg.attacks[2].rescalings == ("car", "naive")
    assert cfg.attacks[0].rescalings == ("car", "bisection", "naive")
    assert cfg.peers[1].compare_with == "pgd_linf"
    assert cfg.data.batch_size == 4 and cfg.data.split == "test"
    # the hash changes with any setting and is stable otherwise
    assert config_hash(cfg) == config_hash(parse_config(tiny_raw()))
    assert config_hash(cfg) != config_hash(parse_config(tiny_raw(seed=4)))


def test_unknown_keys_are_named() -> None:
    raw = tiny_raw()
    raw["attacks"][2]["parmas"] = raw["attacks"][2].pop("params")
    msg = _err(raw, check=False)
    assert msg.startswith("attacks[2].parmas: unknown key"), msg
    assert "params" in msg
    assert _err(tiny_raw(modle={"name": "x"}), check=False).startswith("modle: unknown key")
    raw = tiny_raw()
    raw["data"]["batchsize"] = 3
    assert _err(raw, check=False).startswith("data.batchsize: unknown key")
    raw = tiny_raw()
    raw["peers"][0]["compare"] = "pgd_linf"
    assert _err(raw, check=False).startswith("peers[0].compare: unknown key")


def test_wrong_types_are_named() -> None:
    raw = tiny_raw()
    raw["data"]["n"] = "twenty"
    assert _err(raw, check=False) == "data.n: expected int, got str 'twenty'"
    raw = tiny_raw(seed=1.5)
    assert _err(raw, check=False).startswith("seed: expected int, got float")
    raw = tiny_raw()
    raw["attacks"][1]["eps"] = 2.0
    assert _err(raw, check=False).startswith("attacks[1].eps: expected a non-empty list")
    raw = tiny_raw()
    raw["attacks"][0]["eps"] = [0.1, "x/255"]
    assert _err(raw, check=False).startswith("attacks[0].eps[1]:")
    raw = tiny_raw()
    raw["data"]["n"] = True
    assert _err(raw, check=False).startswith("data.n: expected int, got bool")
    raw = tiny_raw()
    raw["attacks"][0]["norm"] = "l3"
    assert _err(raw, check=False).startswith("attacks[0].norm: unknown norm 'l3'")
    raw = tiny_raw(rescalings=["car", "exact"])
    assert _err(raw, check=False).startswith("rescalings[1]: unknown rescaling 'exact'")
    assert _err(tiny_raw(attacks=[]), check=False).startswith("attacks: expected a non-empty")
    raw = tiny_raw()
    del raw["model"]
    assert _err(raw, check=False) == "model: missing required key"


def test_structural_errors() -> None:
    raw = tiny_raw()
    raw["peers"][0]["compare_with"] = "pgd_l7"
    assert _err(raw, check=False).startswith("peers[0].compare_with: no attack with id 'pgd_l7'")
    raw = tiny_raw()
    raw["attacks"][1]["id"] = "pgd_linf"
    assert _err(raw, check=False).startswith("attacks[1].id: duplicate id 'pgd_linf'")
    raw = tiny_raw()
    raw["attacks"][0]["eps"] = [0.1, 0.05]
    assert "increasing" in _err(raw, check=False)
    raw = tiny_raw()
    raw["attacks"][0]["eps"] = [0.0]
    assert _err(raw, check=False).startswith("attacks[0].eps[0]: eps must be finite and > 0")
    assert _err(tiny_raw(device="gpu0"), check=False).startswith("device: not a torch device")


def test_unknown_names_are_named(tiny: None) -> None:
    raw = tiny_raw()
    raw["attacks"][1]["class"] = "L2ClippingAwareNoSuchAttack"
    msg = _err(raw)
    assert msg.startswith("attacks[1].class: unknown attack class 'L2ClippingAwareNoSuchAttack'")
    assert "LinfClippingAwarePGD" in msg  # lists the known ones
    msg = _err(tiny_raw(model={"name": "cifar10_resnet99"}))
    assert msg.startswith("model.name: unknown model 'cifar10_resnet99'")
    msg = _err(tiny_raw(data={"name": "cifar11", "n": 2}))
    assert msg.startswith("data.name: unknown data set 'cifar11'")
    raw = tiny_raw()
    raw["peers"][0]["class"] = "LinfNoSuchAttack"
    assert _err(raw).startswith("peers[0].class: unknown foolbox attack 'LinfNoSuchAttack'")
    raw = tiny_raw()
    raw["peers"][1]["class"] = "Square"
    assert _err(raw).startswith("peers[1].class: unknown AutoAttack peer 'Square'")
    raw = tiny_raw()
    raw["peers"][1]["params"] = {"n_iter": 2, "eps": 0.3}
    assert _err(raw).startswith("peers[1].params.eps:")


def test_parameters_norms_and_files_are_checked(tiny: None, tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["attacks"][0]["params"] = {"stepz": 2}
    msg = _err(raw)
    assert msg.startswith("attacks[0].params: LinfClippingAwarePGD rejected the parameters")
    assert "stepz" in msg
    raw = tiny_raw()
    raw["attacks"][0]["norm"] = "l2"
    assert _err(raw).startswith("attacks[0].norm: l2 does not match LinfClippingAwarePGD")
    raw = tiny_raw()
    raw["peers"][0]["class"] = "L2ProjectedGradientDescentAttack"
    assert _err(raw).startswith("peers[0].class: linf does not match")
    missing = tmp_path / "nope.pt"
    msg = _err(tiny_raw(model={"name": "tiny_test", "weights": str(missing)}))
    assert msg == f"model.weights: weights file not found: {missing}"
    msg = _err(tiny_raw(data={"name": "tiny_data", "n": 13}))
    assert msg.startswith("data.n: data set 'tiny_data' has 12 samples")
    msg = _err(tiny_raw(data={"name": "tiny_data", "split": "train"}))
    assert msg.startswith("data.split: data set 'tiny_data' has no split 'train'")
    msg = _err(tiny_raw(model={"name": "cifar10_resnet18"}))
    assert msg.startswith("data.name: data set 'tiny_data' gives inputs of shape (3, 8, 8)")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line"):
        load_config(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping, got list"):
        load_config(bad)


def test_shipped_configs_validate() -> None:
    configs = shipped_configs()
    for name in (
        "cifar10_resnet18",
        "imagenet_efficientnet_lite0",
        "cifar10_torchvision",
        "imagenet_folder",
        "torchvision_classifier",
    ):
        assert name in configs, sorted(configs)
    for name, path in configs.items():
        cfg, _ = load_config(path)
        check_references(cfg)  # resolves every model, data set, class and parameter
        assert cfg.name == name
    default, _ = load_config(configs["cifar10_resnet18"])
    assert default.model.name == "cifar10_resnet18" and default.data.name == "foolbox_cifar10"
    assert default.data.n == 20
    classes = {a.cls for a in default.attacks}
    assert {"L1ClippingAwarePGD", "L2ClippingAwarePGD", "LinfClippingAwarePGD"} <= classes
    assert sum("Noise" in c for c in classes) == 3
    apgd = {"L1ClippingAwareAPGD", "L2ClippingAwareAPGD", "LinfClippingAwareAPGD"}
    assert apgd | {"L2ClippingAwareFMN", "LinfClippingAwareFMN"} <= classes
    assert any("Boundary" in c or "HopSkipJump" in c for c in classes)
    assert all(a.rescalings == ("car", "bisection", "naive") for a in default.attacks)
    peers = {(p.library, p.cls) for p in default.peers}
    assert ("autoattack", "APGDAttack") in peers
    assert {"LinfProjectedGradientDescentAttack", "BoundaryAttack"} <= {c for _, c in peers}
    # the symlinked top-level configs/ folder is the package's
    root = Path(__file__).resolve().parent.parent
    assert (root / "configs").resolve() == (root / "car_attacks" / "configs").resolve()


# --------------------------------------------------------------------------- runs


def test_run_writes_results_and_report(tiny_run: Path) -> None:
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["units_total"] == manifest["units_done"] == TINY_UNITS
    for name in ("report.json", "report.md", "report.html", "config.yaml", "config.source.yaml"):
        assert (tiny_run / name).is_file(), name
    results = _results(tiny_run)
    assert len(results) == TINY_UNITS
    report = json.loads((tiny_run / "report.json").read_text())
    x, y = _tiny_images()
    clean_correct = [(i % 4) != 1 for i in range(6)]
    assert report["clean"]["correct"] == sum(clean_correct)
    assert report["clean"]["accuracy"] == pytest.approx(sum(clean_correct) / 6, abs=1e-6)
    attacks = {a["id"]: a for a in report["attacks"]}
    assert [m["key"] for m in attacks["pgd_linf"]["methods"]] == [
        "pgd_linf/car",
        "pgd_linf/bisection",
        "pgd_linf/naive",
        "fb_pgd",
        "apgd",
    ]
    assert attacks["boundary"]["kind"] == "minimization"
    for a in report["attacks"]:
        for m in a["methods"]:
            assert m["samples"] == [6] * len(a["eps"])
            for v in m["robust_accuracy"]:
                assert 0.0 <= v <= report["clean"]["accuracy"] + 1e-9
            assert m["queries_per_sample_eps"] > 0
            assert m["time_s"] > 0
    # robust accuracy is computed from the stored per-sample results
    recs = [
        r
        for r in RunStore(tiny_run).records()
        if isinstance(r, AttackRecord) and r.method == "pgd_linf/car"
    ]
    eps1 = [r for r in recs if r.eps == (0.2,)]
    robust = sum(
        c and not s
        for r in eps1
        for c, s in zip([clean_correct[i] for i in r.indices], r.success[0], strict=True)
    )
    assert attacks["pgd_linf"]["methods"][0]["robust_accuracy"][1] == pytest.approx(robust / 6)
    # CAR perturbations of the noise attack have exactly the nominal L2 norm; naive's are
    # shorter on the saturated images
    noise = {m["variant"]: m for m in attacks["noise_l2"]["methods"]}
    for j in range(2):
        assert noise["car"]["effective_ratio"]["min"][j] == pytest.approx(1.0, abs=1e-4)
        assert noise["bisection"]["effective_ratio"]["min"][j] == pytest.approx(1.0, abs=1e-4)
        assert noise["naive"]["effective_ratio"]["min"][j] < 0.95
    assert any("naive rescaling" in line for line in report["headline"])
    # PGD stays in the ball: effective Linf norm <= eps for every variant and peer
    for m in attacks["pgd_linf"]["methods"]:
        assert all(v <= 1 + 1e-5 for v in m["effective_ratio"]["max"] if v is not None)
    assert len(report["figures"]) == 2 * 3 + 1
    env = report["environment"]
    assert env["packages"]["torch"] and env["packages"]["foolbox"] and env["python"]
    assert env["device"]["requested"] == "cpu"
    md = (tiny_run / "report.md").read_text()
    assert "| pgd_linf/car" not in md  # labels, not keys, in the table rows
    assert "Robust accuracy, pgd_linf" in md and "| car |" in md


def test_units_record_rescaling_and_model_time(tiny_run: Path) -> None:
    """Per unit: rescaling time of our attacks inside the wall time (and > 0 for car), the
    model's forward time for every method; peers record no rescaling time."""
    recs = [r for r in RunStore(tiny_run).records() if isinstance(r, AttackRecord)]
    ours = [r for r in recs if r.variant in ("car", "bisection", "naive")]
    assert ours and all(r.rescaling_s is not None for r in ours)
    for r in ours:
        assert r.rescaling_s is not None and r.model_s is not None
        assert 0.0 <= r.rescaling_s <= r.time_s
        assert r.rescaling_s + r.model_s <= r.time_s
    assert all(r.rescaling_s is not None and r.rescaling_s > 0 for r in ours if r.variant == "car")
    peers = [r for r in recs if r.variant == "peer"]
    assert peers and all(r.rescaling_s is None for r in peers)
    assert all(r.model_s is not None and 0 < r.model_s <= r.time_s for r in recs)
    report = json.loads((tiny_run / "report.json").read_text())
    for a in report["attacks"]:
        for m in a["methods"]:
            assert m["model_forward_s"] > 0
            if not m["peer"]:
                assert 0 < m["rescaling_s"] <= m["time_s"]
                assert m["other_s"] == pytest.approx(
                    max(m["time_s"] - m["rescaling_s"] - m["model_forward_s"], 0.0), abs=2e-4
                )
    text = (tiny_run / "report.md").read_text()
    assert "Rescaling/projection time: car " in text and "rescaling s" in text


def test_stored_norms_are_those_of_the_clipped_perturbation(tiny_run: Path) -> None:
    for rec in RunStore(tiny_run).records():
        if not isinstance(rec, AttackRecord):
            continue
        for j in range(len(rec.eps)):
            for l1, l2, linf in zip(rec.l1[j], rec.l2[j], rec.linf[j], strict=True):
                # norm inequalities of any vector in R^192
                assert linf <= l2 + 1e-9 <= l1 + 2e-9
                assert l1 <= math.sqrt(192) * l2 + 1e-6


def _count_units(
    calls: list[str],
) -> Callable[[Any, Any], Callable[[Any], UnitRecord]]:
    def factory(config: Any, methods: Any) -> Callable[[Any], UnitRecord]:
        execute = _Executor(config, methods)

        def run(unit: Any) -> UnitRecord:
            calls.append(unit.key)
            return execute(unit)

        return run

    return factory


def test_resume_redoes_only_missing_work(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    store = RunStore(out)
    # lose one method completely, and cut another file's last line in half (a kill
    # during the write)
    lost = {k for k in store.done_keys() if k.startswith("noise_l2/naive|")}
    store.path_for("noise_l2/naive").unlink()
    path = store.path_for("fb_boundary")
    lines = path.read_bytes().splitlines(keepends=True)
    cut = json.loads(lines[-1])
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    lost.add(f"fb_boundary|{cut['batch']}|" + ",".join(repr(e) for e in cut["eps"]))
    for name in ("report.json", "report.html"):
        (out / name).unlink()

    cfg, text = load_config(out / "config.source.yaml")
    calls: list[str] = []
    summary = run_experiment(
        cfg, out, source_text=text, progress=False, executor_factory=_count_units(calls)
    )
    assert sorted(calls) == sorted(lost)  # exactly the missing units, each once
    assert summary.units_run == len(lost) == 5 and summary.units_skipped == TINY_UNITS - 5
    assert _results(out) == _results(tiny_run)  # same per-sample results as uninterrupted
    assert (out / "report.json").read_text() != ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["sessions"]) == 2

    calls.clear()
    summary = run_experiment(
        cfg, out, source_text=text, progress=False, executor_factory=_count_units(calls)
    )
    assert calls == [] and summary.units_run == 0  # nothing left to do: no model load


def test_other_config_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = sorted(p.name for p in (out / "results").iterdir())
    cfg = parse_config(tiny_raw(seed=4), default_name="tiny")
    with pytest.raises(RunDirError, match="holds a run of a different config"):
        run_experiment(cfg, out, progress=False)
    assert sorted(p.name for p in (out / "results").iterdir()) == before
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "data.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a car-attacks run directory"):
        run_experiment(cfg, other, progress=False)


def test_report_rebuild_is_identical(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    original = (out / "report.json").read_bytes()
    for name in ("report.json", "report.md", "report.html"):
        (out / name).unlink()
    shutil.rmtree(out / "figures")
    build_report(out)
    assert (out / "report.json").read_bytes() == original
    assert (out / "report.html").stat().st_size > 10_000
    assert len(list((out / "figures").glob("*.png"))) == 7


def test_partial_report_marks_missing_points(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    RunStore(out).path_for("pgd_linf/bisection").unlink()
    build_report(out)
    report = json.loads((out / "report.json").read_text())
    assert not report["run"]["complete"]
    m = next(m for m in report["attacks"][0]["methods"] if m["key"] == "pgd_linf/bisection")
    assert m["robust_accuracy"] == [None, None]
    assert any(line.startswith("INCOMPLETE RUN") for line in report["headline"])
    assert "incomplete" in (out / "report.html").read_text()


def test_failed_units_are_recorded_and_retried(tiny: None, tmp_path: Path) -> None:
    raw = tiny_raw(attacks=[TINY_CONFIG["attacks"][1]], peers=[])
    raw["data"] = {"name": "tiny_data", "n": 4, "batch_size": 4}
    cfg = parse_config(raw, default_name="tiny")

    def flaky(config: Any, methods: Any) -> Callable[[Any], UnitRecord]:
        execute = _Executor(config, methods)

        def run(unit: Any) -> UnitRecord:
            if unit.method == "noise_l2/bisection":
                raise RuntimeError("boom\nsecond line")
            return execute(unit)

        return run

    summary = run_experiment(cfg, tmp_path / "r", progress=False, executor_factory=flaky)
    assert summary.units_failed == 2 and summary.units_run == 5
    assert summary.failures[0].endswith("boom")
    errors = RunStore(tmp_path / "r").errors()
    assert [e.method for e in errors] == ["noise_l2/bisection"] * 2
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(report["run"]["errors"]) == 2 and not report["run"]["complete"]
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    assert summary.units_run == 2 and summary.units_failed == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["run"]["errors"] == [] and report["run"]["complete"]


def test_model_bounds_other_than_unit_interval(tiny: None, tmp_path: Path) -> None:
    """Data in [0, 1] is scaled into a (0, 255) model's bounds; eps are in its units."""
    raw = tiny_raw(
        model={"name": "tiny255_test"},
        attacks=[
            {
                "id": "noise_l2",
                "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
                "norm": "l2",
                "eps": [255.0],
            },
            {
                "id": "pgd_linf",
                "class": "LinfClippingAwarePGD",
                "norm": "linf",
                "eps": [51.0],
                "params": {"steps": 2, "rel_stepsize": 0.5},
            },
        ],
        peers=[
            {
                "id": "apgd",
                "library": "autoattack",
                "class": "APGDAttack",
                "compare_with": "pgd_linf",
                "params": {"n_iter": 2},
            }
        ],
        rescalings=["car"],
    )
    cfg = parse_config(raw, default_name="tiny255")
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    assert summary.units_failed == 0, summary.failures
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["clean"]["correct"] == 4  # same predictions as the (0, 1) model
    noise, pgd = report["attacks"]
    assert noise["methods"][0]["effective_ratio"]["min"][0] == pytest.approx(1.0, abs=1e-4)
    car, apgd = pgd["methods"]
    assert car["robust_accuracy"] == [0.0]  # eps = 0.2 in (0, 1) units fools the tiny model
    assert apgd["robust_accuracy"] == [0.0]
    for m in pgd["methods"]:  # APGD's perturbation is mapped back into (0, 255) units
        assert 0.5 < m["effective_ratio"]["max"][0] <= 1 + 1e-5


def test_batch_blend_starting_points(tiny: None) -> None:
    from car_attacks.evaluation.runner import ExperimentError, batch_blend_starting_points

    net = TinyNet()
    net.load_state_dict(_tiny_state())
    x, y = _tiny_images()
    with torch.no_grad():
        start = batch_blend_starting_points(net, x, y)
        wrong = net(x).argmax(1) != y
        assert bool((net(start).argmax(1) != y).all())  # every start is adversarial
    assert torch.equal(start[wrong], x[wrong])  # misclassified images start at themselves
    assert torch.equal(batch_blend_starting_points(net, x, y), start)  # deterministic
    moved = (start - x).flatten(1).norm(dim=1)
    assert bool((moved[~wrong] > 0).all())
    # the blend sits between the image and another image of the batch, on its segment
    d = torch.cdist(x.flatten(1), x.flatten(1))
    assert bool((moved[~wrong] < d[~wrong].max(dim=1).values).all())
    with pytest.raises(ExperimentError, match="batch_blend needs"):
        batch_blend_starting_points(net, x[:1], y[:1] if not wrong[0] else net(x[:1]).argmax(1))


def test_init_is_only_for_minimization_attacks(tiny: None) -> None:
    raw = tiny_raw()
    raw["attacks"][0]["init"] = "batch_blend"
    assert _err(raw).startswith(
        "attacks[0].init: LinfClippingAwarePGD is not a minimization attack"
    )
    raw = tiny_raw()
    raw["attacks"][2]["init"] = "warm"
    assert _err(raw, check=False).startswith("attacks[2].init: unknown init 'warm'")
    raw = tiny_raw()
    raw["attacks"][2]["init"] = "batch_blend"
    assert parse_config(raw).attacks[2].init == "batch_blend"


def test_warm_up_counts_no_query_and_leaves_no_grad() -> None:
    """The untimed pass before the first attack unit: one forward of the plain model, an
    input gradient, no ``.grad`` on parameters, mode and the caller's input untouched."""
    calls: list[int] = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    net.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    net.eval()
    x = torch.rand(4, 3, 2, 2)
    with torch.no_grad():  # a caller without gradients still warms the backward pass
        warm_up(net, x)
    assert calls == [4]
    assert all(p.grad is None for p in net.parameters())
    assert not x.requires_grad and x.grad is None and not net.training


def test_executor_warms_up_once_before_the_first_attack_unit(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from car_attacks.evaluation import runner

    warmed: list[int] = []
    real = runner.warm_up
    monkeypatch.setattr(runner, "warm_up", lambda model, x: (warmed.append(len(x)), real(model, x)))
    cfg, _ = load_config(write_tiny_config(tmp_path / "tiny.yaml"))
    summary = run_experiment(cfg, tmp_path / "r", progress=False, report=False)
    assert summary.units_failed == 0
    assert len(warmed) == 1
