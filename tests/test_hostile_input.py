"""Hostile and broken input: malformed configs, unusable weights files and data folders.

Every case must fail with one line ``car-attacks: error: <reason>`` (no traceback), exit
code 2 (usage or config error) or 1 (runtime failure, see ``car_attacks.cli``), and leave
nothing behind that looks like a finished result. Most cases run ``cli.main``
in-process; a few run ``python -m car_attacks`` to check the real exit codes.
"""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_evaluation import register_tiny
from torch import nn

from car_attacks import cli, models

NOISE = {
    "id": "noise",
    "class": "L2ClippingAwareAdditiveGaussianNoiseAttack",
    "norm": "l2",
    "eps": [1.0],
}
PEER = {
    "id": "fb_noise",
    "library": "foolbox",
    "class": "L2AdditiveGaussianNoiseAttack",
    "compare_with": "noise",
}


def base_raw(**changes: Any) -> dict[str, Any]:
    """A tiny valid config: the ``tiny_test`` model, 2 samples, one noise attack, one peer."""
    raw: dict[str, Any] = {
        "model": {"name": "tiny_test"},
        "data": {"name": "tiny_data", "n": 2, "batch_size": 2},
        "rescalings": ["car"],
        "attacks": [dict(NOISE)],
        "peers": [dict(PEER)],
    }
    raw.update(changes)
    return json.loads(json.dumps(raw))


class _Payload:
    """Unpickling this opens ``marker`` for writing, i.e. creates the file: code that runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return open, (str(self.marker), "w")


def _rgb_model(name: str, size: int, classes: int) -> models.ModelSpec:
    """A small model for ``size`` x ``size`` RGB images: pool to 2x2, then a linear layer."""

    def architecture() -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, classes))

    def weights() -> dict[str, torch.Tensor]:
        return architecture().state_dict()

    return models.ModelSpec(
        name=name,
        description="test model",
        num_classes=classes,
        input_shape=(3, size, size),
        bounds=(0.0, 1.0),
        offline=True,
        architecture=architecture,
        fetch_weights=weights,
    )


@pytest.fixture(scope="module", autouse=True)
def _models() -> Iterator[None]:
    """``tiny_test`` / ``tiny_data``, and models for CIFAR-10 and ImageNet-sized images."""
    register_tiny()
    specs = [_rgb_model("hostile32", 32, 10), _rgb_model("hostile224", 224, 1000)]
    for spec in specs:
        models.register_model(spec, replace=True)
    yield
    for spec in specs:
        models.MODELS.pop(spec.name, None)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def error_line(err: str) -> str:
    """The single line on stderr, which must be ``car-attacks: error: ...``."""
    assert "Traceback" not in err, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("car-attacks: error: "), err
    return lines[0]


def assert_nothing_finished(out: Path) -> None:
    """No report, no stored results, and no manifest that says the run is complete."""
    assert not list(out.glob("report.*")), sorted(p.name for p in out.iterdir())
    assert not list(out.glob("results/**/*.jsonl"))
    manifest = out / "manifest.json"
    if manifest.exists():
        assert json.loads(manifest.read_text()).get("status") != "complete"


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(["validate", str(path)])
    return rc, capsys.readouterr().err


def run(
    tmp_path: Path, raw: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, Path]:
    """``car-attacks run`` in-process; returns the exit code, stderr and --out folder."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", raw)
    rc = cli.main(["run", str(config), "--out", str(out), "--no-progress", "-q"])
    return rc, capsys.readouterr().err, out


def cli_subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "car_attacks", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_the_base_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = validate(write_config(tmp_path / "c.yaml", base_raw()), capsys)
    assert rc == 0


# --------------------------------------------------------------------------- malformed YAML

_VALID = yaml.safe_dump(base_raw(), sort_keys=False)

