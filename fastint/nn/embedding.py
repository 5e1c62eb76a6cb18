"""FieldEmbedding: a ``Batch`` of raw fields -> field embeddings ``[B, M, d]``.

All fields share one packed table (``fastint.ops.embedding_bag``), each owning a disjoint row range:

* categorical field with vocabulary V: rows ``[o, o + V)`` for ids ``0..V-1`` and row ``o + V`` for
  out-of-vocabulary ids (anything outside ``[0, V)``): ``e = T[o + id]``;
* numeric field: one row ``o``, scaled by the value (as AutoInt does): ``e = x * T[o]``;
* multi-valued field: like categorical (OOV row included), padding ``-1`` ignored, rows pooled by the
  field's ``pooling`` (mean over present ids, or sum); a bag with no ids embeds to zeros.

The output follows the schema's field order.
"""
from __future__ import annotations

import torch
from torch import nn

from fastint.ops._checks import check_finite, check_tensor
from fastint.ops.embedding_bag import embedding_bag
from fastint.schema import Batch, Schema


def _rows_per_field(schema: Schema) -> list[int]:
    return [1 if f.kind == "numeric" else f.vocab_size + 1 for f in schema.fields]


class FieldEmbedding(nn.Module):
    """Embeds every field of ``schema`` into ``embed_dim`` dimensions (``[B, M, embed_dim]``).

    ``sparse=True`` makes the table's gradient a sparse COO tensor (use with SparseAdam/SGD).
    ``embed_dim=1`` gives the first-order (linear) weights of FM-style models.
    """

    def __init__(self, schema: Schema, embed_dim: int, *, sparse: bool = False, init_std: float = 0.01):
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.schema = schema
        self.embed_dim = embed_dim
        self.sparse = sparse
        rows = _rows_per_field(schema)
        self.weight = nn.Parameter(torch.randn(sum(rows), embed_dim) * init_std)
        offsets = torch.tensor([0] + rows[:-1]).cumsum(0)
        kinds = {k: [i for i, f in enumerate(schema.fields) if f.kind == k]
                 for k in ("categorical", "numeric", "multi")}
        self._counts = {k: len(v) for k, v in kinds.items()}
        single = kinds["categorical"] + kinds["numeric"]
        self.register_buffer("single_offset", offsets[single], persistent=False)
        self.register_buffer("single_vocab", torch.tensor(
            [schema.fields[i].vocab_size for i in kinds["categorical"]], dtype=torch.long), persistent=False)
        self._multi_groups = [
            (pooling, [j for j, i in enumerate(kinds["multi"]) if schema.fields[i].pooling == pooling])
            for pooling in ("mean", "sum")
        ]
        self._multi_groups = [(p, js) for p, js in self._multi_groups if js]
        self.register_buffer("multi_offset", offsets[kinds["multi"]], persistent=False)
        self.register_buffer("multi_vocab", torch.tensor(
            [schema.fields[i].vocab_size for i in kinds["multi"]], dtype=torch.long), persistent=False)
        # Output slot m holds computed column order[m]: singles first, then multi groups in turn.
        computed = single + [kinds["multi"][j] for _, js in self._multi_groups for j in js]
        self._reorder = computed != sorted(computed)
        self.register_buffer("order", torch.argsort(torch.tensor(computed)), persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        self._check(batch)
        parts = []
        if self._counts["categorical"] or self._counts["numeric"]:
            parts.append(self._embed_single(batch))
        parts.extend(self._embed_multi(batch.multi, pooling, js) for pooling, js in self._multi_groups)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.index_select(1, self.order) if self._reorder else out

    def _embed_single(self, batch: Batch) -> torch.Tensor:
        """Categorical ids and numeric fields in one dense embedding_bag call: ``[B, Mc + Mn, d]``."""
        cols, weights = [], None
        if self._counts["categorical"]:
            ids = batch.categorical
            vocab = self.single_vocab
            cols.append(torch.where((ids >= 0) & (ids < vocab), ids, vocab))
        if self._counts["numeric"]:
            values = batch.numeric
            cols.append(torch.zeros_like(values, dtype=torch.long))
            ones = torch.ones(values.shape[0], self._counts["categorical"], dtype=self.weight.dtype,
                              device=values.device)
            weights = torch.cat([ones, values.to(self.weight.dtype)], dim=1)
        ids = torch.cat(cols, dim=1) + self.single_offset
        return embedding_bag(ids, self.weight, per_sample_weights=weights, mode="sum", sparse=self.sparse)

    def _embed_multi(self, multi: torch.Tensor, pooling: str, fields: list[int]) -> torch.Tensor:
        """Multi-valued fields ``[B, F, L]`` (padding -1) pooled in one CSR call: ``[B, F, d]``."""
        ids = multi[:, fields] if len(fields) != multi.shape[1] else multi
        vocab = self.multi_vocab[fields].view(1, -1, 1)
        packed = torch.where(ids < vocab, ids, vocab) + self.multi_offset[fields].view(1, -1, 1)
        packed = torch.where(ids < 0, -1, packed)
        batch, num, length = ids.shape
        offsets = torch.arange(0, batch * num * length + 1, length, device=ids.device)
        return embedding_bag(packed.reshape(-1), self.weight, offsets, mode=pooling,
                             sparse=self.sparse, num_fields=num)

    def _check(self, batch: Batch) -> None:
        expected = {"categorical": batch.categorical, "numeric": batch.numeric, "multi": batch.multi}
        sizes = {}
        for kind, t in expected.items():
            count = self._counts[kind]
            if count == 0:
                continue
            if t is None:
                raise ValueError(f"the schema has {count} {kind} field(s) but batch.{kind} is None")
            ndim = 3 if kind == "multi" else 2
            dtypes = (torch.int32, torch.int64) if kind != "numeric" else (torch.float16, torch.bfloat16,
                                                                            torch.float32, torch.float64)
            check_tensor(f"batch.{kind}", t, ndim=ndim, dtypes=dtypes)
            if t.shape[1] != count:
                raise ValueError(f"batch.{kind} has {t.shape[1]} fields, the schema has {count}")
            if t.device != self.weight.device:
                raise ValueError(f"batch.{kind} is on {t.device}, the embedding table on {self.weight.device}")
            sizes[kind] = t.shape[0]
        if any(size != next(iter(sizes.values())) for size in sizes.values()):  # SymInts: no set()
            raise ValueError(f"batch tensors disagree on the batch size: {sizes}")
        if self._counts["numeric"]:
            check_finite("batch.numeric", batch.numeric)
