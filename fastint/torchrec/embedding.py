"""``TorchrecFieldEmbedding`` and the ``Batch`` <-> ``KeyedJaggedTensor`` converters.

See the package docstring (``fastint.torchrec``) for the layouts and the design.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from fastint.nn.embedding import FieldEmbedding, _rows_per_field
from fastint.ops._checks import check_finite
from fastint.schema import Batch, Schema

TABLES = ("per_field", "grouped")
KINDS = ("categorical", "numeric", "multi")


def kjt_keys(schema: Schema) -> list[str]:
    """The KJT's keys: the field names grouped by kind as ``Batch`` groups them (categorical,
    numeric, multi-valued), each group in schema order."""
    return [f.name for kind in KINDS for f in schema.of_kind(kind)]


def _jagged(batch: Batch, schema: Schema, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-major ``(values, lengths)`` of the fields of one ``kind`` (rows of each field's table;
    for numeric fields the numbers themselves, whose id is row 0)."""
    count, size, t = len(schema.of_kind(kind)), batch.batch_size, getattr(batch, kind)
    ndim = 3 if kind == "multi" else 2
    if t is None or t.dim() != ndim or t.shape[0] != size or t.shape[1] != count:
        shape = None if t is None else list(t.shape)
        raise ValueError(f"batch.{kind} must be [{size}, {count}{', L' if ndim == 3 else ''}] for this schema, "
                         f"got {shape}")
    ones = torch.ones(count * size, dtype=torch.long, device=t.device)
    if kind == "numeric":
        check_finite("batch.numeric", t)
        return t.t().reshape(-1).float(), ones
    ids = t.long().transpose(0, 1)                                        # [M, B(, L)] feature-major
    vocab = torch.tensor([f.vocab_size for f in schema.of_kind(kind)], device=t.device).view(-1, *[1] * (t.dim() - 1))
    if kind == "categorical":
        return torch.where((ids >= 0) & (ids < vocab), ids, vocab).reshape(-1), ones
    present = ids >= 0
    return torch.minimum(ids, vocab)[present], present.sum(-1).reshape(-1)


def _kjt(batch: Batch, schema: Schema, kinds: tuple[str, ...], weighted: bool) -> KeyedJaggedTensor:
    """The KJT of the fields of ``kinds`` (keys: their names, kind after kind, each in schema order);
    with ``weighted``, numeric values become weights of id 0 and the other values weigh 1."""
    kinds = tuple(k for k in kinds if schema.of_kind(k))
    parts = [_jagged(batch, schema, kind) for kind in kinds]
    values = [torch.zeros_like(v, dtype=torch.long) if k == "numeric" else v for k, (v, _) in zip(kinds, parts)]
    weights = [v if k == "numeric" else torch.ones_like(v, dtype=torch.float) for k, (v, _) in zip(kinds, parts)]
    return KeyedJaggedTensor(keys=[f.name for k in kinds for f in schema.of_kind(k)], values=torch.cat(values),
                             lengths=torch.cat([n for _, n in parts]),
                             weights=torch.cat(weights) if weighted else None)


def batch_to_kjt(batch: Batch, schema: Schema) -> KeyedJaggedTensor:
    """Sample-major ``Batch`` -> feature-major ``KeyedJaggedTensor`` (keys ``kjt_keys(schema)``).

    Per key, ``B`` bags in sample order; a value is the row of the field's table (``_rows_per_field``):

    * categorical ``[B, Mc]``: one id per bag; an id outside ``[0, V)`` becomes the OOV row ``V``;
    * numeric ``[B, Mn]``: one value per bag, id ``0``, the number as its weight;
    * multi-valued ``[B, Mm, L]`` (padding ``-1``): the ids ``>= 0`` in slot order (``>= V`` -> ``V``),
      ``lengths`` = their count (an all-padding bag has length 0).

    ``weights`` (float32) are present iff the schema has numeric fields (1 for non-numeric values).
    """
    return _kjt(batch, schema, KINDS, weighted=bool(schema.of_kind("numeric")))


def kjt_to_batch(kjt: KeyedJaggedTensor, schema: Schema, multi_length: int | None = None) -> Batch:
    """Feature-major ``KeyedJaggedTensor`` (every field of ``schema`` a key, any key order, values as
    ``batch_to_kjt`` writes them) -> sample-major ``Batch``: categorical ids ``[B, Mc]`` (lengths
    must be 1), numeric weights ``[B, Mn]``, multi-valued ids ``[B, Mm, L]`` left-aligned and padded
    with ``-1`` to ``L = multi_length`` (default: the longest bag, at least 1). No label."""
    missing = [f.name for f in schema.fields if f.name not in kjt.keys()]
    if missing:
        raise ValueError(f"the KeyedJaggedTensor has no key(s) {missing}")
    jagged = kjt.to_dict()
    out = {}
    for kind in ("categorical", "numeric"):
        names = [f.name for f in schema.of_kind(kind)]
        if not names:
            continue
        if any(bool((jagged[n].lengths() != 1).any()) for n in names):
            raise ValueError(f"{kind} keys need exactly one value per bag")
        source = (lambda n: jagged[n].values()) if kind == "categorical" else (lambda n: jagged[n].weights())
        out[kind] = torch.stack([source(n) for n in names], dim=1)
    multi = schema.of_kind("multi")
    if multi:
        lengths = torch.stack([jagged[f.name].lengths() for f in multi], dim=1)     # [B, Mm]
        longest = int(lengths.max()) if lengths.numel() else 0
        length = max(1, longest) if multi_length is None else multi_length
        if longest > length:
            raise ValueError(f"a multi-valued bag has {longest} ids, more than multi_length={length}")
        ids = torch.full((*lengths.shape, length), -1, dtype=torch.long, device=lengths.device)
        for m, f in enumerate(multi):
            slots = torch.arange(length, device=lengths.device) < lengths[:, m, None]      # [B, L]
            ids[:, m][slots] = jagged[f.name].values().long()
        out["multi"] = ids
    return Batch(**out)


