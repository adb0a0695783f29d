"""Tests of the decision-based attacks: ``ClippingAwareBoundaryAttack`` and
``ClippingAwareHopSkipJump`` (L2 and L-inf), each with car / bisection / naive rescaling.

The model is the tiny CNN of ``attack_fixtures`` with ``seed=6``: with the default
seed it predicts one class for every input (uniform noise included), so no
decision-based attack can even start.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import eagerpy as ep
import foolbox as fb
import numpy as np
import pytest
import torch
from attack_fixtures import cifar_batch, small_convnet
from torch import nn

import car_attacks
from car_attacks.attacks.boundary import ClippingAwareBoundaryAttack
from car_attacks.attacks.hop_skip_jump import ClippingAwareHopSkipJump

MODEL_SEED = 6
BOUNDS = [(0.0, 1.0), (0.0, 255.0)]
RESCALINGS = ["car", "bisection", "naive"]
N = 6


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """These attacks make thousands of tiny model calls; intra-op threads only spin on them
    (10x the CPU time on a busy 2-core machine). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def model(bounds: tuple[float, float]) -> fb.PyTorchModel:
    return small_convnet(bounds, seed=MODEL_SEED)


@cache
def _batch(bounds: tuple[float, float], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return cifar_batch(model(bounds), n)


def batch(bounds: tuple[float, float], n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _batch(bounds, n)
    return x.clone(), y.clone()


def saturated(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Higher-contrast images: about a third of the pixels sit on a bound."""
    lo, hi = bounds
    return (lo + 2 * (x - lo) - 0.5 * (hi - lo)).clamp(lo, hi)


def predict(fmodel: fb.models.Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fmodel(x).argmax(-1)


def norms(v: torch.Tensor, p: float) -> torch.Tensor:
    return v.flatten(1).double().norm(p=p, dim=1)


class Recording(fb.models.Model):
    """A foolbox model that passes queries on (one sample at a time if ``per_sample``)
    and records the smallest and largest input value it was queried with.

    Per-sample evaluation removes the batch-size dependence of the convolution's last
    bits, so that batch independence of the *attack* can be tested exactly.
    """

    def __init__(self, inner: fb.models.Model, *, per_sample: bool = False) -> None:
        self.inner = inner
        self.per_sample = per_sample
        self.lowest = math.inf
        self.highest = -math.inf
        self.queries = 0

    @property
    def bounds(self) -> fb.types.Bounds:
        return self.inner.bounds

    def __call__(self, inputs: Any) -> Any:
        x, restore = ep.astensor_(inputs)
        self.lowest = min(self.lowest, x.min().item())
        self.highest = max(self.highest, x.max().item())
        self.queries += len(x)
        if self.per_sample:
            return restore(ep.concatenate([self.inner(x[i : i + 1]) for i in range(len(x))], 0))
        return restore(self.inner(x))


def torch_module(fmodel: fb.PyTorchModel) -> nn.Module:
    """The ``nn.Module`` inside a ``foolbox.PyTorchModel``."""
    cells = fmodel._model.__closure__ or ()
    return next(c.cell_contents for c in cells if isinstance(c.cell_contents, nn.Module))


AttackFactory = Callable[..., fb.attacks.base.MinimizationAttack]


def boundary(**kw: Any) -> ClippingAwareBoundaryAttack:
    kw = {"steps": 20, "update_stats_every_k": 2, **kw}
    return ClippingAwareBoundaryAttack(**kw)


def hsj_l2(**kw: Any) -> ClippingAwareHopSkipJump:
    kw = {"steps": 2, "initial_gradient_eval_steps": 8, "constraint": "l2", **kw}
    return ClippingAwareHopSkipJump(**kw)


def hsj_linf(**kw: Any) -> ClippingAwareHopSkipJump:
    kw = {"steps": 2, "initial_gradient_eval_steps": 8, "constraint": "linf", **kw}
    return ClippingAwareHopSkipJump(**kw)


ATTACKS = {"boundary": boundary, "hsj_l2": hsj_l2, "hsj_linf": hsj_linf}
P_OF = {"boundary": 2.0, "hsj_l2": 2.0, "hsj_linf": math.inf}


# --------------------------------------------------------------------------- call contract


@pytest.mark.parametrize("bounds", BOUNDS, ids=["unit", "byte"])
@pytest.mark.parametrize("rescaling", RESCALINGS)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_contract_bounds_eps_and_success(name: str, rescaling: str, bounds: tuple) -> None:
    lo, hi = bounds
    x, y = batch(bounds, 4)
    recording = Recording(model(bounds))
    attack = ATTACKS[name](rescaling=rescaling)
    p = P_OF[name]
    # eps of the order of the distances these short runs reach
    epsilons = [None, (0.05 if p == math.inf else 2.0) * (hi - lo), 1e-3 * (hi - lo)]
    torch.manual_seed(0)
    raw, clipped, success = attack(recording, x, y, epsilons=epsilons)

    assert isinstance(success, torch.Tensor) and success.shape == (len(epsilons), 4)
    assert recording.lowest >= lo and recording.highest <= hi  # every query inside the bounds
    if hi > 1:
        assert recording.highest > 1  # ... and not squeezed into (0, 1)
    for eps, xp, xpc, ok in zip(epsilons, raw, clipped, success, strict=True):
        assert isinstance(xp, torch.Tensor) and isinstance(xpc, torch.Tensor)
        assert xp.shape == x.shape and xpc.shape == x.shape
        assert xp.min() >= lo and xp.max() <= hi
        assert xpc.min() >= lo and xpc.max() <= hi
        if eps is not None:
            # foolbox's clip_perturbation is exact up to float32 rounding of x + perturbation
            rounding = math.sqrt(x[0].numel()) * 2**-23 * hi
            assert (norms(xpc - x, p) <= eps * (1 + 1e-5) + rounding).all()
        assert torch.equal(ok, predict(model(bounds), xpc) != y)
    assert success[0].all()  # the unbounded result is adversarial for every sample


def test_byte_bounds_foolbox_hsj_clips_to_unit_box_ours_does_not() -> None:
    """foolbox 3.3.4's HopSkipJump clips its probes (and steps) to (0, 1) whatever the
    model's bounds (so with (0, 255) its step-size search never ends); ours stays in the
    model's bounds and finishes."""
    bounds = (0.0, 255.0)
    x, y = batch(bounds, 4)
    fmodel = model(bounds)
    queried: list[torch.Tensor] = []

    def is_adversarial(v: ep.Tensor) -> ep.Tensor:
        queried.append(v.raw)
        return ep.astensor(predict(fmodel, v.raw) != y)

    x_adv = ep.astensor(saturated(x, bounds))
    delta = ep.astensor(torch.full((4,), 10.0))
    fb.attacks.HopSkipJumpAttack().approximate_gradients(is_adversarial, x_adv, 4, delta)
    assert x_adv.max().item() > 200
    assert max(q.max().item() for q in queried) <= 1.0  # squeezed into (0, 1)

    ours = hsj_l2().sample_probes(x_adv, delta, 4, bounds=bounds, key=x_adv, stream=0)
    assert ours.max().item() > 200 and ours.max().item() <= 255 and ours.min().item() >= 0
    assert (norms((ours - ep.expand_dims(x_adv, 0)).raw.flatten(0, 1), 2) > 9.9).all()

    def run() -> torch.Tensor:
        return ClippingAwareHopSkipJump(steps=3, initial_gradient_eval_steps=10, seed=0).run(
            fmodel, x, y
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        advs = pool.submit(run).result(timeout=120)
    assert advs.min() >= 0 and advs.max() <= 255 and advs.max() > 1
    assert (predict(fmodel, advs) != y).all()


def test_repeat_and_foolbox_criteria() -> None:
    bounds = (0.0, 1.0)
    x, y = batch(bounds)
    attack = hsj_l2(seed=0).repeat(2)
    raw, clipped, success = attack(
        model(bounds), x, fb.criteria.Misclassification(y), epsilons=[None, 1.0]
    )
    assert len(raw) == 2 and len(clipped) == 2 and success.shape == (2, N)
    assert success[0].all()
    single = boundary(steps=5)
    torch.manual_seed(0)
    raw1, clipped1, success1 = single(model(bounds), x, y, epsilons=None)
    assert raw1.shape == x.shape and success1.shape == (N,) and success1.all()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_targeted(name: str) -> None:
    bounds = (0.0, 1.0)
    x, y = batch(bounds, 8)
    # start each sample from another sample of a different predicted class
    partner = [next(j for j in range(len(y)) if y[j] != y[i]) for i in range(len(y))]
    targets = y[partner]
    criterion = fb.criteria.TargetedMisclassification(targets)
    attack = ATTACKS[name](seed=0)
    raw, clipped, success = attack(
        model(bounds), x, criterion, epsilons=[None], starting_points=x[partner]
    )
    assert success[0].all()
    assert torch.equal(predict(model(bounds), raw[0]), targets)
    # it moved towards the originals
    p = P_OF[name]
    assert (norms(raw[0] - x, p) <= norms(x[partner] - x, p) + 1e-6).all()


# --------------------------------------------------------------------------- foolbox parity


@pytest.mark.parametrize(
    ("bounds", "given_start"),
    [((0.0, 1.0), True), ((0.0, 255.0), True), ((0.0, 255.0), False)],
    ids=["unit-starting_points", "byte-starting_points", "byte-init_attack"],
)
def test_naive_boundary_reproduces_foolbox(bounds: tuple, given_start: bool) -> None:
    """Same torch seed, same start (or foolbox's default initialisation): same result."""
    x, y = batch(bounds)
    fmodel = model(bounds)
    kwargs: dict[str, Any] = {}
    if given_start:
        torch.manual_seed(1)
        kwargs["starting_points"] = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50).run(
            fmodel, x, y
        )
    # every step updates the statistics, so both step-size adaptations happen (steps 30, 100)
    settings: dict[str, Any] = {"steps": 110, "update_stats_every_k": 1, "spherical_step": 0.02}
    torch.manual_seed(0)
    reference = fb.attacks.BoundaryAttack(**settings).run(fmodel, x, y, **kwargs)
    torch.manual_seed(0)
    ours = ClippingAwareBoundaryAttack(rescaling="naive", **settings).run(fmodel, x, y, **kwargs)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6 * bounds[1])
    # the attack made progress (so the comparison covers accepted candidates)
    start = kwargs.get("starting_points")
    if start is not None:
        assert (norms(ours - x, 2) < norms(start - x, 2)).all()


# --------------------------------------------------------------------------- the steps


def test_gradient_estimate_is_normalised_per_sample() -> None:
    torch.manual_seed(0)
    scales = torch.tensor([1e3, 1.0, 1e-3])
    perturbations = torch.randn(40, 3, 3, 8, 8) * scales.view(1, 3, 1, 1, 1)
    decisions = torch.rand(40, 3) < 0.4
    attack = hsj_l2()
    grad = attack.estimate_gradient(ep.astensor(perturbations), ep.astensor(decisions)).raw
    torch.testing.assert_close(
        norms(grad, 2), torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=0
    )
    # the direction is that of the raw Monte-Carlo estimate with the mean-sign baseline
    signs = decisions.float() * 2 - 1
    raw = ((signs - signs.mean(0)).view(40, 3, 1, 1, 1) * perturbations).mean(0)
    cosine = (grad * raw).flatten(1).sum(1) / norms(raw, 2).float()
    torch.testing.assert_close(cosine, torch.ones(3), rtol=1e-5, atol=0)

    # foolbox divides by the norm of the whole batch: no sample has unit norm
    x_adv = ep.astensor(torch.rand(4, 3, 8, 8))
    w = torch.randn(4, 3, 8, 8) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)

    def is_adversarial(v: ep.Tensor) -> ep.Tensor:
        return ep.astensor(((v.raw - x_adv.raw) * w).flatten(1).sum(1) > 0)

    fb_grad = fb.attacks.HopSkipJumpAttack().approximate_gradients(
        is_adversarial, x_adv, 30, ep.astensor(torch.full((4,), 0.01))
    )
    assert (norms(fb_grad.raw, 2) < 0.9).all()


@pytest.mark.parametrize("constraint", ["l2", "linf"])
def test_probe_sizes(constraint: str) -> None:
    bounds = (0.0, 1.0)
    images, _ = batch(bounds, 4)
    x = ep.astensor(saturated(images, bounds))
    p = 2.0 if constraint == "l2" else math.inf
    # the last sample asks for more than the box allows along any direction
    delta = [0.5, 3.0, 10.0, 100.0] if p == 2 else [0.01, 0.1, 0.6, 2.0]
    delta_t = ep.astensor(torch.tensor(delta))
    sizes = {}
    for rescaling in RESCALINGS:
        attack = ClippingAwareHopSkipJump(constraint=constraint, rescaling=rescaling, seed=0)  # type: ignore[arg-type]
        probes = attack.sample_probes(x, delta_t, 32, bounds=bounds, key=x, stream=3)
        assert probes.shape == (32, *x.shape)
        assert probes.min().item() >= 0 and probes.max().item() <= 1
        v = (probes - ep.expand_dims(x, 0)).raw.flatten(0, 1)
        size = norms(v, p).view(32, 4)
        reach = torch.as_tensor(
            np.asarray(car_attacks.reachable_norm(x.raw.repeat(32, 1, 1, 1), v, p=p))
        ).view(32, 4)
        target = torch.tensor(delta, dtype=torch.float64).expand(32, 4)
        sizes[rescaling] = (size, reach, target)

    for rescaling in ("car", "bisection"):
        size, reach, target = sizes[rescaling]
        exact = (size - target).abs() <= 1e-5 * target
        at_max = ((size - reach).abs() <= 1e-5 * reach) & (size < target)
        assert (exact | at_max).all(), rescaling
        assert exact[:, :3].all()  # reachable sizes are met exactly
        assert at_max[:, 3].all()  # the unreachable one saturates
    size, _, target = sizes["naive"]
    assert (size <= target * (1 + 1e-5)).all()
    assert (size[:, :3] < target[:, :3] * (1 - 1e-4)).any()  # clipping shrank some probes


def test_clipped_geometric_step_has_requested_size() -> None:
    bounds = (0.0, 1.0)
    images, _ = batch(bounds, 4)
    x = ep.astensor(saturated(images, bounds))
    update = ep.astensor(torch.randn(x.shape))
    sizes = ep.astensor(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    car = hsj_l2().take_step(x, update, sizes, bounds=bounds)
    naive = hsj_l2(rescaling="naive").take_step(x, update, sizes, bounds=bounds)
    torch.testing.assert_close(norms((car - x).raw, 2), sizes.raw.double(), rtol=1e-5, atol=0)
    assert (norms((naive - x).raw, 2) < sizes.raw.double() * 0.99).all()


def test_boundary_orthogonal_step_survives_clipping() -> None:
    bounds = (0.0, 1.0)
    x, _ = batch(bounds, 4)
    x0 = saturated(x, bounds).flatten(1)
    torch.manual_seed(0)
    adv = (x0 + 0.2 * torch.randn_like(x0)).clamp(0, 1)  # many coordinates on a bound
    source_norms = (x0 - adv).norm(dim=1)
    directions = (x0 - adv) / source_norms[:, None]
    steps = torch.full((4,), 0.05)
    size = steps * source_norms
    e = ep.astensor
    for rescaling in RESCALINGS:
        attack = ClippingAwareBoundaryAttack(rescaling=rescaling, seed=0)  # type: ignore[arg-type]
        eta = attack.orthogonal_noise(e(x0), e(directions), 1).raw
        torch.testing.assert_close((eta * directions).sum(1), torch.zeros(4), rtol=0, atol=1e-4)
        spherical = attack.orthogonal_step(
            e(x0), e(adv), e(directions), e(source_norms), e(steps), bounds=bounds, step=1
        ).raw
        assert spherical.min() >= 0 and spherical.max() <= 1
        if rescaling == "naive":
            # foolbox: the step has the intended size before clipping, less after it
            moved = (adv + eta * (size / eta.norm(dim=1))[:, None]).clamp(0, 1)
            assert ((moved - adv).norm(dim=1) < size * 0.99).all()
            continue
        # car / bisection: the step that survives clipping has exactly the intended size,
        # and the candidate is that point pulled back onto the sphere around x0
        scale = car_attacks.clipping_aware_rescaling(adv, eta, size, bounds=bounds)
        moved = (adv + scale.view(4, 1) * eta).clamp(0, 1)
        torch.testing.assert_close((moved - adv).norm(dim=1), size, rtol=1e-5, atol=0)
        pull = ((moved - x0).norm(dim=1) / source_norms).clamp(min=1.0)
        expected = x0 + (moved - x0) / pull[:, None]
        torch.testing.assert_close(spherical, expected, rtol=0, atol=1e-5)
        assert ((spherical - x0).norm(dim=1) <= source_norms * (1 + 1e-5)).all()


# ---------------------------------------------------------------- independence, side effects


@pytest.mark.parametrize(
    ("name", "bounds"),
    [("boundary", (0.0, 255.0)), ("hsj_l2", (0.0, 1.0)), ("hsj_linf", (0.0, 255.0))],
)
def test_seeded_samples_are_independent_of_the_batch(name: str, bounds: tuple) -> None:
    x, y = batch(bounds, 4)
    fmodel = Recording(model(bounds), per_sample=True)
    attack = ATTACKS[name](seed=0)
    together = attack.run(fmodel, x, y)
    alone = attack.run(fmodel, x[2:3], y[2:3])
    assert torch.equal(alone[0], together[2])
    # a different batch order gives the same per-sample results
    order = torch.tensor([3, 0, 2, 1])
    shuffled = attack.run(fmodel, x[order], y[order])
    assert torch.equal(shuffled, together[order])


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("training", [False, True])
def test_model_is_left_untouched(name: str, training: bool) -> None:
    bounds = (0.0, 1.0)
    fmodel = small_convnet(bounds, seed=MODEL_SEED)
    net = torch_module(fmodel)
    net.train(training)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = batch(bounds, 4)
    ATTACKS[name](seed=0)(fmodel, x, y, epsilons=[None])
    assert all(param.grad is None for param in net.parameters())
    assert all(m.training == training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("factory", [ClippingAwareBoundaryAttack, ClippingAwareHopSkipJump])
def test_bad_arguments_raise(factory: AttackFactory) -> None:
    with pytest.raises(ValueError, match="rescaling.*'exact'"):
        factory(rescaling="exact")
    with pytest.raises(ValueError, match="seed"):
        factory(seed=-1)
    with pytest.raises(TypeError):
        factory("car")  # keyword-only


def test_hsj_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="constraint.*'l1'"):
        ClippingAwareHopSkipJump(constraint="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stepsize_search.*'line'"):
        ClippingAwareHopSkipJump(stepsize_search="line")  # type: ignore[arg-type]


def test_starting_points_must_be_adversarial() -> None:
    bounds = (0.0, 1.0)
    x, y = batch(bounds, 4)
    for attack in (boundary(), hsj_l2()):
        with pytest.raises(ValueError, match="starting_points.*not adversarial"):
            attack.run(model(bounds), x, y, starting_points=x)


def test_hsj_grid_search_and_best_over_iterations() -> None:
    bounds = (0.0, 255.0)
    x, y = batch(bounds, 2)
    fmodel = model(bounds)
    for constraint in ("l2", "linf"):
        attack = ClippingAwareHopSkipJump(
            steps=1,
            initial_gradient_eval_steps=4,
            stepsize_search="grid_search",
            constraint=constraint,
            seed=0,
        )
        start = attack.initialize(
            fmodel,
            ep.astensor(x),
            fb.criteria.Misclassification(y),
            fb.attacks.base.get_is_adversarial(
                fb.criteria.Misclassification(ep.astensor(y)), fmodel
            ),
            early_stop=None,
            starting_points=None,
        ).raw
        advs = attack.run(fmodel, x, y, starting_points=start)
        p = 2.0 if constraint == "l2" else math.inf
        assert (predict(fmodel, advs) != y).all()
        assert advs.min() >= 0 and advs.max() <= 255
        assert (norms(advs - x, p) <= norms(start - x, p) + 1e-3).all()


# --------------------------------------------------------------------------- strength


def test_car_boundary_is_at_least_as_strong_as_naive() -> None:
    """Same step budget, same per-sample noise (seed=0): CAR's median L2 distance is not
    worse than naive's (clipping only bites on saturated pixels; the gain is small)."""
    bounds = (0.0, 1.0)
    x, _ = batch(bounds, 8)
    x = saturated(x, bounds)
    y = predict(model(bounds), x)
    medians = {}
    for rescaling in ("car", "naive"):
        attack = ClippingAwareBoundaryAttack(
            steps=300,
            update_stats_every_k=1,
            rescaling=rescaling,
            seed=0,
        )
        advs = attack.run(model(bounds), x, y)
        assert (predict(model(bounds), advs) != y).all()
        medians[rescaling] = norms(advs - x, 2).median().item()
    print(f"median L2 after 300 steps: car {medians['car']:.4f}, naive {medians['naive']:.4f}")
    assert medians["car"] <= medians["naive"] * 1.02
