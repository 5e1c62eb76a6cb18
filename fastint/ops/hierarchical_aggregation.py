"""InterHAt's hierarchical attentional aggregation: all K orders in one fused kernel."""
from __future__ import annotations

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels.hierarchical_aggregation import backward as _kernel_backward
from fastint.kernels.hierarchical_aggregation import forward as _kernel_forward
from fastint.ops._checks import FLOAT_DTYPES, check_same_device, check_same_dtype, check_tensor
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as _reference


@torch.library.custom_op("fastint::hierarchical_aggregation_forward", mutates_args=())
def _forward(x1: Tensor, w: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return _kernel_forward(x1, w, b, c)


@_forward.register_fake
def _(x1, w, b, c):
    (batch, fields, dim), orders = x1.shape, w.shape[0]
    return x1.new_empty(batch, orders, dim), x1.new_empty(batch, orders, fields)


@torch.library.custom_op("fastint::hierarchical_aggregation_backward", mutates_args=())
def _backward(grad_u: Tensor | None, grad_alpha: Tensor | None, x1: Tensor, w: Tensor, b: Tensor,
              c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernel_backward(grad_u, grad_alpha, x1, w, b, c)


@_backward.register_fake
def _(grad_u, grad_alpha, x1, w, b, c):
    return tuple(t.new_empty(t.shape) for t in (x1, w, b, c))  # contiguous, like the kernel's


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.set_materialize_grads(False)  # an unused output (often alpha) passes None: no zeros to read


def _autograd_backward(ctx, grad_u, grad_alpha):
    return _backward(grad_u, grad_alpha, *ctx.saved_tensors)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(x1: Tensor, w: Tensor, b: Tensor, c: Tensor) -> None:
    check_tensor("x1", x1, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("w", w, ndim=3, dtypes=FLOAT_DTYPES)
    orders, dim, att = w.shape
    if orders == 0:
        raise ValueError("w must hold at least one order (K >= 1), got shape [0, ...]")
    if x1.shape[1] == 0:
        raise ValueError(f"x1 must have at least one field, got shape {list(x1.shape)}")
    check_tensor("x1", x1, shape=(None, None, dim))
    check_tensor("b", b, dtypes=FLOAT_DTYPES, shape=(orders, att))
    check_tensor("c", c, dtypes=FLOAT_DTYPES, shape=(orders, att))
    check_same_device(x1=x1, w=w, b=b, c=c)
    check_same_dtype(x1=x1, w=w, b=b, c=c)


def hierarchical_aggregation(x1: Tensor, w: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """InterHAt's attentional aggregation of orders ``1..K`` (Li et al., WSDM 2020).

    Args:
        x1: ``[B, M, d]`` field representations (the first-order features ``X_1``).
        w: ``[K, d, a]`` per-order attention projections ``W_i``.
        b: ``[K, a]`` per-order biases.
        c: ``[K, a]`` per-order context vectors.

    For ``i = 1..K``: ``s_i^(j) = c_i . relu(W_i^T x_i^(j) + b_i)``, ``alpha_i = softmax_j(s_i)``,
    ``u_i = sum_j alpha_i^(j) x_i^(j)``, ``X_{i+1} = X_1 * u_i + X_i`` (``u_i`` broadcast over fields).

    Returns:
        ``U [B, K, d]`` (``u_1..u_K``) and ``alpha [B, K, M]``, in ``x1``'s dtype; both differentiable.
    """
    _check(x1, w, b, c)
    if use_triton(x1):
        return _forward(x1, w, b, c)
    return _reference(x1, w, b, c)