# the module's two EBCs and the field kinds each embeds: ids (unweighted) and numeric (weighted)
EBC_KINDS = {"ids": ("categorical", "multi"), "numeric": ("numeric",)}


class TorchrecFieldEmbedding(nn.Module):
    """``FieldEmbedding`` on torchrec ``EmbeddingBagCollection``s: ``Batch -> [B, M, embed_dim]``
    (schema order), the same maths and rows per field as ``fastint.nn.FieldEmbedding``.

    ``ebcs["ids"]`` embeds the categorical and multi-valued fields, ``ebcs["numeric"]`` (weighted)
    the numeric ones (torch's unsharded ``EmbeddingBag`` has no weighted mean, so weights stay
    apart). ``tables="per_field"``: one table per field (``t_<field>``), the unit table-wise sharding
    places. ``"grouped"``: one table per pooling mode (``sum_fields``, ``mean_fields``,
    ``numeric_fields``), each field owning a disjoint row range as in ``FieldEmbedding`` (fewer,
    larger tables: row-wise sharding splits them). The tables start normal with std ``init_std``, as
    ``FieldEmbedding``'s (their ``init_fn``), on ``device``.
    """

    def __init__(self, schema: Schema, embed_dim: int, *, tables: str = "per_field", init_std: float = 0.01,
                 device: torch.device | str | None = None):
        super().__init__()
        if tables not in TABLES:
            raise ValueError(f"tables must be one of {', '.join(TABLES)}, got {tables!r}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.schema, self.embed_dim, self.tables = schema, embed_dim, tables
        rows = dict(zip((f.name for f in schema.fields), _rows_per_field(schema)))
        self.row_ranges: dict[str, tuple[str, str, int, int]] = {}  # field -> (ebc, table, first row, rows)
        self.ebcs = nn.ModuleDict()
        for ebc, kinds in EBC_KINDS.items():
            fields = [f for f in schema.fields if f.kind in kinds]
            if not fields:
                continue
            configs: dict[str, dict] = {}
            for f in fields:
                pooling = f.pooling if f.kind == "multi" else "sum"
                table = f"t_{f.name}" if tables == "per_field" else (
                    "numeric_fields" if f.kind == "numeric" else f"{pooling}_fields")
                config = configs.setdefault(table, dict(
                    name=table, embedding_dim=embed_dim, num_embeddings=0, feature_names=[],
                    pooling=PoolingType[pooling.upper()], init_fn=partial(nn.init.normal_, std=init_std)))
                self.row_ranges[f.name] = (ebc, table, config["num_embeddings"], rows[f.name])
                config["num_embeddings"] += rows[f.name]
                config["feature_names"].append(f.name)
            self.ebcs[ebc] = EmbeddingBagCollection([EmbeddingBagConfig(**c) for c in configs.values()],
                                                    is_weighted=ebc == "numeric", device=device)
            # the KJT's values are rows of a field: shift them by the field's first row in its table
            keys = [f.name for k in kinds for f in schema.of_kind(k)]
            self.register_buffer(f"{ebc}_offset", torch.tensor([self.row_ranges[k][2] for k in keys]),
                                 persistent=False)
        self._orders: dict[tuple[str, ...], torch.Tensor] = {}   # EBC output keys -> schema order

    def table(self, field: str) -> torch.Tensor:
        """The rows ``[rows, embed_dim]`` of ``field`` (a view of its table; unsharded modules only)."""
        ebc, table, first, count = self.row_ranges[field]
        return self.ebcs[ebc].embedding_bags[table].weight[first:first + count]

    @classmethod
    def from_field_embedding(cls, embedding: FieldEmbedding, *, tables: str = "per_field") -> "TorchrecFieldEmbedding":
        """The same embedding (same schema, dimension and values, copied) on torchrec tables."""
        new = cls(embedding.schema, embedding.embed_dim, tables=tables, device=embedding.weight.device)
        rows = _rows_per_field(embedding.schema)
        with torch.no_grad():
            for f, packed in zip(embedding.schema.fields, embedding.weight.split(rows)):
                new.table(f.name).copy_(packed)
        return new

    def forward(self, batch: Batch) -> torch.Tensor:
        """Field embeddings ``[B, M, embed_dim]`` in schema order."""
        pooled = []
        for ebc, module in self.ebcs.items():
            kjt = _kjt(batch, self.schema, EBC_KINDS[ebc], weighted=ebc == "numeric")
            offset = getattr(self, f"{ebc}_offset")
            if self.tables == "grouped":
                shift = torch.repeat_interleave(offset, torch.tensor(kjt.length_per_key(), device=offset.device))
                kjt = KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values() + shift, lengths=kjt.lengths(),
                                        weights=kjt.weights_or_none())
            pooled.append(module(kjt))                                     # KeyedTensor [B, fields * d]
        keys = tuple(k for kt in pooled for k in kt.keys())   # the EBCs' order (a sharded EBC's differs)
        if keys not in self._orders:
            self._orders[keys] = torch.tensor([keys.index(f.name) for f in self.schema.fields])
        out = torch.cat([kt.values() for kt in pooled], dim=1) if len(pooled) > 1 else pooled[0].values()
        order = self._orders[keys].to(out.device)
        return out.view(out.shape[0], -1, self.embed_dim).index_select(1, order)
