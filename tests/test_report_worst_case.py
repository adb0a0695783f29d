"""The worst case over all attacks of a norm, from hand-built typed records (no model
runs): robust accuracy on the union of the eps grids, the strongest single method, the
median smallest norm, and how report.json, the tables and the headline show them."""

from __future__ import annotations

import json

from car_attacks.evaluation import ExperimentConfig, parse_config
from car_attacks.evaluation.records import (
    AttackRecord,
    CleanRecord,
    FoundPerturbation,
    Manifest,
    MethodRecord,
    UnitRecord,
)
from car_attacks.evaluation.report.document import Report
from car_attacks.evaluation.report.render_markdown import render_markdown
from car_attacks.evaluation.report.summary import summarize
from car_attacks.evaluation.report.tables import report_tables

IDX = [0, 1, 2, 3, 4, 5]
F, T = False, True


def _config() -> ExperimentConfig:
    return parse_config(
        {
            "name": "worst",
            "model": {"name": "fashion_mnist_cnn"},
            "data": {"name": "foolbox_fashion_mnist", "n": 6, "batch_size": 6},
            "rescalings": ["car", "naive"],
            "attacks": [
                {"id": "pgd", "class": "L2ClippingAwarePGD", "norm": "l2", "eps": [0.5, 1.0]},
                {
                    "id": "noise",
                    "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
                    "norm": "l2",
                    "eps": [0.25, 1.0],
                    "rescalings": ["car"],
                },
                {
                    "id": "boundary",
                    "class": "ClippingAwareBoundaryAttack",
                    "norm": "l2",
                    "eps": [1.0],
                    "rescalings": ["car"],
                },
                {
                    "id": "linf",
                    "class": "LinfClippingAwarePGD",
                    "norm": "linf",
                    "eps": [0.1],
                    "rescalings": ["car"],
                },
            ],
        }
    )


def _method(key: str, kind: str = "fixed") -> MethodRecord:
    attack, variant = key.split("/") if "/" in key else ("pgd", "peer")
    return MethodRecord(key, attack, variant, "c", kind, "foolbox" if variant == "peer" else "")


METHODS = [
    _method("pgd/car"),
    _method("pgd/naive"),
    _method("fb-pgd"),
    _method("noise/car"),
    _method("boundary/car", "minimization"),
    _method("linf/car"),
]


def _rec(
    m: MethodRecord,
    eps: tuple[float, ...],
    success: list[list[bool]],
    norm: list[list[float]],
    found: FoundPerturbation | None = None,
) -> AttackRecord:
    return AttackRecord(
        method=m.key,
        attack=m.attack,
        variant=m.variant,
        batch=0,
        eps=eps,
        indices=IDX,
        success=success,
        l1=[[3 * v for v in row] for row in norm],
        l2=norm,
        linf=[[v / 3 for v in row] for row in norm],
        queries=1,
        time_s=1.0,
        cpu_s=1.0,
        found=found,
    )


def _report() -> Report:
    # sample 5 is misclassified; each of samples 0-4 is fooled by a different method, at
    # a different norm, so the worst case is below every single method
    pgd, naive, peer, noise, boundary, linf = METHODS
    zeros = [0.0] * 6
    records: list[UnitRecord] = [
        CleanRecord(
            batch=0,
            indices=IDX,
            labels=IDX,
            pred=[0, 1, 2, 3, 4, 0],
            correct=[T, T, T, T, T, F],
            time_s=0.0,
        ),
        _rec(pgd, (0.5,), [[T, F, F, F, F, F]], [[0.5] * 6]),
        _rec(pgd, (1.0,), [[T, T, F, F, F, F]], [[1.0] * 6]),
        # naive stops short of eps: its 0.45 counts from eps 0.45 on
        _rec(naive, (0.5, 1.0), [[F, F, T, F, F, F], [F, F, T, F, F, F]], [[0.45] * 6] * 2),
        _rec(peer, (0.5, 1.0), [[F] * 6, [F, F, F, T, F, F]], [zeros, [1.0] * 6]),
        _rec(noise, (0.25, 1.0), [[F, F, F, F, T, F], [F] * 6], [[0.25] * 6, [1.0] * 6]),
        _rec(
            boundary,
            (1.0,),
            [[F, F, F, T, F, F]],
            [[0.3] * 6],
            found=FoundPerturbation(
                l1=[9.0] * 6,
                l2=[9.0, 9.0, 9.0, 0.3, 9.0, 9.0],
                linf=[9.0] * 6,
                adversarial=[F, F, F, T, F, F],
            ),
        ),
        _rec(linf, (0.1,), [[T, T, T, T, T, F]], [[0.3] * 6]),
    ]
    manifest = Manifest(
        format="car-attacks-run/1",
        config_name="worst",
        config_hash="h",
        created="now",
        units_total=len(records),
        methods=METHODS,
        environment={},
        status="complete",
    )
    return summarize(_config(), manifest, records, [], config_text="")


