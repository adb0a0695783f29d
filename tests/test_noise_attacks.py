"""Tests of the random-noise attacks in ``car_attacks.attacks.noise``.

Measured on foolbox's CIFAR-10 samples from ``attack_fixtures`` with its tiny CNN and,
where decisions must flip under noise, a random linear pixel classifier, and against
foolbox 3.3.4's own additive-noise attacks (same global seed, same outputs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache
from typing import Any

import eagerpy as ep
import foolbox as fb
import numpy as np
import pytest
import torch
from attack_fixtures import cifar_batch, small_convnet
from torch import nn

import car_attacks.attacks
from car_attacks import reachable_norm
from car_attacks.attacks import Rescaling, noise
from car_attacks.attacks.noise import (
    ClippingAwareAdditiveNoiseAttack,
    ClippingAwareRepeatedAdditiveNoiseAttack,
    L1ClippingAwareAdditiveGaussianNoiseAttack,
    L1ClippingAwareAdditiveUniformNoiseAttack,
    L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L1ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    L2ClippingAwareAdditiveUniformNoiseAttack,
    L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    LinfClippingAwareAdditiveGaussianNoiseAttack,
    LinfClippingAwareAdditiveUniformNoiseAttack,
    LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    LinfClippingAwareRepeatedAdditiveUniformNoiseAttack,
)

AttackClass = type[ClippingAwareAdditiveNoiseAttack]
SINGLE: list[AttackClass] = [
    L1ClippingAwareAdditiveGaussianNoiseAttack,
    L1ClippingAwareAdditiveUniformNoiseAttack,
    L2ClippingAwareAdditiveGaussianNoiseAttack,
    L2ClippingAwareAdditiveUniformNoiseAttack,
    LinfClippingAwareAdditiveGaussianNoiseAttack,
    LinfClippingAwareAdditiveUniformNoiseAttack,
]
REPEATED: list[AttackClass] = [
    L1ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L1ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    LinfClippingAwareRepeatedAdditiveUniformNoiseAttack,
]
ALL = SINGLE + REPEATED
RESCALINGS: list[Rescaling] = ["car", "bisection", "naive"]
BOUNDS = [(0.0, 1.0), (0.0, 255.0)]
N = 8
REPEATS = 3
RTOL = 1e-5
# Per norm, epsilons for bounds (0, 1) (scaled with the box width otherwise):
# small (little clipping), mid (heavy clipping of naive noise), huge (saturates every sample).
EPS_UNIT = {1.0: (20.0, 400.0, 1e5), 2.0: (0.5, 8.0, 1e3), math.inf: (0.03, 0.5, 10.0)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors here are tiny; intra-op threads only contend (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(cls: AttackClass) -> str:
    return (
        cls.__name__.replace("ClippingAware", "").replace("AdditiveNoise", "").replace("Attack", "")
    )


class _ToUnit(nn.Module):
    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lo) / (self.hi - self.lo)


def pixel_linear(bounds: tuple[float, float]) -> fb.PyTorchModel:
    """A random linear classifier on pixels. Unlike ``small_convnet`` (which predicts
    one class for every CIFAR sample and which noise never flips), random noise
    changes its decisions, so success, early stopping and targets get exercised."""
    torch.manual_seed(0)
    net = nn.Sequential(_ToUnit(*bounds), nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    return fb.PyTorchModel(net, bounds=bounds)


@cache
def setup(
    bounds: tuple[float, float], kind: str = "linear"
) -> tuple[fb.PyTorchModel, torch.Tensor, torch.Tensor]:
    """Model (``"linear"``: :func:`pixel_linear`, ``"convnet"``: the fixture's CNN), the
    CIFAR batch in ``bounds`` and the model's labels for it."""
    fmodel = small_convnet(bounds) if kind == "convnet" else pixel_linear(bounds)
    x, y = cifar_batch(fmodel, N)
    return fmodel, x, y


def epsilons(p: float, bounds: tuple[float, float]) -> list[float]:
    width = bounds[1] - bounds[0]
    return [e * width for e in EPS_UNIT[p]]


def make(cls: AttackClass, **kwargs: Any) -> ClippingAwareAdditiveNoiseAttack:
    if issubclass(cls, ClippingAwareRepeatedAdditiveNoiseAttack):
        kwargs.setdefault("repeats", REPEATS)
    attack: ClippingAwareAdditiveNoiseAttack = cls(**kwargs)
    return attack


def norms(v: torch.Tensor, p: float) -> np.ndarray:
    """Per-sample Lp norms in float64 of the (float32) tensor ``v``."""
    a = v.detach().double().flatten(1).abs()
    if p == math.inf:
        return a.max(dim=1).values.numpy()
    return (a**p).sum(dim=1).pow(1.0 / p).numpy()


def predictions(fmodel: fb.PyTorchModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fmodel(x).argmax(-1)


def module_of(fmodel: fb.PyTorchModel) -> nn.Module:
    """The ``nn.Module`` a ``fb.PyTorchModel`` wraps (held in its forward closure)."""
    for cell in fmodel._model.__closure__ or ():
        if isinstance(cell.cell_contents, nn.Module):
            return cell.cell_contents
    raise AssertionError("no nn.Module in the foolbox model")


class Never(fb.criteria.Criterion):
    """A criterion no input satisfies."""

    def __repr__(self) -> str:
        return "Never()"

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        outputs_, restore = ep.astensor_(outputs)
        return restore(ep.zeros(outputs_, len(outputs_)).bool())


# --- the contract, for every class, rescaling and box ---------------------------------------


@pytest.mark.parametrize("bounds", BOUNDS, ids=["unit", "byte"])
@pytest.mark.parametrize("rescaling", RESCALINGS)
@pytest.mark.parametrize("cls", ALL, ids=_ids)
def test_contract(cls: AttackClass, rescaling: Rescaling, bounds: tuple[float, float]) -> None:
    fmodel, x, y = setup(bounds, "linear" if cls in REPEATED else "convnet")
    attack = make(cls, rescaling=rescaling, seed=0)
    eps_list = epsilons(attack.p, bounds)
    raws, clippeds, success = attack(fmodel, x, y, epsilons=eps_list)
    assert len(raws) == len(clippeds) == len(eps_list)
    assert success.shape == (len(eps_list), N)
    lo, hi = bounds
    noise_dir = attack.sample_noise(ep.astensor(x), 0).raw
    reach = np.asarray(reachable_norm(x, noise_dir, p=attack.p, bounds=bounds).double())
    if cls in REPEATED:
        assert success.any()  # the first-success bookkeeping has something to keep
    for k, eps in enumerate(eps_list):
        raw, clipped = raws[k], clippeds[k]
        assert isinstance(raw, torch.Tensor) and isinstance(clipped, torch.Tensor)
        assert raw.shape == clipped.shape == x.shape
        for out in (raw, clipped):
            assert out.min().item() >= lo and out.max().item() <= hi
        assert (attack.distance(x, clipped) <= eps * (1 + RTOL)).all()
        assert torch.equal(success[k], predictions(fmodel, clipped) != y)
        effective = norms(raw - x, attack.p)
        if isinstance(attack, ClippingAwareRepeatedAdditiveNoiseAttack):
            # the first successful draw of each sample, or x itself where none succeeded
            assert (effective <= eps * (1 + RTOL)).all()
            assert (effective[~success[k].numpy()] == 0).all()
            continue
        target = np.minimum(eps, reach)
        if rescaling == "naive":
            assert (effective <= target * (1 + RTOL)).all()
            if k == 1:  # clipping bites: naive falls short of eps for some sample
                assert (effective < eps * (1 - 1e-4)).any()
        else:
            np.testing.assert_allclose(effective, target, rtol=RTOL)
            if k == 2:  # eps beyond every sample's reach: the saturated perturbation
                assert (reach < eps).all()


def test_repeated_keeps_first_successful_draw() -> None:
    """Each sample's result is the candidate of its first successful stream."""
    bounds = (0.0, 1.0)
    fmodel, x, y = setup(bounds)
    attack = L2ClippingAwareRepeatedAdditiveUniformNoiseAttack(repeats=6, seed=3)
    eps = 3.0  # seed 3: first fooled at streams 0, 1, 2 and 4 (some again later), two never
    raw, _, _ = attack(fmodel, x, y, epsilons=eps)
    xe = ep.astensor(x)
    eps_t = ep.full(xe, (N,), eps)
    expected = x.clone()
    done = torch.zeros(N, dtype=torch.bool)
    for stream in range(attack.repeats):
        candidate = attack.perturb(xe, attack.sample_noise(xe, stream), eps_t, bounds).raw
        new = (predictions(fmodel, candidate) != y) & ~done
        expected[new] = candidate[new]
        done |= new
    assert 0 < int(done.sum()) < N  # some, not all, found: the loop ran to the end
    assert torch.equal(raw, expected)


def test_repeated_streams_and_exhaustion() -> None:
    """Draw k uses stream k; with an unsatisfiable criterion all repeats run, x comes back."""
    fmodel, x, _ = setup((0.0, 1.0))
    streams: list[int] = []

    class Recording(LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack):
        def sample_noise(self, x: ep.Tensor, stream: int = 0) -> ep.Tensor:
            streams.append(stream)
            return super().sample_noise(x, stream)

    raw, clipped, success = Recording(repeats=4, seed=1)(fmodel, x, Never(), epsilons=0.1)
    assert streams == [0, 1, 2, 3]
    assert torch.equal(raw, x) and torch.equal(clipped, x)
    assert not success.any()


def test_eps_zero_returns_inputs() -> None:
    fmodel, x, y = setup((0.0, 1.0))
    for rescaling in RESCALINGS:
        raw, _, success = L2ClippingAwareAdditiveGaussianNoiseAttack(rescaling=rescaling)(
            fmodel, x, y, epsilons=0.0
        )
        assert torch.equal(raw, x)
        assert not success.any()


def test_overriding_a_step() -> None:
    """A researcher swaps the noise for its sign; the rescaling still hits eps exactly."""

    class SignNoise(L2ClippingAwareAdditiveGaussianNoiseAttack):
        def sample_noise(self, x: ep.Tensor, stream: int = 0) -> ep.Tensor:
            return super().sample_noise(x, stream).sign()

    fmodel, x, y = setup((0.0, 1.0))
    attack = SignNoise(seed=0)
    raw, _, _ = attack(fmodel, x, y, epsilons=4.0)
    step = raw - x
    base = L2ClippingAwareAdditiveGaussianNoiseAttack(seed=0).sample_noise(ep.astensor(x)).raw
    moved = step != 0
    assert torch.equal(step[moved].sign(), base.sign()[moved])
    np.testing.assert_allclose(norms(step, 2), 4.0, rtol=RTOL)


# --- equivalence with foolbox (same global seed, seed=None) --------------------------------

EQUIVALENT = [
    (L2ClippingAwareAdditiveGaussianNoiseAttack, "naive", fb.attacks.L2AdditiveGaussianNoiseAttack),
    (L2ClippingAwareAdditiveUniformNoiseAttack, "naive", fb.attacks.L2AdditiveUniformNoiseAttack),
    (
        L2ClippingAwareAdditiveGaussianNoiseAttack,
        "car",
        fb.attacks.L2ClippingAwareAdditiveGaussianNoiseAttack,
    ),
    (
        L2ClippingAwareAdditiveUniformNoiseAttack,
        "car",
        fb.attacks.L2ClippingAwareAdditiveUniformNoiseAttack,
    ),
    (
        L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
        "naive",
        fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack,
    ),
    (
        L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        "naive",
        fb.attacks.L2RepeatedAdditiveUniformNoiseAttack,
    ),
    (
        L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
        "car",
        fb.attacks.L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    ),
    (
        L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        "car",
        fb.attacks.L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
    ),
]


@pytest.mark.parametrize("bounds", BOUNDS, ids=["unit", "byte"])
@pytest.mark.parametrize(
    ("cls", "rescaling", "fb_cls"),
    EQUIVALENT,
    ids=[f"{_ids(c)}-{r}" for c, r, _ in EQUIVALENT],
)
def test_matches_foolbox(
    cls: AttackClass,
    rescaling: Rescaling,
    fb_cls: type[Any],
    bounds: tuple[float, float],
) -> None:
    fmodel, x, y = setup(bounds)
    repeated = issubclass(cls, ClippingAwareRepeatedAdditiveNoiseAttack)
    kwargs: dict[str, Any] = {"repeats": 10} if repeated else {}
    eps_list = [e * (bounds[1] - bounds[0]) for e in (0.5, 6.0, 20.0)]
    torch.manual_seed(7)
    ours = cls(rescaling=rescaling, **kwargs)(fmodel, x, y, epsilons=eps_list)
    torch.manual_seed(7)
    theirs = fb_cls(**kwargs)(fmodel, x, y, epsilons=eps_list)
    atol = 1e-5 * (bounds[1] - bounds[0])
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    assert torch.equal(ours[2], theirs[2])


@pytest.mark.parametrize("bounds", BOUNDS, ids=["unit", "byte"])
def test_linf_uniform_matches_foolbox(bounds: tuple[float, float]) -> None:
    """Naive L-inf uniform noise equals foolbox's wherever foolbox normalises correctly.

    foolbox 3.3.4 divides by the largest *signed* noise value, not the largest
    magnitude, so where the largest |n_i| is negative its raw output overshoots eps.
    """
    fmodel, x, y = setup(bounds)
    eps = 0.3 * (bounds[1] - bounds[0])
    torch.manual_seed(11)
    noise_dir = torch.rand_like(x) * 2 - 1
    signed_ok = noise_dir.flatten(1).max(1).values == noise_dir.flatten(1).abs().max(1).values
    torch.manual_seed(11)
    raw, _, _ = LinfClippingAwareAdditiveUniformNoiseAttack(rescaling="naive")(
        fmodel, x, y, epsilons=eps
    )
    torch.manual_seed(11)
    fb_raw, _, _ = fb.attacks.LinfAdditiveUniformNoiseAttack()(fmodel, x, y, epsilons=eps)
    atol = 1e-5 * (bounds[1] - bounds[0])
    assert signed_ok.any() and not signed_ok.all()
    torch.testing.assert_close(raw[signed_ok], fb_raw[signed_ok], rtol=0, atol=atol)
    assert (norms(raw - x, math.inf) <= eps * (1 + RTOL)).all()
    assert (norms(fb_raw - x, math.inf)[~signed_ok.numpy()] > eps * (1 + RTOL)).all()


# --- batch independence, model side effects, foolbox plumbing -------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        L1ClippingAwareAdditiveUniformNoiseAttack,
        L2ClippingAwareAdditiveGaussianNoiseAttack,
        LinfClippingAwareAdditiveUniformNoiseAttack,
        L2ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    ],
    ids=_ids,
)
@pytest.mark.parametrize("rescaling", ["car", "naive"])
def test_sample_independence(cls: AttackClass, rescaling: Rescaling) -> None:
    bounds = (0.0, 1.0)
    fmodel, x, y = setup(bounds)
    attack = make(cls, rescaling=rescaling, seed=0)
    eps = EPS_UNIT[attack.p][1] / 2
    batch, _, batch_success = attack(fmodel, x, y, epsilons=eps)
    order = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled, _, _ = attack(fmodel, x[order], y[order], epsilons=eps)
    torch.testing.assert_close(shuffled, batch[order], rtol=0, atol=0)
    for i in (0, 3):
        alone, _, alone_success = attack(fmodel, x[i : i + 1], y[i : i + 1], epsilons=eps)
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=0)
        assert bool(alone_success[0]) == bool(batch_success[i])
    if isinstance(attack, ClippingAwareRepeatedAdditiveNoiseAttack):
        assert 0 < int(batch_success.sum()) < N  # the per-sample early stop is exercised


