"""InterHAt's hierarchical attentional aggregation: all K orders in one fused kernel."""
from __future__ import annotations

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels import hierarchical_aggregation as kernels
from fastint.ops._checks import check_float_tensor, check_same_device, check_same_dtype, check_tensor
from fastint.ops._custom import absent, autocast_inputs, none_if_absent
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as _reference


@torch.library.custom_op("fastint::hierarchical_aggregation_forward", mutates_args=())
def _forward(x1: Tensor, weight: Tensor, bias: Tensor, context: Tensor,
             return_attention: bool) -> tuple[Tensor, Tensor]:
    """``(U, alpha)``; ``alpha`` is absent (``[0]``) unless ``return_attention``."""
    return kernels.forward(x1, weight, bias, context, return_attention)


@_forward.register_fake
def _(x1, weight, bias, context, return_attention):
    (batch, fields, dim), orders = x1.shape, weight.shape[0]
    alpha = x1.new_empty(batch, orders, fields) if return_attention else absent(x1)
    return x1.new_empty(batch, orders, dim), alpha


@torch.library.custom_op("fastint::hierarchical_aggregation_backward", mutates_args=())
def _backward(grad_u: Tensor | None, grad_alpha: Tensor | None, x1: Tensor, weight: Tensor,
              bias: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return kernels.backward(grad_u, grad_alpha, x1, weight, bias, context)


@_backward.register_fake
def _(grad_u, grad_alpha, x1, weight, bias, context):
    return tuple(torch.empty_like(t) for t in (x1, weight, bias, context))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])   # x1 and the weights: the backward recomputes the rest
    ctx.set_materialize_grads(False)     # an unused output (often alpha) passes None: no zeros to read


def _autograd_backward(ctx, grad_u, grad_alpha):
    return (*_backward(grad_u, none_if_absent(grad_alpha), *ctx.saved_tensors), None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(x1: Tensor, weight: Tensor, bias: Tensor, context: Tensor) -> None:
    check_float_tensor("x1", x1, ndim=3)
    check_float_tensor("weight", weight, ndim=3)
    orders, dim, att = weight.shape
    if orders == 0:
        raise ValueError("weight must hold at least one order (K >= 1), got shape [0, ...]")
    if x1.shape[1] == 0:
        raise ValueError(f"x1 must have at least one field, got shape {list(x1.shape)}")
    check_tensor("x1", x1, shape=(None, None, dim))
    check_float_tensor("bias", bias, shape=(orders, att))
    check_float_tensor("context", context, shape=(orders, att))
    check_same_device(x1=x1, weight=weight, bias=bias, context=context)
    check_same_dtype(x1=x1, weight=weight, bias=bias, context=context)


def hierarchical_aggregation(x1: Tensor, weight: Tensor, bias: Tensor, context: Tensor, *,
                             return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """InterHAt's attentional aggregation of orders ``1..K`` (Li et al., WSDM 2020).

    Args:
        x1: ``[B, M, d]`` field representations (the first-order features ``X_1``).
        weight: ``[K, d, a]`` per-order attention projections ``W_i``.
        bias: ``[K, a]`` per-order biases ``b_i``.
        context: ``[K, a]`` per-order context vectors ``c_i``.
        return_attention: also return the field attention of every order.

    For ``i = 1..K``: ``s_i^(j) = c_i . relu(W_i^T x_i^(j) + b_i)``, ``alpha_i = softmax_j(s_i)``,
    ``u_i = sum_j alpha_i^(j) x_i^(j)``, ``X_{i+1} = X_1 * u_i + X_i`` (``u_i`` broadcast over fields).

    Returns:
        ``U [B, K, d]`` (``u_1..u_K``), or ``(U, alpha [B, K, M])`` with ``return_attention``;
        in ``x1``'s dtype, differentiable. The fused kernels take fp32/fp16/bf16; float64 runs
        the reference. Under ``torch.autocast`` the tensors are cast to its dtype first.
    """
    x1, weight, bias, context = autocast_inputs(x1, weight, bias, context)
    _check(x1, weight, bias, context)
    if use_triton(x1):
        u, alpha = _forward(x1, weight, bias, context, return_attention)
        return (u, alpha) if return_attention else u
    return _reference(x1, weight, bias, context, return_attention=return_attention)
