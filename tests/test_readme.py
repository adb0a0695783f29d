"""The README's code runs as written, and its quick-start commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from attack_fixtures import cifar_batch, small_convnet

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _block_containing(text: str) -> str:
    return next(b for b in _python_blocks() if text in b)


def test_maths_example_runs_and_is_exact() -> None:
    scope: dict[str, object] = {}
    exec(_block_containing("clipping_aware_rescaling(x, delta"), scope)
    x, delta = scope["x"], scope["delta"]
    x_adv = scope["x_adv"]
    assert isinstance(x, torch.Tensor) and isinstance(x_adv, torch.Tensor)
    assert isinstance(delta, torch.Tensor)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.5), rtol=1e-5, atol=0)
    v = scope["v"]
    assert isinstance(v, torch.Tensor)
    assert ((v - x).flatten(1).norm(p=1, dim=1) <= 0.5 * (1 + 1e-5)).all()


def test_subclassing_example_runs() -> None:
    scope: dict[str, object] = {}
    exec(_block_containing("class DenseL1PGD"), scope)
    cls = scope["DenseL1PGD"]
    model = small_convnet((0.0, 1.0))
    x, y = cifar_batch(model, 4)
    raw, clipped, success = cls(steps=2)(model, x, y, epsilons=[5.0])  # type: ignore[operator]
    assert raw[0].shape == x.shape and success.shape == (1, 4)
    assert ((clipped[0] - x).flatten(1).norm(p=1, dim=1) <= 5.0 * (1 + 1e-4)).all()


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        block = text.split(marker, 1)[1].split("```", 2)[1]
        assert block.startswith("bash\npip install"), block
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
