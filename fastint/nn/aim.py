"""The building blocks of AIM (Zhu et al., TKDE) and AutoFIS (Liu et al., KDD 2020).

* ``FunctionWiseEmbedding``: ``T`` embedding tables over the same ids (one per interaction
  function, or ``T = 1`` shared) in one table-batched lookup, optionally with per-field dimensions
  pruned by the dimension search (the pruned entries are not parameters).
* ``MultiFunctionInteraction``: the gated interactions of one order,
  ``y = sum_{f, q} alpha_fq BN(Z)_fq`` with ``Z = fastint.ops.multi_function_interactions(...)``.
* ``DimensionGates``: AIM's embedding dimension search (EDS), ``e'_{t,m,k} = beta_{m,k} e_{t,m,k}``.

The gates ``alpha`` and ``beta`` are the *architecture parameters*: the search trains them with GRDA
(``fastint.optim.GRDA``), which drives unneeded ones to exact zeros.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fastint.nn.embedding import FieldEmbedding, _rows_per_field
from fastint.ops.multi_function_interactions import multi_function_interactions
from fastint.reference.multi_function_interactions import FUNCTIONS, KERNEL, OUTER, SCALAR
from fastint.schema import Batch, Schema

GATE_INIT = 0.6       # AutoFIS/AIM's initial value of every architecture parameter
KERNEL_INIT_STD = 1e-3  # truncated normal (cut at 2 std, as TF's) for the kernels kappa and s


def _trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


class _KeptEntries(nn.Module):
    """Parametrization ``flat [S] -> table [N, C]``: zeros, with the kept entries (row-major order)
    taken from ``flat``. Entry ``(n, c)`` is kept iff ``keep[row_field[n], c]``."""

    def __init__(self, row_field: torch.Tensor, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("row_field", row_field, persistent=False)
        self.register_buffer("keep", keep, persistent=False)

    def _mask(self) -> torch.Tensor:
        return self.keep.index_select(0, self.row_field)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        mask = self._mask()
        return flat.new_zeros(mask.shape).masked_scatter(mask, flat)

    def right_inverse(self, table: torch.Tensor) -> torch.Tensor:
        return table[self._mask()]


class FunctionWiseEmbedding(nn.Module):
    """``T`` tables of dimension ``d`` for every field of ``schema``: ``batch -> E [B, T, M, d]``.

    One ``FieldEmbedding`` with ``T * d`` columns (one table-batched ``embedding_bag`` call for all
    fields and tables); column ``t * d + k`` of field ``m`` is ``E[:, t, m, k]``.

    ``dims``: per field, the kept positions ``K_m`` of ``0..d-1`` (AIM's eq. 16-18: a field keeps
    ``d_m = |K_m|`` dimensions, the same positions in all ``T`` tables); ``None`` keeps all. The
    packed table is then a parametrization of a flat vector holding only the kept entries
    (``embedding.parametrizations.weight.original``, ``T * sum_m rows_m d_m`` values: the state
    dict has the reduced sizes), and every other entry is a constant 0, so ``E`` is the reduced
    embedding zero-mapped back to ``d`` where the interaction functions need equal sizes.
    """

    def __init__(self, schema: Schema, embed_dim: int, tables: int = 1,
                 dims: Sequence[Sequence[int]] | None = None):
        super().__init__()
        if tables < 1:
            raise ValueError(f"tables must be >= 1, got {tables}")
        self.tables, self.embed_dim = tables, embed_dim
        self.embedding = FieldEmbedding(schema, tables * embed_dim)
        self.dims = None if dims is None else _check_dims(dims, schema.num_fields, embed_dim)
        if self.dims is not None:
            keep = torch.zeros(schema.num_fields, embed_dim, dtype=torch.bool)
            for m, kept in enumerate(self.dims):
                keep[m, list(kept)] = True
            rows = torch.tensor(_rows_per_field(schema))
            row_field = torch.repeat_interleave(torch.arange(schema.num_fields), rows)
            parametrize.register_parametrization(self.embedding, "weight",
                                                 _KeptEntries(row_field, keep.repeat(1, tables)))

    def kept_columns(self, tables: int | None = None) -> torch.Tensor | None:
        """Indices of the non-constant columns of ``E[:, :tables].flatten(1)`` (order ``t, m, k``;
        default all tables), or ``None`` when nothing is pruned."""
        if self.dims is None:
            return None
        m = len(self.dims)
        keep = torch.zeros(tables or self.tables, m, self.embed_dim, dtype=torch.bool)
        for i, kept in enumerate(self.dims):
            keep[:, i, list(kept)] = True
        return keep.flatten().nonzero().squeeze(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        with parametrize.cached():  # the lookup reads the (computed) table more than once
            e = self.embedding(batch)                                   # [B, M, T*d]
        b, m, _ = e.shape
        return e.view(b, m, self.tables, self.embed_dim).transpose(1, 2)  # [B, T, M, d]


def _check_dims(dims, num_fields: int, embed_dim: int) -> tuple[tuple[int, ...], ...]:
    dims = tuple(tuple(int(k) for k in kept) for kept in dims)
    if len(dims) != num_fields:
        raise ValueError(f"dims needs one list of kept positions per field ({num_fields}), got {len(dims)}")
    for m, kept in enumerate(dims):
        if len(set(kept)) != len(kept) or any(not 0 <= k < embed_dim for k in kept):
            raise ValueError(f"dims[{m}] must list distinct positions in 0..{embed_dim - 1}, got {list(kept)}")
    return dims


class MultiFunctionInteraction(nn.Module):
    """Gated multi-function interactions of ``P`` tuples of one order ``p``: ``E [B, T, M, d] -> [B]``.

    ``Z = multi_function_interactions(E, tuples, kappa, s, w, functions, mask)`` ``[B, F, P]``
    (inner ``sum_k prod_r e_r[k]``, kernel ``sum_k kappa_q[k] prod_r e_r[k]``, scalar
    ``s_q sum_k prod_r e_r[k]``, outer ``prod_r (w_r . e_r)``), then, on ``Z`` flattened to
    ``[B, F*P]`` (index ``f * P + q``)::

        y = sum_{f,q} mask_fq alpha_fq BN(Z)_fq,   BN(z) = (z - mean_B z) / sqrt(var_B z + eps)

    a batch norm without scale and shift (momentum 0.01 and eps 1e-3: TF's 0.99 / 1e-3 as the
    authors use; running statistics in eval mode, and for a training batch of one sample, whose
    batch statistics are undefined). Inactive entries (``mask`` false) are 0 in ``Z`` (the fused
    kernel skips them), stay 0 after BN, and their gates are masked: they contribute nothing.

    Parameters: ``kappa [P, d]`` and ``s [P]`` (iff the kernel / scalar functions are used;
    truncated normal, std 1e-3, as AIM's authors initialise both kernels), ``w [p, d]`` (iff
    outer; Xavier-normal: with a near-zero init the product of ``p`` projections sits on a saddle)
    and the gates ``alpha [F*P]`` (``gates`` flattened, default 0.6 everywhere as AutoFIS).
    ``fixed_gates=True`` (retraining) makes ``alpha`` a buffer: frozen, not seen by optimizers.

    Args:
        num_fields: ``M`` (the tuples index ``0..M-1``).
        embed_dim: ``d``.
        tuples: int ``[P, p]`` distinct fields per tuple.
        functions: the ``F`` interaction functions (``fastint.reference.multi_function_interactions.FUNCTIONS``).
        mask: bool ``[F, P]`` active entries (default: where ``gates != 0``, i.e. all).
        gates: ``[F, P]`` initial (or, with ``fixed_gates``, fixed) values of ``alpha``.
    """

    def __init__(self, num_fields: int, embed_dim: int, tuples, functions: Sequence[str] = FUNCTIONS,
                 mask: torch.Tensor | None = None, *, gates=None, fixed_gates: bool = False,
                 momentum: float = 0.01, eps: float = 1e-3):
        super().__init__()
        tuples = torch.as_tensor(tuples, dtype=torch.long)
        if tuples.dim() != 2 or tuples.shape[0] == 0 or not 2 <= tuples.shape[1] <= 4:
            raise ValueError(f"tuples must be a non-empty [P, p] list with p in 2..4, got shape {list(tuples.shape)}")
        if int(tuples.min()) < 0 or int(tuples.max()) >= num_fields:
            raise ValueError(f"tuples must index fields 0..{num_fields - 1}")
        self.functions = tuple(functions)
        num_tuples, order = tuples.shape
        shape = (len(self.functions), num_tuples)
        gates = torch.full(shape, GATE_INIT) if gates is None else torch.as_tensor(gates, dtype=torch.float32)
        if tuple(gates.shape) != shape:
            raise ValueError(f"gates must have shape [F, P] = {list(shape)}, got {list(gates.shape)}")
        mask = gates != 0 if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask must have shape [F, P] = {list(shape)}, got {list(mask.shape)}")
        self.order, self.fixed_gates, self.momentum, self.eps = order, fixed_gates, momentum, eps
        self._dense = bool(mask.all())  # no holes: the op computes every entry without a mask
        self.register_buffer("tuples", tuples, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.kappa = nn.Parameter(_trunc_normal_(torch.empty(num_tuples, embed_dim), KERNEL_INIT_STD)) \
            if KERNEL in self.functions else None
        self.s = nn.Parameter(_trunc_normal_(torch.empty(num_tuples), KERNEL_INIT_STD)) \
            if SCALAR in self.functions else None
        self.w = nn.Parameter(nn.init.xavier_normal_(torch.empty(order, embed_dim))) \
            if OUTER in self.functions else None
        alpha = gates.flatten().clone()
        if fixed_gates:
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = nn.Parameter(alpha)
        self.register_buffer("running_mean", torch.zeros(alpha.numel()))
        self.register_buffer("running_var", torch.ones(alpha.numel()))

    def interactions(self, e: torch.Tensor) -> torch.Tensor:
        """``Z [B, F, P]`` (0 where inactive)."""
        return multi_function_interactions(e, self.tuples, self.kappa, self.s, self.w, functions=self.functions,
                                           mask=None if self._dense else self.mask)

    def gate_matrix(self) -> torch.Tensor:
        """The effective gates ``mask * alpha`` as ``[F, P]`` (detached)."""
        return (self.alpha.detach().view(self.mask.shape) * self.mask).clone()

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        z = self.interactions(e).flatten(1)                                    # [B, F*P]
        batch_stats = self.training and z.shape[0] > 1
        normed = F.batch_norm(z, self.running_mean, self.running_var, training=batch_stats,
                              momentum=self.momentum, eps=self.eps)
        gates = self.alpha * self.mask.flatten().to(self.alpha.dtype)
        return normed @ gates.to(normed.dtype)


class DimensionGates(nn.Module):
    """AIM's embedding dimension search (EDS, eq. 15): ``E [B, T, M, d] -> beta * E``.

    ``beta [M, d]`` gates every dimension of every field, shared by the ``T`` function-wise tables
    of a field (broadcast over ``T``); initialised to 0.6 like the interaction gates. After the
    search a field keeps the positions where ``beta != 0`` (eq. 16-18, ``kept_positions``).
    """

    def __init__(self, num_fields: int, embed_dim: int, init: float = GATE_INIT):
        super().__init__()
        self.beta = nn.Parameter(torch.full((num_fields, embed_dim), float(init)))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e * self.beta.to(e.dtype)

    def kept_positions(self) -> list[list[int]]:
        """Per field, the positions ``k`` with ``beta[m, k] != 0`` (``d_m`` = their count)."""
        return [row.nonzero().squeeze(1).tolist() for row in self.beta.detach().cpu()]
