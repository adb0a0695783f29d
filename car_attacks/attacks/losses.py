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
