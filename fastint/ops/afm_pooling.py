"""AFM attention pooling over field pairs: one fused kernel, no ``[B, P, k]`` tensor."""
from __future__ import annotations

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels.afm_pooling import backward as _kernel_backward
from fastint.kernels.afm_pooling import forward as _kernel_forward
from fastint.ops._checks import (FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_same_dtype,
                                 check_tensor)
from fastint.reference.afm_pooling import afm_pooling as _reference
from fastint.reference.afm_pooling import all_pairs


@torch.library.custom_op("fastint::afm_pooling_forward", mutates_args=())
def _forward(e: Tensor, w: Tensor, b: Tensor, h: Tensor, pairs: Tensor,
             return_attention: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _kernel_forward(e, w, b, h, pairs, return_attention)


@_forward.register_fake
def _(e, w, b, h, pairs, return_attention):
    batch, _, dim = e.shape
    num_pairs = pairs.shape[0] if return_attention else 0
    return (e.new_empty(batch, dim), e.new_empty(batch, num_pairs),
            e.new_empty(batch, dim + 1, dtype=torch.float32))


@torch.library.custom_op("fastint::afm_pooling_backward", mutates_args=())
def _backward(grad_pooled: Tensor | None, grad_a: Tensor | None, e: Tensor, w: Tensor, b: Tensor,
              h: Tensor, pairs: Tensor, a: Tensor, stats: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernel_backward(grad_pooled, grad_a, e, w, b, h, pairs, a, stats)


@_backward.register_fake
def _(grad_pooled, grad_a, e, w, b, h, pairs, a, stats):
    return tuple(x.new_empty(x.shape) for x in (e, w, b, h))  # contiguous, like the kernel's


def _setup_context(ctx, inputs, output):
    e, w, b, h, pairs, _ = inputs
    _, a, stats = output
    # O(B M k + B (k + 1)) plus weights and pairs: a [B, P] is an output (saved, not copied;
    # [B, 0] when not requested); the [B, P, k] pair products are recomputed in the backward.
    ctx.save_for_backward(e, w, b, h, pairs, a, stats)
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_pooled, grad_a, _grad_stats):
    if grad_a is not None and grad_a.shape[1] == 0:
        grad_a = None
    grads = _backward(grad_pooled, grad_a, *ctx.saved_tensors)
    return (*grads, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(e: Tensor, w: Tensor, b: Tensor, h: Tensor, pairs: Tensor | None) -> None:
    check_tensor("e", e, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("w", w, ndim=2, dtypes=FLOAT_DTYPES)
    dim, att = w.shape
    check_tensor("e", e, shape=(None, None, dim))
    check_tensor("b", b, dtypes=FLOAT_DTYPES, shape=(att,))
    check_tensor("h", h, dtypes=FLOAT_DTYPES, shape=(att,))
    check_same_device(e=e, w=w, b=b, h=h, pairs=pairs)
    check_same_dtype(e=e, w=w, b=b, h=h)
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


def afm_pooling(e: Tensor, w: Tensor, b: Tensor, h: Tensor, pairs: Tensor | None = None, *,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """AFM's attention-based pooling of pairwise interactions (Xiao et al., IJCAI 2017).

    Args:
        e: ``[B, M, k]`` field embeddings (already scaled by the feature values).
        w: ``[k, t]`` attention projection ``W``; ``b``: ``[t]`` bias; ``h``: ``[t]`` projection.
        pairs: ``None`` = all pairs ``i < j`` in row-major order (``(0,1), (0,2), ..., (1,2),
            ...``; ``P = M (M - 1) / 2``), or an int32/int64 ``[P, 2]`` list of field pairs
            (any order, ``i != j``, indices in ``0..M-1``).
        return_attention: also return the attention weights.

    ``p_q = e_i * e_j`` for pair ``q = (i, j)``; ``s_q = h . relu(W^T p_q + b)``;
    ``a = softmax over pairs(s)`` per sample; ``pooled = sum_q a_q p_q``.

    Returns:
        ``pooled [B, k]``, or ``(pooled, a [B, P])``; in ``e``'s dtype, differentiable in ``e, w,
        b, h``. The kernel path saves only ``e``, the weights and, for the
        backward, ``[B, k + 1]`` fp32 statistics (the pair products are recomputed on chip).
    """
    _check(e, w, b, h, pairs)
    if use_triton(e):
        if pairs is None:
            pairs = all_pairs(e.shape[1], e.device)
        pooled, a, _ = _forward(e, w, b, h, pairs, return_attention)
        return (pooled, a) if return_attention else pooled
    return _reference(e, w, b, h, pairs, return_attention=return_attention)