@pytest.mark.parametrize(
    "cls",
    [
        L2ClippingAwareAdditiveGaussianNoiseAttack,
        L1ClippingAwareRepeatedAdditiveUniformNoiseAttack,
        LinfClippingAwareRepeatedAdditiveGaussianNoiseAttack,
    ],
    ids=_ids,
)
def test_model_untouched(cls: AttackClass) -> None:
    fmodel = small_convnet((0.0, 1.0))  # a fresh model: the cached ones stay untouched
    x, y = cifar_batch(fmodel, N)
    net = module_of(fmodel)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for training in (False, True):
        net.train(training)
        for rescaling in RESCALINGS:
            make(cls, rescaling=rescaling)(fmodel, x, y, epsilons=EPS_UNIT[cls.norm.p][1])
        assert net.training is training
        assert all(m.training is training for m in net.modules())
    assert all(prm.grad is None for prm in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "cls",
    [L1ClippingAwareAdditiveGaussianNoiseAttack, L2ClippingAwareRepeatedAdditiveUniformNoiseAttack],
    ids=_ids,
)
def test_repeat(cls: AttackClass) -> None:
    bounds = (0.0, 1.0)
    fmodel, x, y = setup(bounds)
    attack = make(cls)
    eps_list = list(epsilons(attack.p, bounds)[:2])
    torch.manual_seed(0)
    once = attack(fmodel, x, y, epsilons=eps_list)[2]
    torch.manual_seed(0)
    raws, clippeds, success = attack.repeat(3)(fmodel, x, y, epsilons=eps_list)
    assert success.shape == (2, N)
    assert bool((success | ~once).all())  # the first of the three runs is `once`
    for eps, raw, clipped, ok in zip(eps_list, raws, clippeds, success, strict=True):
        assert raw.shape == x.shape
        assert (attack.distance(x, clipped) <= eps * (1 + RTOL)).all()
        assert torch.equal(ok, predictions(fmodel, clipped) != y)


