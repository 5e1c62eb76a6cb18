"""AFM attention pooling over field pairs: one fused kernel, no ``[B, P, k]`` tensor."""
from __future__ import annotations

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels import afm_pooling as kernels
from fastint.ops._checks import (INDEX_DTYPES, check_float_tensor, check_same_device, check_same_dtype,
                                 check_tensor)
from fastint.ops._custom import absent, autocast_inputs, none_if_absent
from fastint.reference.afm_pooling import afm_pooling as _reference
from fastint.reference.afm_pooling import all_pairs


@torch.library.custom_op("fastint::afm_pooling_forward", mutates_args=())
def _forward(e: Tensor, weight: Tensor, bias: Tensor, projection: Tensor, pairs: Tensor,
             return_attention: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(pooled, a, stats)``; ``a`` is absent (``[0]``) unless ``return_attention``."""
    return kernels.forward(e, weight, bias, projection, pairs, return_attention)


@_forward.register_fake
def _(e, weight, bias, projection, pairs, return_attention):
    batch, _, dim = e.shape
    attention = e.new_empty(batch, pairs.shape[0]) if return_attention else absent(e)
    return e.new_empty(batch, dim), attention, e.new_empty(batch, dim + 1, dtype=torch.float32)


@torch.library.custom_op("fastint::afm_pooling_backward", mutates_args=())
def _backward(grad_pooled: Tensor | None, grad_a: Tensor | None, e: Tensor, weight: Tensor,
              bias: Tensor, projection: Tensor, pairs: Tensor, a: Tensor, stats: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return kernels.backward(grad_pooled, grad_a, e, weight, bias, projection, pairs, a, stats)


@_backward.register_fake
def _(grad_pooled, grad_a, e, weight, bias, projection, pairs, a, stats):
    return tuple(torch.empty_like(t) for t in (e, weight, bias, projection))


def _setup_context(ctx, inputs, output):
    e, weight, bias, projection, pairs, _ = inputs
    _, a, stats = output
    # O(B M k + B (k + 1)) plus weights and pairs: a [B, P] is an output (saved, not copied;
    # absent when not requested); the [B, P, k] pair products are recomputed in the backward.
    ctx.save_for_backward(e, weight, bias, projection, pairs, a, stats)
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_pooled, grad_a, _grad_stats):
    return (*_backward(grad_pooled, none_if_absent(grad_a), *ctx.saved_tensors), None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(e: Tensor, weight: Tensor, bias: Tensor, projection: Tensor, pairs: Tensor | None) -> None:
    check_float_tensor("e", e, ndim=3)
    check_float_tensor("weight", weight, ndim=2)
    dim, att = weight.shape
    check_tensor("e", e, shape=(None, None, dim))
    check_float_tensor("bias", bias, shape=(att,))
    check_float_tensor("projection", projection, shape=(att,))
    check_same_device(e=e, weight=weight, bias=bias, projection=projection, pairs=pairs)
    check_same_dtype(e=e, weight=weight, bias=bias, projection=projection)
    fields = e.shape[1]
    if pairs is None:
        if fields < 2:
            raise ValueError("afm_pooling needs at least 2 fields to form pairs, "
                             f"got e of shape {list(e.shape)}")
        return
    check_tensor("pairs", pairs, dtypes=INDEX_DTYPES, shape=(None, 2))
    if pairs.shape[0] == 0:
        raise ValueError("pairs must hold at least one pair, got shape [0, 2]")
    if torch.compiler.is_compiling():
        return  # value checks need a host sync; they ran when the eager path saw these pairs
    low, high = int(pairs.min()), int(pairs.max())
    if low < 0 or high >= fields:
        raise ValueError(f"pairs must index fields 0..{fields - 1}, got values in [{low}, {high}]")
    if bool((pairs[:, 0] == pairs[:, 1]).any()):
        raise ValueError("pairs must join two different fields, got a pair (i, i)")


def afm_pooling(e: Tensor, weight: Tensor, bias: Tensor, projection: Tensor, pairs: Tensor | None = None,
                *, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """AFM's attention-based pooling of pairwise interactions (Xiao et al., IJCAI 2017).

    Args:
        e: ``[B, M, k]`` field embeddings (already scaled by the feature values).
        weight: ``[k, t]`` attention projection ``W``; ``bias``: ``[t]`` ``b``; ``projection``:
            ``[t]`` the attention's output vector ``h``.
        pairs: ``None`` = all pairs ``i < j`` in row-major order (``(0,1), (0,2), ..., (1,2),
            ...``; ``P = M (M - 1) / 2``), or an int32/int64 ``[P, 2]`` list of field pairs
            (any order, ``i != j``, indices in ``0..M-1``).
        return_attention: also return the attention weights.

    ``p_q = e_i * e_j`` for pair ``q = (i, j)``; ``s_q = h . relu(W^T p_q + b)``;
    ``a = softmax over pairs(s)`` per sample; ``pooled = sum_q a_q p_q``.

    Returns:
        ``pooled [B, k]``, or ``(pooled, a [B, P])`` with ``return_attention``; in ``e``'s
        dtype, differentiable in ``e, weight, bias, projection``. The kernel path saves only
        ``e``, the weights and ``[B, k + 1]`` fp32 statistics (the pair products are recomputed
        on chip). The fused kernels take fp32/fp16/bf16; float64 runs the reference. Under
        ``torch.autocast`` the tensors are cast to its dtype first (half-precision kernels).
    """
    e, weight, bias, projection = autocast_inputs(e, weight, bias, projection)
    _check(e, weight, bias, projection, pairs)
    if use_triton(e):
        if pairs is None:
            pairs = all_pairs(e.shape[1], e.device)
        pooled, a, _ = _forward(e, weight, bias, projection, pairs, return_attention)
        return (pooled, a) if return_attention else pooled
    return _reference(e, weight, bias, projection, pairs, return_attention=return_attention)
