"""The report's numbers from typed records (no model runs): robust accuracy, success
rate, effective ratios, norms found, incomplete and failed units, and the rendering."""

from __future__ import annotations

from dataclasses import replace

import pytest

from car_attacks.evaluation import ExperimentConfig, parse_config
from car_attacks.evaluation.records import (
    AttackRecord,
    CleanRecord,
    ErrorRecord,
    FoundPerturbation,
    Manifest,
    MethodRecord,
    UnitRecord,
)
from car_attacks.evaluation.report.document import Report
from car_attacks.evaluation.report.formatting import eps_str, fmt, pct
from car_attacks.evaluation.report.render_markdown import render_markdown
from car_attacks.evaluation.report.summary import SHORT_RATIO, summarize
from car_attacks.evaluation.report.tables import report_tables

EPS = (0.5, 1.0)
IDX = [0, 1, 2, 3]


def _config() -> ExperimentConfig:
    return parse_config(
        {
            "name": "synthetic",
            "model": {"name": "fashion_mnist_cnn"},
            "data": {"name": "foolbox_fashion_mnist", "n": 4, "batch_size": 4},
            "rescalings": ["car"],
            "attacks": [
                {"id": "pgd", "class": "L2ClippingAwarePGD", "norm": "l2", "eps": list(EPS)},
                {
                    "id": "boundary",
                    "class": "ClippingAwareBoundaryAttack",
                    "norm": "l2",
                    "eps": list(EPS),
                },
            ],
        }
    )


def _manifest(units_total: int) -> Manifest:
    methods = [
        MethodRecord(key="pgd/car", attack="pgd", variant="car", cls="c", kind="fixed"),
        MethodRecord(
            key="boundary/car", attack="boundary", variant="car", cls="b", kind="minimization"
        ),
    ]
    return Manifest(
        format="car-attacks-run/1",
        config_name="synthetic",
        config_hash="abc",
        created="now",
        units_total=units_total,
        methods=methods,
        environment={},
        status="complete",
    )


def _attack(method: str, eps: float, success: list[bool], l2: list[float]) -> AttackRecord:
    return AttackRecord(
        method=method,
        attack=method.split("/")[0],
        variant="car",
        batch=0,
        eps=(eps,),
        indices=IDX,
        success=[success],
        l1=[[2 * v for v in l2]],
        l2=[l2],
        linf=[[v / 2 for v in l2]],
        queries=8,
        time_s=1.0,
        cpu_s=0.5,
    )


def _report(with_boundary: bool = True) -> Report:
    # sample 3 is misclassified; sample 2 is not perturbed (the attack returned the input)
    clean = CleanRecord(
        batch=0,
        indices=IDX,
        labels=[0, 1, 2, 3],
        pred=[0, 1, 2, 0],
        correct=[True, True, True, False],
        time_s=0.1,
    )
    records: list[UnitRecord] = [
        clean,
        _attack("pgd/car", 0.5, [True, False, False, False], [0.5, 0.49, 0.0, 0.5]),
        _attack("pgd/car", 1.0, [True, True, False, False], [1.0, 1.0, 0.0, 1.0]),
    ]
    if with_boundary:
        found = FoundPerturbation(
            l1=[0.8, 2.4, 4.0, 9.0],
            l2=[0.4, 1.2, 2.0, 9.0],
            linf=[0.2, 0.6, 1.0, 9.0],
            adversarial=[True, True, False, True],
        )
        records.append(
            AttackRecord(
                method="boundary/car",
                attack="boundary",
                variant="car",
                batch=0,
                eps=EPS,
                indices=IDX,
                success=[[True, False, False, False], [True, True, False, False]],
                l1=[[1.0] * 4, [2.0] * 4],
                l2=[[0.5] * 4, [1.0] * 4],
                linf=[[0.25] * 4, [0.5] * 4],
                queries=100,
                time_s=2.0,
                cpu_s=2.0,
                found=found,
            )
        )
    errors = [
        ErrorRecord(
            key=records[1].key,
            method="pgd/car",
            batch=0,
            eps=(0.5,),
            error="old",
            traceback="",
            time="t",
        ),
        ErrorRecord(
            key="boundary/car|1|0.5,1.0",
            method="boundary/car",
            batch=1,
            eps=EPS,
            error="RuntimeError: boom",
            traceback="",
            time="t",
        ),
    ]
    return summarize(_config(), _manifest(len(records)), records, errors, config_text="x: 1\n")