MALFORMED: dict[str, tuple[bytes, str]] = {
    "syntax error": (b"model: {name: tiny_test\n", "invalid YAML (line 2, column 1)"),
    "tab indentation": (b"model:\n\tname: tiny_test\n", "found character '\\t'"),
    "list at top level": (b"- model\n- data\n", "config: expected a mapping, got list"),
    "scalar at top level": (b"just a string\n", "config: expected a mapping, got str"),
    "empty file": (b"", "the config file is empty"),
    "only comments": (b"  \n# nothing here\n", "the config file is empty"),
    "binary garbage": (bytes(range(255, 0, -1)) * 4, "not a UTF-8 text file"),
    "NUL byte": (_VALID.encode() + b"name: a\x00b\n", "invalid YAML"),
    "duplicate key": (_VALID.encode() + b"seed: 1\nseed: 2\n", "duplicate key 'seed'"),
    "nested too deeply": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_yaml(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, expected = MALFORMED[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    rc, err = validate(path, capsys)
    assert rc == 2
    assert expected in error_line(err)


@pytest.mark.parametrize("where", ["top level", "a value"])
def test_python_tags_are_refused_unrun(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    tag = f"!!python/object/apply:builtins.open [{str(marker)!r}, w]"
    config = tmp_path / "c.yaml"
    config.write_text(f"{tag}\n" if where == "top level" else _VALID.replace("tiny_test", tag))
    out = tmp_path / "out"
    rc = cli.main(["run", str(config), "--out", str(out), "--no-progress", "-q"])
    assert rc == 2
    line = error_line(capsys.readouterr().err)
    assert "could not determine a constructor for the tag" in line
    assert not marker.exists()
    assert not out.exists()


def _with_params(flow: str) -> str:
    """The base config's YAML with ``attacks[0].params`` set to the flow-style ``flow``."""
    text = yaml.safe_dump(base_raw(attacks=[{**NOISE, "params": "PARAMS"}]), sort_keys=False)
    assert text.count("PARAMS") == 1
    return text.replace("PARAMS", flow)


def test_alias_bombs_in_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recursive alias, and 10**9 values through nested aliases, are refused quickly."""
    path = tmp_path / "c.yaml"
    path.write_text(_with_params("{a: &x [*x]}"))
    rc, err = validate(path, capsys)
    assert rc == 2 and "nested more than 32 levels deep" in error_line(err)

    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)
    ]
    path.write_text(_with_params("{" + ", ".join(levels) + "}"))
    rc, err = validate(path, capsys)
    assert rc == 2 and "more than 100000 values" in error_line(err)


# --------------------------------------------------------------------------- keys and values


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a config: set the value at a dotted path (``attacks.0.eps``)."""

    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _duplicate_attack(raw: dict[str, Any]) -> None:
    raw["attacks"].append(dict(raw["attacks"][0], eps=[2.0]))


BAD_VALUES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    # unknown keys at every level
    "unknown top-level key": (_set("modle", {}), "modle: unknown key (allowed keys: model,"),
    "unknown model key": (_set("model.weigths", "w.pt"), "model.weigths: unknown key"),
    "unknown data key": (_set("data.nn", 3), "data.nn: unknown key"),
    "unknown attack key": (_set("attacks.0.parmas", {}), "attacks[0].parmas: unknown key"),
    "unknown peer key": (_set("peers.0.compare", "noise"), "peers[0].compare: unknown key"),
    # wrong types
    "string for n": (_set("data.n", "2"), "data.n: expected int, got str '2'"),
    "float for n": (_set("data.n", 2.0), "data.n: expected int, got float 2.0"),
    "bool for n": (_set("data.n", True), "data.n: expected int, got bool True"),
    "list for seed": (_set("seed", [1]), "seed: expected int, got list [1]"),
    "null for seed": (_set("seed", None), "seed: expected int, got null"),
    "bool for eps": (_set("attacks.0.eps", [True]), "attacks[0].eps[0]: expected a number"),
    "scalar eps": (_set("attacks.0.eps", 1.0), "attacks[0].eps: expected a non-empty list"),
    "string for model": (_set("model", "tiny_test"), "model: expected a mapping, got str"),
    "int for norm": (_set("attacks.0.norm", 2), "attacks[0].norm: expected str, got int 2"),
    "mapping for peers": (_set("peers", {"a": 1}), "peers: expected a list, got mapping"),
    "string for download": (_set("data.download", "yes"), "data.download: expected bool"),
    "list for params": (_set("attacks.0.params", [1]), "attacks[0].params: expected a mapping"),
    "int key in params": (
        _set("attacks.0.params", {"a": {1: 2}}),
        "attacks[0].params.a: keys must be strings",
    ),
    # out of range
    "negative n": (_set("data.n", -1), "data.n: must be >= 1, got -1"),
    "zero n": (_set("data.n", 0), "data.n: must be >= 1, got 0"),
    "negative batch_size": (_set("data.batch_size", -3), "data.batch_size: must be >= 1"),
    "negative start": (_set("data.start", -1), "data.start: must be >= 0"),
    "negative seed": (_set("seed", -1), "seed: must be >= 0"),
    "huge seed": (_set("seed", 2**80), "seed: must be <= 4294967295"),
    "zero eps": (_set("attacks.0.eps", [0]), "attacks[0].eps[0]: eps must be finite and > 0"),
    "negative eps": (_set("attacks.0.eps", ["-8/255"]), "eps must be finite and > 0"),
    "NaN eps": (_set("attacks.0.eps", [float("nan")]), "eps must be finite and > 0, got nan"),
    "infinite eps": (_set("attacks.0.eps", [float("inf")]), "eps must be finite and > 0"),
    "eps 1/0": (_set("attacks.0.eps", ["1/0"]), "expected a number or a fraction like '8/255'"),
    "eps 'nan'": (_set("attacks.0.eps", ["nan"]), "expected a number or a fraction"),
    # unknown names and duplicates
    "unknown norm": (_set("attacks.0.norm", "l3"), "attacks[0].norm: unknown norm 'l3'"),
    "unknown rescaling": (_set("rescalings", ["exact"]), "rescalings[0]: unknown rescaling"),
    "unknown attack rescaling": (
        _set("attacks.0.rescalings", ["car", "clip"]),
        "attacks[0].rescalings[1]: unknown rescaling 'clip'",
    ),
    "unknown init": (_set("attacks.0.init", "zeros"), "attacks[0].init: unknown init"),
    "unknown peer library": (_set("peers.0.library", "art"), "peers[0].library: unknown peer"),
    "unknown model": (_set("model.name", "resnet9000"), "model.name: unknown model"),
    "unknown data set": (_set("data.name", "mnist2"), "data.name: unknown data set"),
    "unknown split": (_set("data.split", "dev"), "data.split: data set 'tiny_data' has no split"),
    "unknown device": (_set("device", "gpu"), "device: not a torch device: 'gpu'"),
    "duplicate attack id": (_duplicate_attack, "attacks[1].id: duplicate id 'noise'"),
    "peer id of an attack": (_set("peers.0.id", "noise"), "peers[0].id: duplicate id 'noise'"),
    "reserved id": (_set("peers.0.id", "clean"), "the id 'clean' is reserved"),
    "bad id": (_set("attacks.0.id", "../x"), "attacks[0].id: ids may use letters"),
    "bad name": (_set("name", "a/b"), "name: names may use letters"),
    "peer of no attack": (_set("peers.0.compare_with", "pgd"), "no attack with id 'pgd'"),
    "empty weights path": (_set("model.weights", ""), "model.weights: must not be empty"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_keys_and_values(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change, expected = BAD_VALUES[case]
    raw = base_raw()
    change(raw)
    rc, err = validate(write_config(tmp_path / "c.yaml", raw), capsys)
    assert rc == 2
    assert expected in error_line(err)


def test_run_refuses_a_bad_config_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err, out = run(tmp_path, base_raw(seed=[0]), capsys)
    assert rc == 2 and "seed: expected int" in error_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------- weights files


def _tiny_state() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.zeros(10, 48), "fc.bias": torch.zeros(10)}


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)

    return make


def _save(obj: Callable[[], Any]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        torch.save(obj(), path)

    return make


def _truncated_checkpoint(path: Path) -> None:
    torch.save(_tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_WEIGHTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "random bytes": (
        _write_bytes(bytes(range(255, 0, -3)) * 40),
        "is not a torch checkpoint (expected a file written by torch.save)",
    ),
    "text": (_write_bytes(b"hello, I am weights\n"), "is not a torch checkpoint"),
    "empty": (_write_bytes(b""), "is empty, not a torch checkpoint"),
    "truncated": (_truncated_checkpoint, "weights_only load failed (PytorchStreamReader"),
    "a tensor": (_save(lambda: torch.zeros(3)), "is not a state dict: it holds a Tensor"),
    "a list": (_save(lambda: [torch.zeros(3)]), "is not a state dict: it holds a list"),
    "an empty dict": (_save(dict), "is not a state dict of tensors (found it is empty)"),
    "a dict of numbers": (_save(lambda: {"fc.weight": 1}), "(found 'fc.weight': int)"),
    "wrong keys": (
        _save(lambda: {"conv.weight": torch.zeros(3)}),
        "does not match TinyNet: missing: fc.weight, fc.bias; unexpected: conv.weight",
    ),
    "wrong shapes": (
        _save(lambda: {"fc.weight": torch.zeros(10, 3), "fc.bias": torch.zeros(10)}),
        "does not match TinyNet: shape: fc.weight (10, 3) vs (10, 48)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_unusable_weights_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD_WEIGHTS[case]
    weights = tmp_path / "w.pt"
    make(weights)
    raw = base_raw(model={"name": "tiny_test", "weights": str(weights)})
    rc, err, out = run(tmp_path, raw, capsys)
    assert rc == 1
    line = error_line(err)
    assert line.startswith("car-attacks: error: cannot load model 'tiny_test': ")
    assert str(weights) in line and expected in line
    assert_nothing_finished(out)


def test_missing_weights_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.pt"
    rc, err, out = run(
        tmp_path, base_raw(model={"name": "tiny_test", "weights": str(missing)}), capsys
    )
    assert rc == 2
    assert error_line(err).endswith(f"model.weights: weights file not found: {missing}")
    assert not out.exists()
    # a folder is not a weights file either
    rc, err, out = run(
        tmp_path, base_raw(model={"name": "tiny_test", "weights": str(tmp_path)}), capsys
    )
    assert rc == 2 and "model.weights: weights file not found" in error_line(err)


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in a state dict"])
def test_pickled_code_in_weights_is_refused_unrun(
    wrapped: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    weights = tmp_path / "evil.pt"
    payload = _Payload(marker)
    torch.save({**_tiny_state(), "payload": payload} if wrapped else payload, weights)
    rc, err, out = run(
        tmp_path, base_raw(model={"name": "tiny_test", "weights": str(weights)}), capsys
    )
    assert rc == 1
    line = error_line(err)
    assert f"refusing to load {weights}: weights_only load failed" in line
    assert "it holds pickled code or objects (GLOBAL " in line
    assert "weights_only=True never runs" in line
    assert not marker.exists()
    assert_nothing_finished(out)
    # the payload is real: an unsafe load runs it
    torch.load(weights, weights_only=False)
    assert marker.exists()


def test_plain_pickle_weights_are_refused_quietly(tmp_path: Path) -> None:
    """A ``pickle.dump`` (not ``torch.save``) of code: one error, no torch warning, not run."""
    marker = tmp_path / "marker"
    weights = tmp_path / "evil.pkl"
    weights.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="weights_only load failed") as info:
            models.load_model("tiny_test", weights=str(weights))
    assert [str(w.message) for w in caught] == []
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_subprocess_pickled_code_exits_1(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    weights = tmp_path / "evil.pt"
    torch.save(_Payload(marker), weights)
    raw = base_raw(
        model={"name": "fashion_mnist_cnn", "weights": str(weights)},
        data={"name": "foolbox_fashion_mnist", "n": 2, "batch_size": 2},
        peers=[],
    )
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    r = cli_subprocess("run", str(config), "--out", str(out), "--no-progress", "-q", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "weights_only load failed: it holds pickled code" in error_line(r.stderr)
    assert r.stdout == ""
    assert not marker.exists()
    assert_nothing_finished(out)


# --------------------------------------------------------------------------- data folders


def _idx(dims: tuple[int, ...], payload: bytes) -> bytes:
    """An unsigned-byte IDX file with header ``dims`` followed by ``payload``."""
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _fashion(images: bytes, labels: bytes, suffix: str = "") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        root.mkdir()
        (root / f"t10k-images-idx3-ubyte{suffix}").write_bytes(images)
        (root / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(labels)

    return make


def _cifar(batch: Any, *, raw: bytes | None = None) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        (folder / "test_batch").write_bytes(raw if raw is not None else pickle.dumps(batch))

    return make


def _image_folder(files: dict[str, bytes | None]) -> Callable[[Path], None]:
    """``files``: relative path -> bytes, or ``None`` for a valid 300x300 PNG."""

    def make(root: Path) -> None:
        root.mkdir()
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                Image.new("RGB", (300, 300), (120, 30, 200)).save(path)
            else:
                path.write_bytes(data)

    return make


def _nothing(root: Path) -> None:
    """No data root at all."""


def _empty(root: Path) -> None:
    root.mkdir()


def _a_file(root: Path) -> None:
    root.write_text("not a folder\n")


def _png_head() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()[:120]


_FM_IMAGES = _idx((2, 28, 28), bytes(i * 7 % 256 for i in range(2 * 28 * 28)))
_FM_LABELS = _idx((2,), bytes([3, 4]))

# data set, model, how to make the root, expected part of the error
BAD_DATA: dict[str, tuple[str, str, Callable[[Path], None], str]] = {
    "fashion: missing root": ("fashion_mnist", "fashion_mnist_cnn", _nothing, "does not exist"),
    "fashion: empty root": ("fashion_mnist", "fashion_mnist_cnn", _empty, "no t10k-images-idx3"),
    "fashion: root is a file": ("fashion_mnist", "fashion_mnist_cnn", _a_file, "is not a folder"),
    "fashion: not IDX": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(b"garbage garbage", b"garbage"),
        "t10k-images-idx3-ubyte is not an unsigned-byte IDX file",
    ),
    "fashion: cut header": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES[:8], _FM_LABELS),
        "is truncated: incomplete IDX header",
    ),
    "fashion: cut images": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES[:-100], _FM_LABELS),
        "t10k-images-idx3-ubyte is truncated",
    ),
    "fashion: not gzip": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES, _FM_LABELS, ".gz"),
        "t10k-images-idx3-ubyte.gz cannot be read: Not a gzipped file",
    ),
    "fashion: cut gzip": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(gzip.compress(_FM_IMAGES)[:-200], gzip.compress(_FM_LABELS), ".gz"),
        "t10k-images-idx3-ubyte.gz cannot be read",
    ),
    "fashion: labels of images": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES, _FM_IMAGES),
        "t10k-labels-idx1-ubyte holds 3-dimensional IDX data, expected 1",
    ),
    "fashion: count mismatch": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES, _idx((3,), bytes(3))),
        "has 2 images but",
    ),
    "fashion: wrong image size": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_idx((2, 5, 5), bytes(50)), _FM_LABELS),
        "files give images of shape (1, 5, 5), expected (1, 28, 28)",
    ),
    "fashion: label out of range": (
        "fashion_mnist",
        "fashion_mnist_cnn",
        _fashion(_FM_IMAGES, _idx((2,), bytes([3, 255]))),
        "label 255 is not a class index 0..9",
    ),
    "cifar: missing root": ("cifar10", "hostile32", _nothing, "does not exist"),
    "cifar: empty root": ("cifar10", "hostile32", _empty, "cifar-10-batches-py not found or empty"),
    "cifar: root is a file": ("cifar10", "hostile32", _a_file, "is not a folder"),
    "cifar: garbage batch": (
        "cifar10",
        "hostile32",
        _cifar(None, raw=b"garbage"),
        "test_batch is not a CIFAR-10 batch file",
    ),
    "cifar: not a dict": (
        "cifar10",
        "hostile32",
        _cifar([1, 2]),
        "test_batch is not a CIFAR-10 batch file: expected a dict with keys 'data' and 'labels'",
    ),
    "cifar: no labels": (
        "cifar10",
        "hostile32",
        _cifar({"data": np.zeros((2, 3072), np.uint8)}),
        "expected a dict with keys 'data' and 'labels'",
    ),
    "cifar: wrong image size": (
        "cifar10",
        "hostile32",
        _cifar({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}),
        "cannot reshape array",
    ),
    "cifar: label out of range": (
        "cifar10",
        "hostile32",
        _cifar({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 99]}),
        "label 99 is not a class index 0..9",
    ),
    "cifar: too few samples": (
        "cifar10",
        "hostile32",
        _cifar({"data": np.zeros((1, 3072), np.uint8), "labels": [1]}),
        "has only 1 samples in split test, asked for n=2",
    ),
    "imagenet: missing root": ("imagenet_folder", "hostile224", _nothing, "does not exist"),
    "imagenet: empty root": (
        "imagenet_folder",
        "hostile224",
        _empty,
        "holds no images in class sub-folders",
    ),
    "imagenet: root is a file": ("imagenet_folder", "hostile224", _a_file, "is not a folder"),
    "imagenet: no class folders": (
        "imagenet_folder",
        "hostile224",
        _image_folder({"a.png": None, "b.png": None}),
        "holds no images in class sub-folders",
    ),
    "imagenet: no images": (
        "imagenet_folder",
        "hostile224",
        _image_folder({"n01/readme.txt": b"x", "n02/notes.md": b"y"}),
        "holds no images in class sub-folders",
    ),
    "imagenet: not an image": (
        "imagenet_folder",
        "hostile224",
        _image_folder({"n01/a.jpg": b"not a jpeg", "n01/b.png": None}),
        "n01/a.jpg is not a readable image",
    ),
    "imagenet: truncated image": (
        "imagenet_folder",
        "hostile224",
        _image_folder({"n01/a.png": _png_head(), "n01/b.png": None}),
        "n01/a.png is not a readable image",
    ),
    "imagenet: too few images": (
        "imagenet_folder",
        "hostile224",
        _image_folder({"n01/a.png": None}),
        "has only 1 samples in split test, asked for n=2",
    ),
    "foolbox: empty root": (
        "foolbox_cifar10",
        "hostile32",
        _empty,
        "no cifar10_<index>_<label>.png/jpg sample files",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_unusable_data_root(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset, model, make, expected = BAD_DATA[case]
    root = tmp_path / "data"
    make(root)
    raw = base_raw(
        model={"name": model},
        data={"name": dataset, "n": 2, "batch_size": 2, "root": str(root)},
        peers=[],
    )
    rc, err, out = run(tmp_path, raw, capsys)
    assert rc == 1, err
    line = error_line(err)
    assert line.startswith(f"car-attacks: error: cannot load data set '{dataset}': ")
    assert expected in line
    assert_nothing_finished(out)


def test_image_bomb_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PIL's decompression-bomb limit (lowered here) is one line, not a traceback."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = tmp_path / "data"
    _image_folder({"n01/a.png": None, "n01/b.png": None})(root)
    raw = base_raw(
        model={"name": "hostile224"},
        data={"name": "imagenet_folder", "n": 2, "batch_size": 2, "root": str(root)},
        peers=[],
    )
    rc, err, out = run(tmp_path, raw, capsys)
    assert rc == 1
    assert "n01/a.png is not a readable image: Image size" in error_line(err)
    assert_nothing_finished(out)


def test_cifar_batch_with_pickled_code_is_refused_unrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    root = tmp_path / "data"
    _cifar({"data": _Payload(marker), "labels": [1, 2]})(root)
    raw = base_raw(
        model={"name": "hostile32"},
        data={"name": "cifar10", "n": 2, "batch_size": 2, "root": str(root)},
        peers=[],
    )
    rc, err, out = run(tmp_path, raw, capsys)
    assert rc == 1
    assert "is not a CIFAR-10 batch file: refusing to load global" in error_line(err)
    assert not marker.exists()
    assert_nothing_finished(out)


def test_subprocess_missing_data_root_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "no_such_folder"
    raw = base_raw(
        model={"name": "fashion_mnist_cnn"},
        data={"name": "fashion_mnist", "n": 2, "batch_size": 2, "root": str(root)},
        peers=[],
    )
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    r = cli_subprocess("run", str(config), "--out", str(out), "--no-progress", "-q", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = error_line(r.stderr)
    assert line == (
        f"car-attacks: error: cannot load data set 'fashion_mnist': {root} does not exist "
        "(expected a folder with IDX files)"
    )
    assert_nothing_finished(out)


def test_subprocess_config_errors_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(255, 0, -1)))
    r = cli_subprocess("validate", str(garbage), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert error_line(r.stderr) == (
        f"car-attacks: error: {garbage}: not a UTF-8 text file (byte 0); "
        "a config is a YAML text file"
    )
    raw = base_raw(
        model={"name": "fashion_mnist_cnn"},
        data={"name": "foolbox_fashion_mnist", "n": 2, "batch_size": 2},
        peers=[],
        seed=2**40,
    )
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    r = cli_subprocess("run", str(config), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert error_line(r.stderr).endswith("seed: must be <= 4294967295, got 1099511627776")
    assert not out.exists()


def test_no_run_directory_when_model_or_data_fails_to_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    rc, err, out = run(
        tmp_path, base_raw(model={"name": "tiny_test", "weights": str(junk)}), capsys
    )
    assert rc == 1 and "cannot load model" in error_line(err)
    assert not out.exists()
    raw = base_raw(
        model={"name": "fashion_mnist_cnn"},
        data={"name": "fashion_mnist", "root": str(tmp_path / "nothing")},
        peers=[],
    )
    rc, err, out = run(tmp_path, raw, capsys)
    assert rc == 1 and "cannot load data set" in error_line(err)
    assert not out.exists()
