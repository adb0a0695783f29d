"""The run directory store: what a kill leaves is repaired, other damage is refused,
shards merge without loss, writes are atomic (issue 6)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from car_attacks.cli import main
from car_attacks.evaluation.records import (
    AttackRecord,
    CleanRecord,
    ErrorRecord,
    Manifest,
    UnitRecord,
)
from car_attacks.evaluation.storage import RunDirError, RunStore, atomic_write_text, unit_key


def _rec(method: str, batch: int, eps: float | None = None) -> UnitRecord:
    indices = [2 * batch, 2 * batch + 1]
    if method == "clean":
        return CleanRecord(
            batch=batch,
            indices=indices,
            labels=[0, 1],
            pred=[0, 0],
            correct=[True, False],
            time_s=0.0,
        )
    norms = [[0.5, 0.25]]
    return AttackRecord(
        method=method,
        attack=method.split("/")[0],
        variant="car",
        batch=batch,
        eps=() if eps is None else (eps,),
        indices=indices,
        success=[[True, False]],
        l1=norms,
        l2=norms,
        linf=norms,
        queries=4,
        time_s=0.0,
        cpu_s=0.0,
    )


def _error(key: str, error: str) -> ErrorRecord:
    return ErrorRecord(
        key=key, method="a", batch=0, eps=(), error=error, traceback="", time="", rank=0
    )


def _lines(*recs: UnitRecord) -> bytes:
    return b"".join(json.dumps(r.to_json()).encode() + b"\n" for r in recs)


@pytest.mark.parametrize(
    "tail",
    [b'{"method": "a", "bat', b'{"method": "a"}\n', b"\x00" * 64, b'{"method": "a", "batch": 9'],
    ids=["cut-short", "not-a-record", "nul-bytes", "no-newline"],
)
def test_kill_leftovers_are_dropped(tmp_path: Path, tail: bytes) -> None:
    store = RunStore(tmp_path)
    store.results_dir.mkdir(parents=True)
    good = _lines(_rec("a", 0, 1.0), _rec("a", 1, 1.0))
    (store.results_dir / "a.jsonl").write_bytes(good + tail)
    assert len(store.records()) == 2  # readable before the repair, too
    assert store.repair() == 1
    assert (store.results_dir / "a.jsonl").read_bytes() == good
    assert store.repair() == 0
    store.append(_rec("a", 2, 1.0))
    assert sorted(r.batch for r in store.records()) == [0, 1, 2]


def test_damage_before_the_end_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.results_dir.mkdir(parents=True)
    path = store.results_dir / "a.jsonl"
    data = _lines(_rec("a", 0, 1.0)) + b"garbage\n" + _lines(_rec("a", 1, 1.0))
    path.write_bytes(data)
    with pytest.raises(RunDirError, match=r"a\.jsonl is damaged at line 2"):
        store.records()
    with pytest.raises(RunDirError, match="line 2"):
        store.repair()
    assert path.read_bytes() == data  # nothing truncated: finished work is never dropped


def test_report_of_a_damaged_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RunStore(tmp_path)
    store.results_dir.mkdir(parents=True)
    store.write_manifest(
        Manifest(
            format="car-attacks-run/1",
            config_name="x",
            config_hash="",
            created="",
            units_total=0,
            methods=[],
            environment={},
        )
    )
    atomic_write_text(
        tmp_path / "config.yaml",
        "model: {name: m}\ndata: {name: d}\n"
        "attacks: [{id: a, class: L2ClippingAwarePGD, norm: l2, eps: [1.0]}]\n",
    )
    (store.results_dir / "a.jsonl").write_bytes(b"{}\n" + _lines(_rec("a", 0, 1.0)))
    code = main(["report", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "damaged at line 1" in err[0]


def test_shards_merge_in_plan_order_without_loss(tmp_path: Path) -> None:
    r0, r1 = RunStore(tmp_path, shard=0), RunStore(tmp_path, shard=1)
    units = [_rec("clean", 0), _rec("clean", 1), _rec("a/car", 0, 0.5), _rec("a/car", 1, 0.5)]
    order = {unit_key(u.method, u.batch, u.eps): i for i, u in enumerate(units)}
    r1.append(units[3])
    r0.append(units[2])
    r1.append(units[1])
    r0.append(units[0])
    r0.append_error(_error("k0", "boom"))
    r1.append_error(_error("k1", "bang"))
    main_store = RunStore(tmp_path)
    assert len(main_store.records()) == 4
    assert {e.key for e in main_store.errors()} == {"k0", "k1"}
    assert main_store.merge_shards(order) == 6
    assert sorted(p.name for p in main_store.results_dir.iterdir()) == [
        "a__car.jsonl",
        "clean.jsonl",
    ]
    batches = [
        json.loads(line)["batch"]
        for line in (main_store.results_dir / "clean.jsonl").read_text().splitlines()
    ]
    assert batches == [0, 1]
    assert {e.key for e in main_store.errors()} == {"k0", "k1"}
    assert not list(tmp_path.glob("errors.rank*"))
    assert main_store.merge_shards(order) == 0


def test_merge_after_a_kill_between_writes_keeps_one_copy(tmp_path: Path) -> None:
    """A merged file written but the shard not yet removed: each unit is read once."""
    shard = RunStore(tmp_path, shard=1)
    shard.append(_rec("clean", 0))
    shard.append(_rec("clean", 1))
    main_store = RunStore(tmp_path)
    main_store.append(_rec("clean", 0))  # as if the merged file already held it
    assert len(main_store.records()) == 2
    main_store.merge_shards({})
    assert len((main_store.results_dir / "clean.jsonl").read_text().splitlines()) == 2


def test_atomic_write_leaves_old_file_or_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_stored_lines_round_trip_byte_for_byte(tmp_path: Path) -> None:
    """A line read back and merged is written exactly as it was (resume of old run dirs)."""
    line = (
        b'{"method":"a/car","attack":"a","variant":"car","batch":0,"eps":[0.5,1.0],'
        b'"indices":[0,1],"found":{"l1":[1.5,NaN],"l2":[0.5,Infinity],"linf":[0.1,0.2],'
        b'"adversarial":[true,false]},"success":[[true,false],[true,true]],'
        b'"l1":[[0.1,0.2],[0.3,0.4]],"l2":[[0.1,0.2],[0.3,0.4]],'
        b'"linf":[[0.1,0.2],[0.3,0.4]],"queries":12,"time_s":0.25,"cpu_s":0.5}\n'
        b'{"method":"clean","attack":"clean","variant":"clean","batch":0,"eps":[],'
        b'"indices":[0,1],"labels":[3,4],"pred":[3,5],"correct":[true,false],"time_s":0.01,'
        b'"lipschitz":2.5,"input_size":784,"radius":[0.125,0.0]}\n'
    )
    shard = RunStore(tmp_path, shard=0)
    shard.results_dir.mkdir(parents=True)
    first, second = line.splitlines(keepends=True)
    shard.path_for("a/car").write_bytes(first)
    shard.path_for("clean").write_bytes(second)
    store = RunStore(tmp_path)
    assert store.merge_shards({}) == 2
    assert store.path_for("a/car").read_bytes() == first
    assert store.path_for("clean").read_bytes() == second