def test_fixed_eps_numbers() -> None:
    report = _report()
    assert report.clean.correct == 3 and report.clean.evaluated == 4
    assert report.clean.accuracy == 0.75
    pgd = report.attacks[0].methods[0]
    assert pgd.samples == [4, 4]
    # robust: correct and not fooled, over all 4 samples
    assert pgd.robust_accuracy == [0.5, 0.25]
    # success rate: fooled among the 3 correctly classified
    assert pgd.success_rate == [pytest.approx(1 / 3, abs=1e-6), pytest.approx(2 / 3, abs=1e-6)]
    # ratios of the correct samples with a non-zero perturbation: 1.0 and 0.98 at eps 0.5
    r = pgd.effective_ratio
    assert r.min == [0.98, 1.0] and r.max == [1.0, 1.0]
    assert r.mean == [0.99, 1.0] and r.median == [0.99, 1.0]
    assert r.short_share == [0.5, 0.0] and 0.98 < SHORT_RATIO
    # mean norms over the correct samples, zeros included
    assert pgd.mean_effective_norm.l2 == [pytest.approx(0.33, abs=1e-6), pytest.approx(2 / 3)]
    assert pgd.time_s == 2.0 and pgd.ms_per_sample_eps == 250.0
    assert pgd.queries_per_sample_eps == 2.0
    assert pgd.found_norm is None and pgd.certificate is None
    assert pgd.distribution == [[0.98, 1.0], [1.0, 1.0]]


def test_minimization_numbers() -> None:
    boundary = _report().attacks[1]
    assert boundary.kind == "minimization"
    m = boundary.methods[0]
    f = m.found_norm
    assert f is not None
    # correct samples 0, 1, 2; adversarials found for 0 and 1 (sample 3 is misclassified)
    assert f.adversarial_share == pytest.approx(2 / 3, abs=1e-6)
    assert (f.min, f.median, f.mean, f.max) == (0.4, 0.8, 0.8, 1.2)
    assert m.distribution == [[0.4, 1.2]]


def test_run_status_and_errors() -> None:
    report = _report()
    assert report.run.complete and report.run.units_done == 4
    # an error of a unit that has a result since is not reported
    assert [(e.key, e.error) for e in report.run.errors] == [
        ("boundary/car|1|0.5,1.0", "RuntimeError: boom")
    ]
    partial = _report(with_boundary=False)
    assert partial.run.units_total == 3 and partial.run.complete
    assert partial.run.incomplete == [
        "boundary/car eps=0.5: 0/4 samples",
        "boundary/car eps=1: 0/4 samples",
    ]
    assert partial.attacks[1].methods[0].robust_accuracy == [None, None]
    assert len(partial.run.errors) == 1
    assert any("unit(s) failed" in line for line in partial.headline)


def test_to_json_structure() -> None:
    d = _report().to_json()
    assert list(d) == [
        "format",
        "title",
        "config_name",
        "config_hash",
        "model",
        "data",
        "seed",
        "device",
        "rescalings",
        "clean",
        "certificate",
        "attacks",
        "run",
        "environment",
        "config",
        "config_yaml",
        "figures",
        "headline",
        "worst_case",
    ]
    m = d["attacks"][0]["methods"][0]
    assert m["label"] == "car" and m["peer"] is False and m["class"] == "c"
    assert "distribution" not in m
    assert d["run"]["errors"] == [{"key": "boundary/car|1|0.5,1.0", "error": "RuntimeError: boom"}]
    assert [f["id"] for f in d["figures"]] == [
        "robust-pgd",
        "norms-pgd",
        "robust-boundary",
        "norms-boundary",
        "runtime",
    ]


def test_tables_and_markdown() -> None:
    report = _report()
    tables = report_tables(report)
    assert set(tables) == {
        "clean",
        "worst-case-l2",
        "robust-pgd",
        "norms-pgd",
        "robust-boundary",
        "norms-boundary",
        "runtime",
        "environment",
    }
    assert tables["robust-pgd"].rows == [["car", "c", "50.0%", "25.0%"]]
    assert tables["norms-boundary"].rows == [["car", "66.7%", "0.8", "0.8", "0.4", "1.2"]]
    md = render_markdown(report, tables)
    assert "| car | c | 50.0% | 25.0% |" in md
    assert "![Robust accuracy vs eps: pgd](figures/robust-pgd.png)" in md


def test_formatting() -> None:
    assert eps_str(8 / 255) == "0.03137 (8/255)"
    assert eps_str(0.5) == "0.5"
    assert pct(None) == "n/a" and pct(0.125) == "12.5%"
    assert fmt(None) == "n/a" and fmt(1.23456, ".2f") == "1.23" and fmt(3) == "3"


def _timed_report(untimed: str = "", compiled: float | None = None) -> Report:
    """pgd with three variants that recorded their rescaling and model time, and a peer;
    the ``untimed`` method's unit at eps 1.0 did not record its rescaling time; the car
    unit at eps 1.0 spent ``compiled`` seconds compiling kernels."""
    variants = {"car": (0.25, 1.0), "bisection": (0.9, 1.5), "naive": (0.05, 1.0)}
    methods = [
        MethodRecord(key=f"pgd/{v}", attack="pgd", variant=v, cls="c", kind="fixed")
        for v in variants
    ] + [MethodRecord(key="fb_pgd", attack="pgd", variant="peer", cls="f", kind="fixed")]
    records: list[UnitRecord] = [
        CleanRecord(
            batch=0,
            indices=IDX,
            labels=[0, 1, 2, 3],
            pred=[0, 1, 2, 3],
            correct=[True] * 4,
            time_s=0.1,
        )
    ]
    for key, rescaling_s, time_s in [(f"pgd/{v}", *t) for v, t in variants.items()] + [
        ("fb_pgd", None, 0.75)
    ]:
        for e in EPS:
            rec = _attack(key, e, [False] * 4, [e] * 4)
            variant = key.split("/")[1] if "/" in key else "peer"
            records.append(
                replace(
                    rec,
                    variant=variant,
                    attack="pgd",
                    time_s=time_s,
                    rescaling_s=None if (key, e) == (untimed, 1.0) else rescaling_s,
                    model_s=0.4,
                    compile_s=compiled if (key, e) == ("pgd/car", 1.0) else None,
                )
            )
    manifest = replace(_manifest(len(records)), methods=methods)
    return summarize(_config(), manifest, records, [])


