"""Table-batched sparse embedding bag: ``fastint.ops.embedding_bag`` over the C++/CUDA operators
``fastint::embedding_bag_*`` (csrc/), with fake kernels and autograd registered here."""
from __future__ import annotations

import os

import torch
from torch import Tensor

from fastint import _C  # noqa: F401  (defines the fastint::embedding_bag_* operators)
from fastint._backend import current_backend
from fastint.ops._checks import INDEX_DTYPES, check_same_device, check_tensor
from fastint.reference.embedding_bag import embedding_bag as _reference

MODES = {"sum": 0, "mean": 1}
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_ops = torch.ops.fastint


@torch.library.register_fake("fastint::embedding_bag_forward")
def _(weight, indices, offsets, per_sample_weights, mode, sparse=False):
    return weight.new_empty(offsets.shape[0] - 1, weight.shape[1])


@torch.library.register_fake("fastint::embedding_bag_weight_grad")
def _(grad_out, indices, offsets, per_sample_weights, mode, num_rows):
    return grad_out.new_empty(num_rows, grad_out.shape[1])


@torch.library.register_fake("fastint::embedding_bag_weight_grad_coalesced")
def _(grad_out, indices, offsets, per_sample_weights, mode, num_rows):
    unique = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty(unique, dtype=torch.long), grad_out.new_empty(unique, grad_out.shape[1])


@torch.library.register_fake("fastint::embedding_bag_psw_grad")
def _(grad_out, weight, indices, offsets, per_sample_weights, mode):
    return per_sample_weights.new_empty(indices.shape[0])


def _setup_context(ctx, inputs, output):
    weight, indices, offsets, per_sample_weights, mode, sparse = inputs
    ctx.save_for_backward(weight if ctx.needs_input_grad[3] else None, indices, offsets, per_sample_weights)
    ctx.mode, ctx.sparse, ctx.table_shape = mode, sparse, tuple(weight.shape)


def _backward(ctx, grad_out):
    weight, indices, offsets, psw = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_weight = grad_psw = None
    if ctx.needs_input_grad[0]:
        if ctx.sparse:
            ids, rows = _ops.embedding_bag_weight_grad_coalesced(grad_out, indices, offsets, psw, ctx.mode,
                                                                 ctx.table_shape[0])
            grad_weight = torch.sparse_coo_tensor(ids.unsqueeze(0), rows, ctx.table_shape, is_coalesced=True,
                                                  check_invariants=False)
        else:
            grad_weight = _ops.embedding_bag_weight_grad(grad_out, indices, offsets, psw, ctx.mode,
                                                         ctx.table_shape[0])
    if ctx.needs_input_grad[3]:
        grad_psw = _ops.embedding_bag_psw_grad(grad_out, weight, indices, offsets, psw, ctx.mode)
    return grad_weight, None, None, grad_psw, None, None


torch.library.register_autograd("fastint::embedding_bag_forward", _backward, setup_context=_setup_context)


