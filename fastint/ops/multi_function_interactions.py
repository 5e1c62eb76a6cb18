"""``multi_function_interactions``: the gated interaction functions of AIM and AutoFIS."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.ops._checks import (INDEX_DTYPES, check_float_tensor, check_same_device, check_same_dtype,
                                 check_tensor)
from fastint.kernels import multi_function_interactions as kernels
from fastint.ops._custom import absent, autocast_inputs, none_if_absent
from fastint.reference.multi_function_interactions import FUNCTIONS, KERNEL, OUTER, SCALAR
from fastint.reference.multi_function_interactions import multi_function_interactions as _reference

MAX_ORDER = 4


@torch.library.custom_op("fastint::multi_function_interactions_forward", mutates_args=())
def _forward(embeddings: Tensor, tuples: Tensor, kappa: Tensor | None, s: Tensor | None,
             w: Tensor | None, codes: list[int], mask: Tensor | None) -> Tensor:
    """``Z [B, F, P]``; ``codes``: the functions as indices into ``FUNCTIONS``."""
    plan = kernels.build_plan(tuples, mask, codes, embeddings.shape[1])
    return kernels.forward(embeddings, plan, kappa, s, w)


@_forward.register_fake
def _(embeddings, tuples, kappa, s, w, codes, mask):
    return embeddings.new_empty(embeddings.shape[0], len(codes), tuples.shape[0])


@torch.library.custom_op("fastint::multi_function_interactions_backward", mutates_args=())
def _backward(grad_z: Tensor, embeddings: Tensor, tuples: Tensor, kappa: Tensor | None,
              s: Tensor | None, w: Tensor | None, codes: list[int], mask: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dE, dkappa, ds, dw)``; the gradient of an absent parameter is absent (``[0]``)."""
    plan = kernels.build_plan(tuples, mask, codes, embeddings.shape[1])
    grads = kernels.backward(grad_z, embeddings, plan, kappa, s, w)
    return tuple(absent(embeddings) if g is None else g for g in grads)


@_backward.register_fake
def _(grad_z, embeddings, tuples, kappa, s, w, codes, mask):
    return tuple(absent(embeddings) if t is None else torch.empty_like(t) for t in (embeddings, kappa, s, w))


def _setup_context(ctx, inputs, output):
    embeddings, tuples, kappa, s, w, codes, mask = inputs
    # only the inputs: the [B, P, d] products are recomputed in the backward
    ctx.save_for_backward(embeddings, tuples, kappa, s, w, mask)
    ctx.codes = codes


def _autograd_backward(ctx, grad_z):
    embeddings, tuples, kappa, s, w, mask = ctx.saved_tensors
    grads = _backward(grad_z, embeddings, tuples, kappa, s, w, ctx.codes, mask)
    grad_kappa, grad_s, grad_w = (none_if_absent(g) for g in grads[1:])
    return grads[0], None, grad_kappa, grad_s, grad_w, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check_functions(functions: Sequence[str]) -> tuple[str, ...]:
    functions = tuple(functions) if not isinstance(functions, str) else (functions,)
    unknown = [f for f in functions if f not in FUNCTIONS]
    if not functions or unknown:
        raise ValueError(f"functions must be a non-empty list of {FUNCTIONS}, got {list(functions)}")
    if len(set(functions)) != len(functions):
        raise ValueError(f"each interaction function may appear once, got {list(functions)}")
    return functions


def _check_parameter(name: str, t: Tensor | None, function: str, functions: tuple[str, ...],
                     shape: tuple[int, ...]) -> None:
    if function in functions:
        if t is None:
            raise ValueError(f"the {function!r} function needs {name} of shape {list(shape)}")
        check_float_tensor(name, t, shape=shape)
    elif t is not None:
        raise ValueError(f"{name} is only used by the {function!r} function, which is not in "
                         f"functions={list(functions)}")