def test_runtime_splits_rescaling_and_model_time() -> None:
    report = _timed_report()
    by = {m.key: m for m in report.attacks[0].methods}
    car, bis, naive, peer = by["pgd/car"], by["pgd/bisection"], by["pgd/naive"], by["fb_pgd"]
    assert (car.time_s, car.rescaling_s, car.model_s, car.other_s) == (2.0, 0.5, 0.8, 0.7)
    assert (bis.time_s, bis.rescaling_s, bis.other_s) == (3.0, 1.8, 0.4)
    assert (naive.rescaling_s, naive.other_s) == (0.1, 1.1)
    assert peer.rescaling_s is None and peer.model_s == 0.8 and peer.other_s is None
    d = car.to_json()
    assert (d["rescaling_s"], d["model_forward_s"], d["other_s"]) == (0.5, 0.8, 0.7)
    assert d["time_s"] == 2.0 and d["cpu_s"] == 1.0  # the existing keys stay
    table = report_tables(report)["runtime"]
    assert table.header[2:6] == ["wall s", "rescaling s", "model forward s", "other s"]
    rows = {r[1]: r for r in table.rows}
    assert rows["car"][2:6] == ["2.00", "0.500", "0.80", "0.70"]
    assert rows["bisection"][2:6] == ["3.00", "1.800", "0.80", "0.40"]
    assert rows["fb_pgd"][2:6] == ["1.50", "n/a", "0.80", "n/a"]
    assert (
        "Rescaling/projection time: car 0.500 s, bisection 1.800 s, naive 0.100 s "
        "(bisection / car = 3.60)." in report.headline
    )
    assert "Total attack time: car 2.0 s, bisection 3.0 s, naive 2.0 s" in " ".join(report.headline)
    assert any(s.startswith("Model forward time") for s in report.headline)
    md = render_markdown(report, report_tables(report))
    assert "| pgd | car | 2.00 | 0.500 | 0.80 | 0.70 |" in md


def test_kernel_compile_time_is_reported_apart_from_the_rescaling_time() -> None:
    """A unit that compiled the fused kernels: its compile time is stored, summed per method,
    named in the headline, and taken out of "other", never added to the rescaling time."""
    rec = replace(_attack("pgd/car", 0.5, [True] * 4, [0.5] * 4), compile_s=0.3)
    assert AttackRecord.from_json(rec.to_json()) == rec
    assert "compile_s" not in replace(rec, compile_s=None).to_json()
    plain, compiled = _timed_report(), _timed_report(compiled=0.3)
    car = {m.key: m for m in compiled.attacks[0].methods}["pgd/car"]
    car_plain = {m.key: m for m in plain.attacks[0].methods}["pgd/car"]
    assert car.compile_s == pytest.approx(0.3) and car_plain.compile_s == 0.0
    assert car.rescaling_s == car_plain.rescaling_s == 0.5
    assert car.other_s == pytest.approx(car_plain.other_s - 0.3)  # type: ignore[operator]
    assert car.to_json()["compile_s"] == pytest.approx(0.3)
    line = "Compiling the fused kernels (CAR_ATTACKS_COMPILE) took 0.3 s"
    assert any(s.startswith(line) for s in compiled.headline)
    assert not any(s.startswith("Compiling") for s in plain.headline)


def test_old_records_without_timings_still_report() -> None:
    rec = _attack("pgd/car", 0.5, [True] * 4, [0.5] * 4)
    stored = rec.to_json()
    assert "rescaling_s" not in stored and "model_s" not in stored
    assert AttackRecord.from_json(stored) == rec
    timed = replace(rec, rescaling_s=0.25, model_s=0.5)
    assert AttackRecord.from_json(timed.to_json()) == timed
    report = _report()  # records written before the timings existed
    pgd = report.attacks[0].methods[0]
    assert pgd.rescaling_s is None and pgd.model_s is None and pgd.other_s is None
    assert pgd.to_json()["rescaling_s"] is None
    assert report_tables(report)["runtime"].rows[0][2:6] == ["2.00", "n/a", "n/a", "n/a"]
    assert not any("Rescaling" in s for s in report.headline)
    # one unit without the field makes the method's sum unknown, not a partial sum, and
    # leaves its variant out of the headline comparison
    mixed = _timed_report(untimed="pgd/car")
    assert [m.rescaling_s for m in mixed.attacks[0].methods] == [None, 1.8, 0.1, None]
    assert mixed.attacks[0].methods[0].model_s == 0.8
    assert not any("Rescaling" in s for s in mixed.headline)
