"""Test-suite path setup and the fixtures for tests that need Debian packages.

* ``tests/`` itself, so that the helper module ``tests/oracles.py`` is importable
  as ``oracles``.
* The repository root, so that ``import car_attacks`` finds the source tree even
  when the editable install was made before ``car_attacks/__init__.py`` existed
  (it then resolves to an empty namespace package).
* :func:`missing_system_package`: skip a test whose Debian package is not installed, or fail
  it when :data:`REQUIRE_SYSTEM_PACKAGES` is set (``.ci/run`` sets it, so CI runs everything).
* :func:`import_optional`: import a module of an optional extra, or skip the test module
  (a failure under :data:`REQUIRE_SYSTEM_PACKAGES`: the README's test command installs
  the extras the tests use).
* The suite runs the eager solvers (``CAR_ATTACKS_COMPILE=0``) unless the environment
  sets that variable: the default ``auto`` would start compiling part-way through the
  suite, at a point that depends on which tests a worker ran before.
* :func:`small_fused`: the compiled (fused) rescaling kernels, also for tiny test shapes.
* :func:`fashion_mnist`: the first ``n`` Fashion-MNIST test images, from Debian's
  ``dataset-fashion-mnist`` when installed, else foolbox's 20 shipped samples (the same
  first 20 images); more than those 20 without the package is a missing system package.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn, Protocol

import pytest

if TYPE_CHECKING:
    from torch import Tensor

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _path in (_ROOT, _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from car_attacks.core.fused import COMPILE_ENV  # noqa: E402 (after the path setup)

os.environ.setdefault(COMPILE_ENV, "0")

REQUIRE_SYSTEM_PACKAGES = "CAR_ATTACKS_REQUIRE_SYSTEM_PACKAGES"
"""When this environment variable is non-empty, a missing Debian package fails its tests."""


def _missing(reason: str, package: str) -> NoReturn:
    message = f"{reason}: apt-get install -y {package}"
    if os.environ.get(REQUIRE_SYSTEM_PACKAGES):
        pytest.fail(f"{message} ({REQUIRE_SYSTEM_PACKAGES} is set: this test must run)")
    pytest.skip(message)


def import_optional(module: str, extra: str, requirement: str) -> ModuleType:
    """``module``, or skip the calling test module because the optional extra ``extra``
    (``requirement``) is not installed; under :data:`REQUIRE_SYSTEM_PACKAGES` a failure."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        message = (
            f"needs the optional extra {extra!r} ({requirement}): "
            f'pip install --no-build-isolation -e ".[{extra}]" ({error})'
        )
        if os.environ.get(REQUIRE_SYSTEM_PACKAGES):
            pytest.fail(f"{message} ({REQUIRE_SYSTEM_PACKAGES} is set: this test must run)")
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def missing_system_package() -> Callable[[str, str], NoReturn]:
    """``missing(reason, package)``: skip the test because the Debian package ``package`` is
    not installed (the message says why it is needed and how to install it); a failure when
    ``CAR_ATTACKS_REQUIRE_SYSTEM_PACKAGES`` is set."""
    return _missing


class FashionMnist(Protocol):
    """Loader of the first Fashion-MNIST test images (see :func:`fashion_mnist`)."""

    def __call__(self, n: int, *, at_least: int | None = None) -> tuple[Tensor, Tensor]: ...


@pytest.fixture(scope="session")
def fashion_mnist() -> FashionMnist:
    """``load(n, at_least=n)``: the first ``n`` Fashion-MNIST test images and labels.

    Without Debian's ``dataset-fashion-mnist`` these are foolbox's shipped samples (the
    first 20 test images), so at most 20; a test that needs more than that (``at_least``)
    is skipped, or fails under ``CAR_ATTACKS_REQUIRE_SYSTEM_PACKAGES``.
    """
    from car_attacks.data import dataset_size, load_samples

    try:
        installed = dataset_size("fashion_mnist", "test") is not None
    except FileNotFoundError:
        installed = False
    shipped = dataset_size("foolbox_fashion_mnist", "test") or 0

    def load(n: int, *, at_least: int | None = None) -> tuple[Tensor, Tensor]:
        if installed:
            return load_samples("fashion_mnist", n=n, split="test")
        needed = n if at_least is None else at_least
        if needed > shipped:
            _missing(
                f"needs the first {needed} Fashion-MNIST test images, but Debian's copy is "
                f"not installed and foolbox ships only {shipped}",
                "dataset-fashion-mnist",
            )
        return load_samples("foolbox_fashion_mnist", n=min(n, shipped), split="test")

    return load


@pytest.fixture
def inductor_newton(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The compiled (inductor) Newton solve on the CPU, not the C kernel that takes its
    place where it builds (:mod:`car_attacks.core.native_newton`)."""
    from car_attacks.core import native_newton

    monkeypatch.setitem(native_newton._state, "failed", True)
    yield


@pytest.fixture
def small_fused(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fused path for the small test shapes, compiling (compilation is opt-in)."""
    from car_attacks.core import fused

    monkeypatch.setattr(fused, "FUSED_MIN_SIZE", 1)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    yield
