"""The ``car-attacks`` command line: help, errors and exit codes, run / report / list / bench."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_evaluation import register_tiny, tiny_raw

from car_attacks import cli
from car_attacks.evaluation import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _tiny() -> None:
    register_tiny()


def small_raw(**changes: Any) -> dict[str, Any]:
    """A tiny config that runs in about a second: one noise attack, 4 samples."""
    changes.setdefault("data", {"name": "tiny_data", "n": 4, "batch_size": 4})
    return tiny_raw(attacks=[tiny_raw()["attacks"][1]], peers=[], **changes)


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def one_line_error(err: str) -> str:
    """The single error line (progress and info lines may precede it on stderr)."""
    lines = err.strip("\n").split("\n")
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith("car-attacks: error: "), err
    assert "Traceback" not in err
    return errors[0]


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("sub", ["", "run", "report", "list", "validate", "bench"])
def test_help_everywhere(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([sub, "--help"] if sub else ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: car-attacks {sub}".rstrip()), out[:200]
    if not sub:
        for name in ("run", "report", "bench", "list"):
            assert f"    {name}" in out


def test_console_script_and_module(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "car-attacks"
    if not script.exists():
        script_path = shutil.which("car-attacks")
        assert script_path, "console script car-attacks missing: run `pip install -e .`"
        script = Path(script_path)
    r = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 0 and r.stdout.startswith("usage: car-attacks"), r.stderr
    # python -m car_attacks: a bad config is one line on stderr and exit code 2
    raw = small_raw()
    raw["attacks"][0]["parmas"] = {}
    bad = write(tmp_path / "bad.yaml", raw)
    r = subprocess.run(
        [sys.executable, "-m", "car_attacks", "run", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    line = one_line_error(r.stderr)
    assert "attacks[0].parmas: unknown key" in line
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--outt", "x"])
    assert info.value.code == 2
    assert "car-attacks: error: unrecognized arguments: --outt" in capsys.readouterr().err


# --------------------------------------------------------------------------- config errors


def _run_error(
    tmp_path: Path, raw: dict[str, Any] | None, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    args = ["run"]
    if raw is not None:
        args.append(str(write(tmp_path / "c.yaml", raw)))
    rc = cli.main([*args, *extra, "--out", str(tmp_path / "out"), "--no-progress"])
    return rc, capsys.readouterr().err


def test_bad_configs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = small_raw()
    raw["data"]["n"] = "four"
    rc, err = _run_error(tmp_path, raw, capsys)
    assert rc == 2
    assert one_line_error(err) == "car-attacks: error: data.n: expected int, got str 'four'"

    rc, err = _run_error(tmp_path, small_raw(model={"name": "cifar10_resnet99"}), capsys)
    assert rc == 2 and "model.name: unknown model 'cifar10_resnet99'" in one_line_error(err)

    rc, err = _run_error(tmp_path, small_raw(data={"name": "cifar11"}), capsys)
    assert rc == 2 and "data.name: unknown data set 'cifar11'" in one_line_error(err)

    missing = tmp_path / "missing.pt"
    rc, err = _run_error(
        tmp_path, small_raw(model={"name": "tiny_test", "weights": str(missing)}), capsys
    )
    assert rc == 2
    assert one_line_error(err).endswith(f"model.weights: weights file not found: {missing}")

    raw = small_raw()
    raw["attacks"][0]["class"] = "L2NoSuchAttack"
    rc, err = _run_error(tmp_path, raw, capsys)
    assert rc == 2 and "attacks[0].class: unknown attack class 'L2NoSuchAttack'" in err

    rc = cli.main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "config file not found" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_unusable_weights_file_is_a_runtime_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    rc, err = _run_error(
        tmp_path, small_raw(model={"name": "tiny_test", "weights": str(junk)}), capsys
    )
    assert rc == 1
    line = one_line_error(err)
    assert "cannot load model 'tiny_test'" in line


# --------------------------------------------------------------------------- run, report


def test_run_report_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "small.yaml", small_raw())
    out = tmp_path / "run"
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"report: {out / 'report.html'}" in captured.out
    assert "Clean accuracy of tiny_test" in captured.out
    assert "units: 7 run, 0 already done, 0 failed, of 7" in captured.out

    # rerun: everything is already done
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "units: 0 run, 7 already done" in capsys.readouterr().out
    report = (out / "report.json").read_bytes()

    # report DIR rebuilds the identical report.json
    (out / "report.json").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.json").read_bytes() == report

    # another config into the same directory is refused
    other = write(tmp_path / "other.yaml", small_raw(seed=99))
    assert cli.main(["run", str(other), "--out", str(out), "--no-progress"]) == 2
    assert "holds a run of a different config" in one_line_error(capsys.readouterr().err)

    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a car-attacks run directory" in one_line_error(capsys.readouterr().err)
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in one_line_error(capsys.readouterr().err)


def test_default_out_dir_is_under_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "small.yaml", small_raw(name="smallrun"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(cfg), "-q"]) == 0
    assert capsys.readouterr().out == ""
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("smallrun-") and (run / "report.html").is_file()


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(["validate", "cifar10_resnet18", str(ROOT / "configs" / "imagenet_folder.yaml")])
        == 0
    )
    out = capsys.readouterr().out
    assert "cifar10_resnet18.yaml: ok" in out and "imagenet_folder.yaml: ok" in out
    raw = small_raw()
    raw["seed"] = "zero"
    assert cli.main(["validate", str(write(tmp_path / "c.yaml", raw))]) == 2
    assert "seed: expected int" in capsys.readouterr().err


def test_set_overrides_config_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "small.yaml", small_raw())
    out = tmp_path / "run"
    args = ["--set", "data.n=2", "--set", "data.batch_size=2", "--set", "seed=7"]
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress", *args]) == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["data"]["n"] == 2 and stored["seed"] == 7
    assert "# --set seed=7" in (out / "config.source.yaml").read_text()
    assert json.loads((out / "report.json").read_text())["clean"]["evaluated"] == 2
    capsys.readouterr()
    # the same overrides resume the same run; without them it is another config
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress", *args]) == 0
    assert "0 run, 7 already done" in capsys.readouterr().out
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
    capsys.readouterr()
    for bad, message in (
        ("data.n", "expected KEY=VALUE"),
        ("attacks.5.eps=1", "attacks.5: no item '5'"),
        ("model.nme=x", "model.nme: unknown key"),
        ("data.n=[1", "invalid YAML value"),
        ("seed.x=1", "seed is a value"),
        ("data.n=-1", "data.n"),
    ):
        assert cli.main(["validate", str(cfg), "--set", bad]) == 2, bad
        assert message in one_line_error(capsys.readouterr().err), bad


def test_only_runs_the_named_attacks_and_their_peers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "tiny.yaml", tiny_raw())
    config, text = load_config(cfg, only=["pgd_linf"])
    assert [a.id for a in config.attacks] == ["pgd_linf"]
    assert [p.compare_with for p in config.peers] == ["pgd_linf", "pgd_linf"]
    assert "# --only pgd_linf" in text
    both, _ = load_config(cfg, only=["boundary", "noise_l2"])
    assert [a.id for a in both.attacks] == ["noise_l2", "boundary"]  # the config's order
    assert [p.id for p in both.peers] == ["fb_boundary"]
    out = tmp_path / "run"
    only = ["--only", "noise_l2", "--set", "data.n=2", "--set", "data.batch_size=2"]
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress", *only]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["id"] for a in report["attacks"]] == ["noise_l2"]
    capsys.readouterr()
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--only", "pgd"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "--only: no attack with id 'pgd' (attack ids: pgd_linf, noise_l2, boundary)" in err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- list, bench


def test_list_works_offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for title in ("Models", "Data sets", "Attacks", "Peers", "Configs"):
        assert f"\n{title}" in "\n" + out
    lines = out.splitlines()

    def line_of(name: str) -> str:
        return next(line for line in lines if line.strip().startswith(name + " "))

    assert "offline: yes" in line_of("cifar10_resnet18")
    assert "offline: yes" in line_of("foolbox_cifar10")
    assert "offline: no" in line_of("imagenet_folder")  # needs the user's files
    assert "LinfClippingAwarePGD" in out and "APGDAttack" in out
    assert "cifar10_resnet18 (default)" in out

    assert cli.main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    models = {m["name"]: m for m in data["models"]}
    assert models["cifar10_resnet18"]["available"] is True
    configs = {c["name"]: c for c in data["configs"]}
    assert configs["cifar10_resnet18"]["available"] is True
    assert configs["imagenet_folder"]["available"] is False
    assert {
        "name": "L2ClippingAwarePGD",
        "norm": "l2",
        "kind": "fixed",
        "source": "car_attacks",
    } in data["attacks"]


def test_bench_passes_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import car_attacks.benchmarks.rescaling_timing as bench

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(bench, "main", fake_main)
    assert cli.main(["bench", "--quick", "--ps", "2", "--out", "x.json"]) == 3
    assert seen == [["--quick", "--ps", "2", "--out", "x.json"]]


def test_module_entry_point_exists() -> None:
    main = ROOT / "car_attacks" / "__main__.py"
    assert main.is_file()
    assert os.path.islink(ROOT / "configs")


# --------------------------------------------------------------------------- interruptions


def _stored_units(out: Path) -> int:
    results = out / "results"
    if not results.is_dir():
        return 0
    return sum(
        1
        for p in results.glob("*.jsonl")
        for line in p.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    )


def _records(out: Path) -> dict[str, Any]:
    from car_attacks.evaluation import RunStore
    from car_attacks.evaluation.records import TIMING_KEYS

    return {
        f"{r['method']}|{r['batch']}|{r['eps']}": {
            k: v for k, v in r.items() if k not in TIMING_KEYS
        }
        for r in (stored.to_json() for stored in RunStore(out).records())
    }


def test_killed_run_resumes_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL a real `car-attacks run` half way; the rerun does only the rest."""
    import time

    cfg = write(tmp_path / "small.yaml", small_raw())
    out = tmp_path / "run"
    script = f"""
import sys, time
sys.path[:0] = [{str(ROOT / "tests")!r}, {str(ROOT)!r}]
from test_evaluation import register_tiny
register_tiny()
from car_attacks.evaluation import runner

class Slow(runner._Executor):
    def __call__(self, unit):
        record = super().__call__(unit)
        time.sleep(0.4)  # a unit of real work takes a while
        return record

runner._Executor = Slow
from car_attacks import cli
sys.exit(cli.main(["run", {str(cfg)!r}, "--out", {str(out)!r}, "--no-progress"]))
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while _stored_units(out) < 3:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    done = _stored_units(out)
    assert 3 <= done < 7
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"

    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert f"units: {7 - done} run, {done} already done, 0 failed, of 7" in capsys.readouterr().out
    reference = tmp_path / "reference"
    assert cli.main(["run", str(cfg), "--out", str(reference), "-q"]) == 0
    assert _records(out) == _records(reference)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_keyboard_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from car_attacks.evaluation import runner

    class Interrupted(runner._Executor):
        calls = 0

        def __call__(self, unit: Any) -> Any:
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(unit)

    monkeypatch.setattr(runner, "_Executor", Interrupted)
    cfg = write(tmp_path / "small.yaml", small_raw())
    out = tmp_path / "run"
    assert cli.main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 130
    line = one_line_error(capsys.readouterr().err)
    assert "interrupted; rerun the same command" in line
    assert _stored_units(out) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["units_done"] == 2