def _data_checks_enabled(t: Tensor) -> bool:
    """Python value checks (id range, offsets) of CUDA inputs or the reference path; on CUDA they cost
    a host sync: on by default, off with ``FASTINT_CHECK_INPUTS=0`` (and while compiling)."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get("FASTINT_CHECK_INPUTS", "1") != "0"


def _check(indices, weight, offsets, per_sample_weights, mode, num_fields) -> int:
    """Validate the arguments; returns the number of fields ``M``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    check_tensor("weight", weight, ndim=2, dtypes=WEIGHT_DTYPES)
    check_same_device(weight=weight, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    if offsets is None:
        check_tensor("indices", indices, ndim=2, dtypes=INDEX_DTYPES)
        if num_fields not in (None, indices.shape[1]):
            raise ValueError(f"num_fields={num_fields} disagrees with indices of shape {list(indices.shape)}")
        fields = indices.shape[1]
    else:
        check_tensor("indices", indices, ndim=1, dtypes=INDEX_DTYPES)
        check_tensor("offsets", offsets, ndim=1, dtypes=INDEX_DTYPES)
        fields = 1 if num_fields is None else num_fields
        if fields < 1 or (offsets.shape[0] - 1) % fields != 0 or offsets.shape[0] < 1:
            raise ValueError(f"offsets must have B*num_fields+1 entries (num_fields={fields}), "
                             f"got {offsets.shape[0]}")
    if per_sample_weights is not None:
        check_tensor("per_sample_weights", per_sample_weights, dtypes=(weight.dtype,),
                     shape=tuple(indices.shape))
    return fields


def _check_values(indices, weight, offsets) -> None:
    if offsets is not None:
        first, last = int(offsets[0]), int(offsets[-1])
        if first != 0 or last != indices.shape[0]:
            raise ValueError(f"offsets must start at 0 and end at nnz={indices.shape[0]}, "
                             f"got {first} .. {last}")
        if bool((offsets.diff() < 0).any()):
            raise ValueError("offsets must be non-decreasing")
    if indices.numel() and int(indices.max()) >= weight.shape[0]:
        raise IndexError(f"embedding_bag: index {int(indices.max())} is out of range for an embedding "
                         f"table of {weight.shape[0]} rows")


def embedding_bag(indices: Tensor, weight: Tensor, offsets: Tensor | None = None,
                  per_sample_weights: Tensor | None = None, mode: str = "sum", sparse: bool = False,
                  num_fields: int | None = None) -> Tensor:
    """Pooled rows of one packed table ``weight [N, D]`` for ``B`` samples x ``M`` fields: ``[B, M, D]``.
    Ids first, as ``torch.nn.functional.embedding_bag`` and FBGEMM take them.

    ``out[b, m] = reduce_{e in bag(b, m), id_e >= 0} w_e * weight[id_e]``; ``reduce`` is ``sum``, or
    ``mean`` = sum / sum(w) (sum / count of present ids without weights; 0 for an empty bag).

    Args:
        indices: dense ``[B, M]`` (one id per sample and field) or CSR ``[nnz]``, int32/int64;
            a negative id is missing. An id >= N raises IndexError.
        weight: ``[N, D]`` fp32/fp16/bf16 (fp64 too) table shared by all fields (disjoint id ranges).
        offsets: CSR only, ``[B*M+1]`` non-decreasing bag starts in sample-major order
            (bag ``b*M+m``), ``offsets[0] = 0``, ``offsets[-1] = nnz``.
        per_sample_weights: like ``indices``, ``weight``'s dtype (e.g. numeric feature values).
        sparse: the weight gradient as a coalesced sparse COO tensor instead of dense ``[N, D]``.
        num_fields: ``M`` in the CSR form (default 1).

    Gradients: ``weight`` (dense, deterministic: sorted ids + segment sums, no atomics; or sparse)
    and ``per_sample_weights``. Accumulates in fp32; returns ``weight``'s dtype. On CUDA the id and
    offset checks cost a host sync; ``FASTINT_CHECK_INPUTS=0`` turns them off there.
    """
    fields = _check(indices, weight, offsets, per_sample_weights, mode, num_fields)
    backend = current_backend()
    if (indices.is_cuda or backend == "reference") and _data_checks_enabled(indices):
        _check_values(indices, weight, offsets)  # the C++ CPU kernel checks ids and offsets itself
    if backend == "reference":
        return _reference(indices, weight, offsets, per_sample_weights, mode, sparse, fields)
    if offsets is None:
        flat = indices.reshape(-1)
        offsets = torch.arange(flat.shape[0] + 1, device=indices.device)
        psw = per_sample_weights.reshape(-1) if per_sample_weights is not None else None
    else:
        flat, offsets, psw = indices, offsets.long(), per_sample_weights
    out = _ops.embedding_bag_forward(weight, flat, offsets, psw, MODES[mode], sparse)
    return out.view(-1, fields, weight.shape[1])