@pytest.mark.parametrize("cls", REPEATED, ids=_ids)
def test_targeted_repeated(cls: AttackClass) -> None:
    bounds = (0.0, 1.0)
    fmodel, x, y = setup(bounds)
    attack = make(cls, seed=0)
    eps = EPS_UNIT[attack.p][1]
    # aim at what the first draw already reaches where that differs from the label
    xe = ep.astensor(x)
    first = attack.perturb(xe, attack.sample_noise(xe, 0), ep.full(xe, (N,), eps), bounds).raw
    reached = predictions(fmodel, first)
    target = torch.where(reached != y, reached, (y + 1) % 10)
    criterion = fb.criteria.TargetedMisclassification(target)
    raw, clipped, success = attack(fmodel, x, criterion, epsilons=eps)
    assert torch.equal(success, predictions(fmodel, clipped) == target)
    assert success[reached != y].all() and (reached != y).any()
    assert torch.equal(raw[~success], x[~success])


def test_bad_arguments() -> None:
    bad: Any = "exact"
    for cls in (
        L2ClippingAwareAdditiveGaussianNoiseAttack,
        LinfClippingAwareRepeatedAdditiveUniformNoiseAttack,
    ):
        with pytest.raises(ValueError, match="'exact'"):
            cls(rescaling=bad)
    with pytest.raises(ValueError, match="repeats"):
        L2ClippingAwareRepeatedAdditiveGaussianNoiseAttack(repeats=0)
    with pytest.raises(TypeError):
        ClippingAwareAdditiveNoiseAttack()
    fmodel, x, y = setup((0.0, 1.0))
    with pytest.raises(ValueError, match="epsilon"):
        L2ClippingAwareAdditiveGaussianNoiseAttack()(fmodel, x, y, epsilons=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        L2ClippingAwareAdditiveGaussianNoiseAttack()(fmodel, x, y, epsilons=1.0, steps=3)


def test_public_classes() -> None:
    exported = [getattr(car_attacks.attacks, name) for name in car_attacks.attacks.__all__]
    classes = [c for c in exported if isinstance(c, type) and c.__module__ == noise.__name__]
    public = [c for c in classes if c.__name__.startswith("L")]
    assert sorted(c.__name__ for c in public) == sorted(c.__name__ for c in ALL)
    for cls in public:
        assert issubclass(cls, fb.attacks.base.FixedEpsilonAttack)
        assert cls.norm.p in (1.0, 2.0, math.inf) and cls.distribution in ("normal", "uniform")
        assert cls().distance.p == cls.norm.p
        assert cls.__doc__ and "eps" in cls.__doc__


# --- strength: CAR reaches at least as far as naive on every sample -------------------------


@pytest.mark.parametrize(
    "cls",
    SINGLE,
    ids=_ids,
)
def test_car_at_least_naive(cls: AttackClass) -> None:
    bounds = (0.0, 1.0)
    fmodel, x, y = setup(bounds)
    eps = EPS_UNIT[cls.norm.p][1]
    effective = {}
    for rescaling in ("car", "naive"):
        raw, _, _ = cls(rescaling=rescaling, seed=0)(fmodel, x, y, epsilons=eps)
        effective[rescaling] = norms(raw - x, cls.norm.p)
    assert (effective["car"] >= effective["naive"] * (1 - RTOL)).all()
    np.testing.assert_allclose(effective["car"], eps, rtol=RTOL)
    ratio = effective["naive"] / eps
    print(f"{_ids(cls)} eps={eps}: naive effective/nominal median {np.median(ratio):.4f}")
    assert (ratio < 1 - 1e-4).any()
