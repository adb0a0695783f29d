"""Losses and input gradients that leave the model untouched.

EagerPy's ``value_and_grad`` calls ``loss.backward()`` on PyTorch, which
accumulates ``.grad`` on every model parameter. Attacks here take gradients
with ``torch.autograd.grad`` with respect to the input only.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep

LossFn = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]
"""Maps inputs to ``(scalar loss, logits)``."""

PerSampleLoss = Callable[[ep.Tensor], ep.Tensor]
"""Maps logits ``(N, K)`` to one loss per sample ``(N,)`` (the attack ascends it)."""

DLR_STABILISER = 1e-12
"""Added to the DLR denominators against division by zero (Croce & Hein, 2020)."""


def loss_logits_and_grad(loss_fn: LossFn, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """``(loss, logits, d loss / d x)`` without side effects on model parameters."""
    if isinstance(x, ep.PyTorchTensor):
        import torch

        leaf = x.raw.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, logits = loss_fn(ep.astensor(leaf))
            (grad,) = torch.autograd.grad(loss.raw, leaf)
        return (
            ep.astensor(loss.raw.detach()),
            ep.astensor(logits.raw.detach()),
            ep.astensor(grad),
        )
    loss, logits, grad = ep.value_aux_and_grad(loss_fn, x)  # type: ignore[arg-type]
    return loss, logits, grad


def cross_entropy_loss(model: Callable[[ep.Tensor], ep.Tensor], labels: ep.Tensor) -> LossFn:
    """Summed cross-entropy of ``model`` towards ``labels`` (foolbox's default loss)."""

    def loss_fn(inputs: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        logits = model(inputs)
        return ep.crossentropy(logits, labels).sum(), logits

    return loss_fn


def class_margin(logits: ep.Tensor, labels: ep.Tensor) -> ep.Tensor:
    """Per sample ``z_y - max_{j != y} z_j`` (N,): positive while the label still wins.

    The numerator of the DLR loss (Croce & Hein, 2020) and the loss of FMN and DDN."""
    label_logit = logits[range(len(labels)), labels]
    others = ep.where(ep.onehot_like(logits, labels) > 0, -ep.inf, logits)
    return label_logit - others.max(axis=-1)


def summed_loss(model: Callable[[ep.Tensor], ep.Tensor], per_sample: PerSampleLoss) -> LossFn:
    """``inputs -> (sum of per_sample(model(inputs)), logits)``: one gradient for the batch,
    each sample's gradient that of its own loss."""

    def loss_fn(inputs: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        logits = model(inputs)
        return per_sample(logits).sum(), logits

    return loss_fn


def _check_classes(logits: ep.Tensor, needed: int, loss: str) -> ep.Tensor:
    """``logits`` sorted ascending along the classes; a ValueError if fewer than ``needed``."""
    if logits.shape[-1] < needed:
        raise ValueError(f"the {loss} loss needs >= {needed} classes, got {logits.shape[-1]}")
    return logits.sort(axis=-1)


def dlr_loss(logits: ep.Tensor, labels: ep.Tensor) -> ep.Tensor:
    """Per sample ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` (N,), ``pi`` the classes by
    decreasing logit: the Difference of Logits Ratio (Croce & Hein, ICML 2020, eq. 3)."""
    s = _check_classes(logits, 3, "DLR")
    return -class_margin(logits, labels) / (s[:, -1] - s[:, -3] + DLR_STABILISER)


def targeted_dlr_loss(logits: ep.Tensor, labels: ep.Tensor, targets: ep.Tensor) -> ep.Tensor:
    """Per sample ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (N,): the targeted DLR
    loss of APGD-T (Croce & Hein, ICML 2020, eq. 4), ``t`` the target class."""
    s = _check_classes(logits, 4, "targeted DLR")
    rows = range(len(labels))
    gap = logits[rows, labels] - logits[rows, targets]
    return -gap / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + DLR_STABILISER)
