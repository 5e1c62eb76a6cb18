"""fastint models on torchrec's sharded embeddings (optional: ``pip install fastint[torchrec]``;
pinned torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0 (CPU torch) or fbgemm-gpu 1.8.0 (CUDA torch), torch 2.13).

DDP keeps every table on every rank; torchrec's ``DistributedModelParallel`` (DMP) shards the
tables of an ``EmbeddingBagCollection`` (EBC) across ranks instead, table-, row- or column-wise,
and runs FBGEMM's table-batched embedding kernels (TBE). fastint's interaction layers sit on top
unchanged: ``TorchrecFieldEmbedding`` returns the same ``[B, M, d]`` field embeddings as
``fastint.nn.FieldEmbedding``, with the same maths and the same rows per field.

Layouts. A ``fastint.schema.Batch`` is *sample-major*: ``categorical [B, Mc]``, ``numeric [B, Mn]``,
``multi [B, Mm, L]`` padded with ``-1`` (bag ``(b, m)`` is row ``b``, field ``m``, as the CSR of
``fastint.ops.embedding_bag`` orders bags ``b * M + m``). torchrec's ``KeyedJaggedTensor`` (KJT) is
*feature-major*: one key per field, and per key its ``B`` bags in sample order, as ``values``
concatenated key after key with ``lengths [K * B]``. ``batch_to_kjt`` / ``kjt_to_batch`` convert;
the KJT's values are rows of the field's table (the out-of-vocabulary row ``V`` for ids outside the
vocabulary, as ``FieldEmbedding``).

Fields. Categorical: one id per bag, sum pooling. Multi-valued: a jagged bag of ids, the field's
pooling (mean or sum). Numeric: a *weighted feature*, one bag holding id 0 with the value as its
weight, sum pooling, so ``e = x * T[0]``; the numeric fields have their own, weighted EBC (torch's
unsharded ``EmbeddingBag`` cannot mean-pool weighted bags), the others an unweighted one
(``batch_to_kjt`` alone gives one KJT of all fields, weights 1 for non-numeric values). Tables: one
per field (``tables="per_field"``: what table-wise sharding spreads over ranks), or ``"grouped"``,
one per pooling mode with disjoint row ranges per field (as ``FieldEmbedding``'s packed table;
fewer, larger tables for row-wise sharding).

Models. ``fastint.models.build_model(..., embedding="torchrec")`` (or ``"torchrec_grouped"``)
builds any model as usual and replaces each of its ``FieldEmbedding``s by a
``TorchrecFieldEmbedding`` holding the same values (``replace_field_embeddings``): same seed, same
initial model. AIM's pruned dimensions (``dims``) have no torchrec equivalent and are refused.

Training (``fastint.train.trainer``). ``shard_model`` wraps the model in DMP: the planner places the
tables (``sharding``: ``auto`` | ``table_wise`` | ``row_wise`` | ``column_wise``), the embedding
optimizer (``rowwise_adagrad`` or ``adam``: FBGEMM's row-sparse versions, rows absent from a batch
untouched) is fused into the TBE backward (no embedding gradient is materialised; embedding
gradients are averaged over ranks like DDP's), and everything else (interactions, MLPs) stays
data-parallel: DMP wraps it in DDP and the trainer's dense optimizer steps it. Checkpoints keep the
sharded state sharded: every rank writes its shards and the fused optimizer's state with
``torch.distributed.checkpoint`` (``save_sharded`` / ``load_sharded``), rank 0 the dense rest.
"""
from __future__ import annotations

INSTALL_HINT = ("embedding='torchrec' needs torchrec 1.8.0 with fbgemm-gpu-cpu 1.8.0 (or fbgemm-gpu 1.8.0 "
                "for a CUDA torch): see the README's 'Beyond one GPU'")

try:
    import fbgemm_gpu  # noqa: F401  (torchrec's kernels; a mismatched build fails here)
    import torchrec  # noqa: F401
except (ImportError, OSError) as err:
    raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from err

from torch import nn
from torch.nn.utils import parametrize

from fastint.nn.embedding import FieldEmbedding
from fastint.torchrec.distributed import (EMBEDDING_OPTIMIZERS, SHARDINGS, load_sharded,
                                          save_sharded, shard_model, torchrec_embeddings)
from fastint.torchrec.embedding import TABLES, TorchrecFieldEmbedding, batch_to_kjt, kjt_keys, kjt_to_batch


def replace_field_embeddings(model: nn.Module, tables: str = "per_field") -> nn.Module:
    """Replace every ``FieldEmbedding`` inside ``model`` (in place) by a ``TorchrecFieldEmbedding``
    with the same values; returns ``model``."""
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, FieldEmbedding)]
    if any(parametrize.is_parametrized(child) for _, _, child in targets):
        raise ValueError("embedding='torchrec' cannot hold pruned embedding dimensions (AIM's dims)")
    for parent, name, child in targets:
        setattr(parent, name, TorchrecFieldEmbedding.from_field_embedding(child, tables=tables))
    return model


__all__ = ["EMBEDDING_OPTIMIZERS", "SHARDINGS", "TABLES", "TorchrecFieldEmbedding", "batch_to_kjt",
           "kjt_keys", "kjt_to_batch", "load_sharded", "replace_field_embeddings",
           "save_sharded", "shard_model", "torchrec_embeddings"]