def _check(embeddings: Tensor, tuples: Tensor, kappa: Tensor | None, s: Tensor | None,
           w: Tensor | None, functions: tuple[str, ...], mask: Tensor | None) -> None:
    check_float_tensor("embeddings", embeddings, ndim=4)
    batch, tables, fields, dim = embeddings.shape
    if tables not in (1, len(functions)):
        raise ValueError(f"embeddings must have 1 table (shared) or one per function "
                         f"({len(functions)}), got shape {list(embeddings.shape)}")
    check_tensor("tuples", tuples, dtypes=INDEX_DTYPES, ndim=2)
    num_tuples, order = tuples.shape
    if num_tuples == 0 or not 2 <= order <= MAX_ORDER:
        raise ValueError(f"tuples must be a non-empty [P, p] list with order p in 2..{MAX_ORDER}, "
                         f"got shape {list(tuples.shape)}")
    _check_parameter("kappa", kappa, KERNEL, functions, (num_tuples, dim))
    _check_parameter("s", s, SCALAR, functions, (num_tuples,))
    _check_parameter("w", w, OUTER, functions, (order, dim))
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), shape=(len(functions), num_tuples))
    check_same_device(embeddings=embeddings, tuples=tuples, kappa=kappa, s=s, w=w, mask=mask)
    check_same_dtype(embeddings=embeddings, kappa=kappa, s=s, w=w)
    if torch.compiler.is_compiling():
        return  # value checks need a host sync; they ran when the eager path saw these tuples
    low, high = int(tuples.min()), int(tuples.max())
    if low < 0 or high >= fields:
        raise ValueError(f"tuples must index fields 0..{fields - 1}, got values in [{low}, {high}]")
    ordered = tuples.sort(dim=1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("each tuple must join distinct fields, got a tuple with a repeated field")


def multi_function_interactions(embeddings: Tensor, tuples: Tensor, kappa: Tensor | None = None,
                                s: Tensor | None = None, w: Tensor | None = None, *,
                                functions: Sequence[str] = FUNCTIONS,
                                mask: Tensor | None = None) -> Tensor:
    """The interaction functions of AIM (Zhu et al., TKDE) and AutoFIS (Liu et al., KDD 2020) on
    function-wise embeddings, one value per sample, function and tuple of fields.

    Args:
        embeddings: ``[B, T, M, d]`` field embeddings: one table per function (``T = F``,
            function ``f`` reads table ``f``) or one shared table (``T = 1``).
        tuples: int32/int64 ``[P, p]``, tuples of ``p = 2..4`` distinct fields in ``0..M-1``.
        kappa: ``[P, d]`` the vector kernels (needed iff ``"kernel"`` is a function).
        s: ``[P]`` the scalar kernels (iff ``"scalar"``).
        w: ``[p, d]`` the rank-1 projections ``w_r`` of the outer function, shared by all tuples
            (iff ``"outer"``).
        functions: which function each of the ``F`` outputs computes, a sequence of distinct
            names among ``"inner", "kernel", "scalar", "outer"`` (default all four, in that order).
        mask: bool ``[F, P]``, the active (function, tuple) entries (``None``: all). Inactive
            entries cost nothing in the fused kernels and are 0 in ``Z``.

    With ``e_r = embeddings[b, t_f, q_r]`` and ``prod = prod_r e_r`` (elementwise) for tuple ``q``:
    ``inner = sum_k prod[k]``, ``kernel = sum_k kappa_q[k] prod[k]``, ``scalar = s_q sum_k
    prod[k]``, ``outer = prod_r (w_r . e_r)``.

    Returns:
        ``Z [B, F, P]`` in ``embeddings``' dtype, differentiable in ``embeddings, kappa, s, w``.
        The fused kernels never materialise the ``[B, P, d]`` products, forward or backward, and
        take fp32/fp16/bf16; float64 runs the reference. Under ``torch.autocast`` the tensors are
        cast to its dtype first.
    """
    functions = _check_functions(functions)
    embeddings, kappa, s, w = autocast_inputs(embeddings, kappa, s, w)
    _check(embeddings, tuples, kappa, s, w, functions, mask)
    if use_triton(embeddings):
        return _forward(embeddings, tuples, kappa, s, w, [FUNCTIONS.index(f) for f in functions], mask)
    return _reference(embeddings, tuples, kappa, s, w, functions=functions, mask=mask)
