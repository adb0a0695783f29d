"""Tests for car_attacks.lipschitz: Björck, BCOP orthogonality, bounds, certification."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from car_attacks.lipschitz import (
    BCOPConv2d,
    BjorckLinear,
    MaxMin,
    Normalize,
    bcop_network,
    bjorck,
    certified_accuracy,
    certified_radius,
    conv_singular_values,
    lipschitz_bound,
    orthogonality_error,
    orthonormalize,
    power_iteration,
    prediction_margin,
)
from car_attacks.lipschitz.bcop import PaddingMode

TOL = 1e-4


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast and robust to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_operator(
    module: Callable[[Tensor], Tensor],
    in_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Matrix (float64) of a linear map, built by applying it to the identity basis."""
    d = math.prod(in_shape)
    basis = torch.eye(d, dtype=dtype).reshape(d, *in_shape)
    with torch.no_grad():
        out = module(basis)
    return out.reshape(d, -1).T.double()


def randomize(module: nn.Module) -> None:
    """Replace the (orthogonally initialised) raw parameters by Gaussian ones."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "bias":
                p.normal_()


def bcop(
    c_in: int, c_out: int, k: int, stride: int = 1, padding_mode: PaddingMode = "circular"
) -> BCOPConv2d:
    """An eval-mode, bias-free BCOP conv with random (non-orthogonal) raw parameters."""
    m = BCOPConv2d(
        c_in, c_out, k, stride, padding_mode, bias=False, bjorck_iters=30, power_iters=10
    )
    randomize(m)
    return m.eval()


# --------------------------------------------------------------------------- Björck


@pytest.mark.parametrize(
    "shape", [(1, 1), (7, 7), (64, 64), (50, 20), (20, 50), (3, 12, 12), (2, 9, 4)]
)
@pytest.mark.parametrize("power_iters", [0, 10])
def test_bjorck_orthogonal_and_polar_factor(shape: tuple[int, ...], power_iters: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape)
    assert orthogonality_error(w).max() > 1e-2  # the input is far from orthogonal
    q = orthonormalize(w, iters=60, power_iters=power_iters)
    assert q.shape == w.shape
    assert orthogonality_error(q).max() < 1e-5
    # The limit is the orthogonal polar factor U V^T of W.
    u, _, vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert torch.allclose(q.double(), u @ vh, atol=1e-4)


def test_bjorck_iteration_counts_matter() -> None:
    torch.manual_seed(1)
    w = torch.randn(32, 32) / 20.0  # singular values well below 1: slow start
    errors = [float(orthogonality_error(bjorck(w, iters=n))) for n in (0, 2, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] > 0.1 and errors[2] < 1e-5


def test_power_iteration_estimates_spectral_norm() -> None:
    torch.manual_seed(2)
    w = torch.randn(4, 30, 17, dtype=torch.float64)
    sigma, u = power_iteration(w, iters=200)
    exact = torch.linalg.matrix_norm(w, ord=2)
    assert u.shape == (4, 30)
    assert torch.all(sigma <= exact * (1 + 1e-12))
    assert torch.allclose(sigma, exact, rtol=1e-6)


# --------------------------------------------------------------------------- BCOP


def test_conv_singular_values_match_dense_svd_for_generic_kernel() -> None:
    """The FFT formula itself, on a random (non-orthogonal) kernel."""
    torch.manual_seed(3)
    kernel = torch.randn(5, 3, 3, 3, dtype=torch.float64)

    def circ(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kernel)

    def zero(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, padding=1)

    shape = (3, 5, 6)
    dense = torch.linalg.svdvals(dense_operator(circ, shape, torch.float64))
    fft = conv_singular_values(kernel, (5, 6)).flatten().sort(descending=True).values
    assert torch.allclose(dense, fft, atol=1e-9)
    dense_zero = torch.linalg.svdvals(dense_operator(zero, shape, torch.float64))
    bound_zero = conv_singular_values(kernel, (5, 6), circular=False).max()
    assert dense_zero.max() <= bound_zero + 1e-9
    assert dense_zero.max() < dense.max()  # zero padding is a different operator


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_bcop_circular_is_orthogonal(k: int) -> None:
    torch.manual_seed(10 + k)
    m = bcop(4, 4, k)
    shape = (4, 6, 6)
    x = torch.randn(8, *shape)
    y = m(x)
    assert y.shape == x.shape  # "same" padding, also for even k
    fft = conv_singular_values(m.orthogonal_kernel(), (6, 6))
    dense = torch.linalg.svdvals(dense_operator(m, shape))
    assert dense.numel() == 144
    for sv in (fft, dense):
        assert sv.min() >= 1 - TOL and sv.max() <= 1 + TOL
    ratio = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_bcop_zero_padding_has_norm_at_most_one(k: int) -> None:
    torch.manual_seed(20 + k)
    m = bcop(4, 4, k, padding_mode="zeros")
    shape = (4, 6, 6)
    assert m(torch.randn(2, *shape)).shape == (2, *shape)
    dense = torch.linalg.svdvals(dense_operator(m, shape))
    assert dense.max() <= 1 + TOL
    bound = conv_singular_values(m.orthogonal_kernel(), (6, 6), circular=False).max()
    assert dense.max() <= bound + 1e-6 and bound <= 1 + TOL
    if k > 1:
        assert dense.min() < 0.9  # not orthogonal: the boundary loses energy


@pytest.mark.parametrize("k", [2, 3])
def test_bcop_unequal_channels(k: int) -> None:
    torch.manual_seed(30 + k)
    shape = (4, 6, 6)
    # More outputs than inputs: column-orthogonal, an isometry (norm preserving).
    up = bcop(4, 6, k)
    sv = torch.linalg.svdvals(dense_operator(up, shape))
    assert sv.numel() == 144 and sv.min() >= 1 - TOL and sv.max() <= 1 + TOL
    x = torch.randn(5, *shape)
    ratio = up(x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    # Fewer outputs than inputs: row-orthogonal, norm 1, all nonzero singular values 1.
    down = bcop(6, 4, k)
    sv = torch.linalg.svdvals(dense_operator(down, (6, 6, 6)))
    assert sv.numel() == 144 and sv.max() <= 1 + TOL and sv.min() >= 1 - TOL
    fft = conv_singular_values(down.orthogonal_kernel(), (6, 6))
    assert fft.max() <= 1 + TOL and fft.min() >= 1 - TOL


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bcop_strided_via_pixel_unshuffle(k: int) -> None:
    torch.manual_seed(40 + k)
    shape = (4, 6, 6)
    square = bcop(4, 16, k, stride=2)  # 4*2*2 = 16 channels on a 3x3 grid: orthogonal
    x = torch.randn(5, *shape)
    y = square(x)
    assert y.shape == (5, 16, 3, 3)
    sv = torch.linalg.svdvals(dense_operator(square, shape))
    assert sv.numel() == 144 and sv.min() >= 1 - TOL and sv.max() <= 1 + TOL
    ratio = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    narrow = bcop(4, 8, k, stride=2)
    sv = torch.linalg.svdvals(dense_operator(narrow, shape))
    assert sv.max() <= 1 + TOL
    assert lipschitz_bound(nn.Sequential(narrow), shape) <= 1 + TOL


def test_eval_cache_and_invalidation() -> None:
    torch.manual_seed(5)
    m = BCOPConv2d(4, 4, 3)
    x = torch.randn(2, 4, 6, 6)
    y_train = m(x)
    assert m.orthogonal_kernel().requires_grad
    assert m.orthogonal_kernel() is not m.orthogonal_kernel()  # recomputed in training
    m.eval()
    k1 = m.orthogonal_kernel()
    assert m.orthogonal_kernel() is k1 and not k1.requires_grad
    assert torch.allclose(m(x), y_train, atol=1e-5)
    with torch.no_grad():
        m.ortho_param.add_(0.3 * torch.randn_like(m.ortho_param))
    k2 = m.orthogonal_kernel()
    assert k2 is not k1 and not torch.allclose(k1, k2, atol=1e-3)
    # Input gradients still flow in eval mode with the cached kernel.
    xg = x.clone().requires_grad_(True)
    m(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # Inference mode does not poison the cache.
    m.ortho_param.data.mul_(1.1)
    with torch.inference_mode():
        m(x)
    xg.grad = None
    m(xg).sum().backward()
    assert xg.grad is not None

    lin = BjorckLinear(6, 4).eval()
    w1 = lin.orthogonal_weight()
    assert lin.orthogonal_weight() is w1
    assert orthogonality_error(w1) < 1e-5
    lin.double()
    assert lin.orthogonal_weight().dtype == torch.float64


# --------------------------------------------------------------------------- layers


def test_maxmin_sorts_pairs_and_is_gradient_norm_preserving() -> None:
    torch.manual_seed(6)
    x = torch.randn(3, 6, 2, 2, requires_grad=True)
    y = MaxMin()(x)
    a, b = x.detach()[:, :3], x.detach()[:, 3:]
    assert torch.equal(y[:, :3], torch.maximum(a, b))
    assert torch.equal(y[:, 3:], torch.minimum(a, b))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(gx.norm(), g.norm())
    with pytest.raises(ValueError):
        MaxMin()(torch.randn(2, 5))


def test_bjorck_linear_is_orthonormal() -> None:
    torch.manual_seed(7)
    for fin, fout in [(10, 4), (4, 10), (8, 8)]:
        lin = BjorckLinear(fin, fout, bias=False, bjorck_iters=40)
        randomize(lin)
        lin.eval()
        sv = torch.linalg.svdvals(lin.orthogonal_weight().double())
        assert sv.min() >= 1 - 1e-5 and sv.max() <= 1 + 1e-5
        assert abs(lipschitz_bound(nn.Sequential(lin), (fin,)) - 1) < 1e-5


# --------------------------------------------------------------------------- bounds


def jacobian_norm_estimate(f: nn.Module, x: Tensor, iters: int = 30) -> float:
    """Power iteration on J^T J at x with torch.func.jvp / vjp: ||J(x)||_2."""
    v = torch.randn_like(x)
    sigma = 0.0
    for _ in range(iters):
        v = v / v.norm()
        jv = torch.func.jvp(f, (x,), (v,))[1]
        vjp_fn = torch.func.vjp(f, x)[1]
        (v,) = vjp_fn(jv)
        sigma = float(jv.detach().norm())
    return sigma


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_network_lipschitz_estimates_never_exceed_bound(padding_mode: PaddingMode) -> None:
    torch.manual_seed(8)
    std = (0.5, 0.25, 0.4)
    model = bcop_network(
        3,
        5,
        8,
        widths=(4, 8),
        kernel_size=3,
        hidden=(16,),
        mean=(0.5, 0.4, 0.3),
        std=std,
        padding_mode=padding_mode,
        bjorck_iters=30,
        power_iters=10,
    )
    randomize(model)
    model = model.double().eval()
    bound = lipschitz_bound(model, (3, 8, 8))
    assert bound <= 4.0 * (1 + 1e-6)  # every layer has norm <= 1; Normalize 1/min(std)
    assert bound > 3.9

    jac = [jacobian_norm_estimate(model, torch.rand(1, 3, 8, 8, dtype=torch.float64))]
    jac += [jacobian_norm_estimate(model, torch.rand(1, 3, 8, 8, dtype=torch.float64))]
    assert max(jac) <= bound * (1 + 1e-9)
    assert max(jac) > 0.2 * bound  # the estimator is not degenerate

    x = torch.rand(256, 3, 8, 8, dtype=torch.float64)
    y = x + 1e-3 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= bound * (1 + 1e-9)


def test_bound_accounts_for_normalization_and_plain_layers() -> None:
    torch.manual_seed(9)
    lin = nn.Linear(12, 5)
    body = nn.Sequential(nn.Flatten(), lin)
    plain = lipschitz_bound(body, (3, 2, 2))
    assert abs(plain - float(torch.linalg.matrix_norm(lin.weight.detach().double(), ord=2))) < 1e-9
    normed = nn.Sequential(Normalize((0.0, 0.0, 0.0), (1.0, 0.2, 0.5)), body)
    assert lipschitz_bound(normed, (3, 2, 2)) == pytest.approx(5 * plain, rel=1e-6)
    # The bound must hold for the plain (non-orthogonal) layer too.
    x = torch.randn(64, 3, 2, 2)
    with torch.no_grad():
        jac = torch.func.jacrev(normed)(x[:1]).reshape(5, 12)
    assert torch.linalg.matrix_norm(jac.double(), ord=2) <= 5 * plain * (1 + 1e-6)
    with pytest.raises(TypeError):
        lipschitz_bound(nn.Sequential(nn.Flatten(), nn.Tanh()), (3, 2, 2))


# --------------------------------------------------------------------------- certification


def test_certified_radius_brute_force() -> None:
    torch.manual_seed(11)
    model = bcop_network(1, 4, 4, widths=(4,), hidden=(8,), bjorck_iters=30)
    randomize(model)
    model = model.double().eval()
    x = torch.rand(16, 1, 4, 4, dtype=torch.float64)
    lip = lipschitz_bound(model, (1, 4, 4))
    radius = certified_radius(model, x)
    with torch.no_grad():
        logits = model(x)
    pred, margin = prediction_margin(logits)
    assert torch.equal(pred, logits.argmax(1))
    top2 = logits.topk(2, dim=1).values
    assert torch.allclose(margin, top2[:, 0] - top2[:, 1])
    assert torch.allclose(radius, margin / (math.sqrt(2) * lip), rtol=1e-12)
    assert torch.all(radius > 0)

    r = radius.view(-1, 1, 1, 1) * 0.999
    with torch.no_grad():
        for _ in range(50):  # random directions on the sphere of radius 0.999 r
            d = torch.randn_like(x)
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            assert torch.equal(model(x + r * d).argmax(1), pred)
    # A directed attack: projected gradient descent on the margin inside the ball.
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(30):
        out = model(x + delta)
        runner_up = out.scatter(1, pred[:, None], -math.inf).amax(1)
        gap = out.gather(1, pred[:, None]).squeeze(1) - runner_up
        (g,) = torch.autograd.grad(gap.sum(), delta)
        with torch.no_grad():
            step = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            delta -= 0.2 * r * step
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta *= torch.clamp(r / norm.clamp_min(1e-30), max=1.0)
    with torch.no_grad():
        out = model(x + delta)
        assert torch.equal(out.argmax(1), pred)
        # The margin drops by at most sqrt(2) L ||delta||, and the attack made it drop.
        _, new_margin = prediction_margin(out)
        drop = margin - new_margin
        assert torch.all(drop <= math.sqrt(2) * lip * r.flatten() * (1 + 1e-9))
        assert drop.mean() > 0


def test_certified_accuracy_combines_correctness_and_radius() -> None:
    torch.manual_seed(12)
    model = bcop_network(1, 3, 4, widths=(4,)).eval()
    x = torch.rand(32, 1, 4, 4)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[::3] = (y[::3] + 1) % 3  # every third label wrong
    radius = certified_radius(model, x)
    eps = float(radius.median())
    ok = certified_accuracy(model, x, y, eps)
    assert ok.dtype == torch.bool
    assert torch.equal(ok, (pred == y) & (radius >= eps))
    assert ok.any() and not ok.all() and not ok[::3].any()


# --------------------------------------------------------------------------- training


def test_training_reduces_hinge_loss() -> None:
    torch.manual_seed(13)
    model = bcop_network(3, 4, 8, widths=(4, 8), hidden=(16,), kernel_size=2)
    x = torch.rand(32, 3, 8, 8)
    y = torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    losses: list[float] = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.multi_margin_loss(model(x), y, margin=0.5)
        loss.backward()
        if not losses:
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    continue
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    assert lipschitz_bound(model, (3, 8, 8)) <= 1 + 1e-4


# --------------------------------------------------------------------------- Normalize


def test_one_normalize_for_models_and_certification() -> None:
    from car_attacks import models

    assert models.Normalize is Normalize
    norm = Normalize((0.5, 0.4, 0.3), (0.5, 0.25, 0.4))
    assert norm.lipschitz_constant() == pytest.approx(4.0)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 0.4]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x.double()), expected.double())
    assert norm(x.half()).dtype == torch.float16
    flat = torch.rand(5, 3)  # (N, C) inputs broadcast over the channel dimension too
    torch.testing.assert_close(norm(flat), (flat - norm.mean) / norm.std)
    shared = Normalize(127.0 / 255.0, 128.0 / 255.0)  # one value for every channel
    torch.testing.assert_close(shared(x), (x - 127 / 255) / (128 / 255))
    assert lipschitz_bound(nn.Sequential(shared, nn.Flatten()), (3, 4, 4)) == pytest.approx(
        255 / 128
    )
    for mean, std in (((0.0, 0.0), (1.0, 1.0, 1.0)), ((0.0,), (1.0, 0.0))):
        with pytest.raises(ValueError, match="same length|positive"):
            Normalize(mean, std)


def test_normalize_state_dict_keys() -> None:
    assert Normalize(0.5, 0.2).state_dict() == {}  # preprocessing stays out of checkpoints
    kept = Normalize((0.5,), (0.2,), persistent=True).state_dict()
    assert sorted(kept) == ["mean", "std"] and kept["std"].shape == (1,)
    net = bcop_network(3, 4, 4, widths=(4,), mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.4))
    state = net.state_dict()
    assert state["0.mean"].shape == state["0.std"].shape == (3,)
    again = bcop_network(3, 4, 4, widths=(4,), mean=(0.1, 0.1, 0.1), std=(1.0, 1.0, 1.0))
    again.load_state_dict(state)
    torch.testing.assert_close(again[0].std, torch.tensor([0.5, 0.25, 0.4]))