def test_worst_case_is_below_every_single_method() -> None:
    report = _report()
    l2, linf = report.worst_case
    assert l2.norm == "l2" and linf.norm == "linf"
    assert l2.attacks == ["pgd", "noise", "boundary"]
    assert l2.methods == ["pgd/car", "pgd/naive", "fb-pgd", "noise/car", "boundary/car"]
    assert l2.eps == [0.25, 0.5, 1.0]
    # smallest norms: s0 0.5, s1 1.0, s2 0.45, s3 0.3 (found), s4 0.25
    assert l2.robust_accuracy == [round(4 / 6, 6), round(1 / 6, 6), 0.0]
    assert l2.strongest_method == ["noise/car", "pgd/car", "pgd/car"]
    assert l2.strongest_robust_accuracy == [round(4 / 6, 6), round(4 / 6, 6), 0.5]
    assert l2.median_smallest_norm == 0.45
    assert l2.fooled_share == 1.0
    assert l2.samples == 6
    # every single method's own robust accuracy at its eps is at least the worst case
    for a in report.attacks:
        if a.norm != "l2":
            continue
        for m in a.methods:
            for e, acc in zip(a.eps, m.robust_accuracy, strict=True):
                worst = l2.robust_accuracy[l2.eps.index(e)]
                assert acc is not None and worst is not None and acc >= worst
    assert linf.eps == [0.1] and linf.robust_accuracy == [0.0]
    assert linf.methods == ["linf/car"] and linf.median_smallest_norm == 0.1


def test_unfooled_majority_has_no_median() -> None:
    report = _report()
    linf_only = [w for w in report.worst_case if w.norm == "linf"][0]
    assert linf_only.median_smallest_norm is not None
    # drop the results of every l2 method but the peer: 1 of 5 correct samples fooled
    cfg = _config()
    peer = METHODS[2]
    recs: list[UnitRecord] = [
        CleanRecord(batch=0, indices=IDX, labels=IDX, pred=IDX, correct=[T] * 6, time_s=0.0),
        _rec(peer, (0.5, 1.0), [[F] * 6, [F, F, F, T, F, F]], [[0.0] * 6, [1.0] * 6]),
    ]
    manifest = Manifest(
        format="car-attacks-run/1",
        config_name="worst",
        config_hash="h",
        created="now",
        units_total=99,
        methods=METHODS,
        environment={},
        status="running",
    )
    w = summarize(cfg, manifest, recs, []).worst_case[0]
    assert w.robust_accuracy == [1.0, 1.0, round(5 / 6, 6)]
    assert w.median_smallest_norm is None and w.fooled_share == round(1 / 6, 6)


def test_report_json_tables_and_headline() -> None:
    report = _report()
    d = json.loads(json.dumps(report.to_json(), allow_nan=False))
    # backward compatible: the old keys stay, the worst case is added
    for key in ("attacks", "headline", "clean", "run", "figures"):
        assert key in d
    wc = d["worst_case"]
    assert [w["norm"] for w in wc] == ["l2", "linf"]
    assert wc[0]["robust_accuracy"] == [round(4 / 6, 6), round(1 / 6, 6), 0.0]
    assert wc[0]["median_smallest_norm"] == 0.45
    tables = report_tables(report)
    assert tables["worst-case-l2"].rows[1] == ["0.5", "16.7%", "pgd (car)", "66.7%"]
    assert tables["worst-case-linf"].rows == [["0.1", "0.0%", "linf (car)", "0.0%"]]
    line = report.headline[1]
    assert line.startswith("Worst case over all 5 L2 methods (pgd, noise, boundary), eps=1")
    assert "robust accuracy 0.0% (strongest single method pgd/car 50.0%)" in line
    assert "median smallest L2 norm that fools a sample 0.45" in line
    md = render_markdown(report, tables)
    assert "## Worst case over all attacks, per norm" in md
    assert "| 0.25 | 66.7% | noise (car) | 66.7% |" in md
