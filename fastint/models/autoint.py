"""AutoInt and AutoInt+ (Song et al., CIKM 2019).

``e = FieldEmbedding(batch)`` ``[B, M, d]`` -> ``L`` interacting layers (multi-head self-attention
over fields, ``fastint.nn.InteractingLayer``) -> ``x_L [B, M, H*dh]`` -> ``logit = w^T vec(x_L) + b``.
AutoInt+ (``dnn_hidden_units`` non-empty) adds a feed-forward tower on ``vec(e)`` whose logit is added,
as in the authors' code. ``variant`` picks the interacting layer's formulation (see
``fastint.nn.interacting.VARIANTS``): ``"tf"`` (authors' code, default), ``"paper"``, ``"deepctr"``,
``"fuxictr"``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastint.models.base import CTRModel
from fastint.nn.embedding import FieldEmbedding
from fastint.nn.interacting import InteractingLayer
from fastint.nn.mlp import MLP
from fastint.schema import Batch, Schema


class AutoInt(CTRModel):
    name = "autoint"

    def __init__(self, schema: Schema, *, embed_dim: int = 16, num_layers: int = 3, num_heads: int = 2,
                 head_dim: int = 8, variant: str = "tf", dnn_hidden_units: Sequence[int] = (),
                 dnn_dropout: float = 0.0, task: str = "binary", sparse: bool = False):
        super().__init__(schema, task)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embedding = FieldEmbedding(schema, embed_dim, sparse=sparse)
        width = num_heads * head_dim
        self.layers = nn.ModuleList(
            InteractingLayer(embed_dim if i == 0 else width, head_dim, num_heads, variant=variant)
            for i in range(num_layers)
        )
        self.output = nn.Linear(schema.num_fields * width, 1)
        self.dnn = (MLP(schema.num_fields * embed_dim, dnn_hidden_units, dropout=dnn_dropout)
                    if dnn_hidden_units else None)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B]``."""
        e = self.embedding(batch)
        x = e
        for layer in self.layers:
            x = layer(x)
        logit = self.output(x.flatten(1))
        if self.dnn is not None:
            logit = logit + self.dnn(e.flatten(1))
        return logit.squeeze(-1)

    @torch.no_grad()
    def explain(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Field-to-field attention of every layer: ``"attention/layer{i}"`` ``[B, H, M, M]``
        (row = query field, column = key field)."""
        x = self.embedding(batch)
        maps = {}
        for i, layer in enumerate(self.layers):
            x, maps[f"attention/layer{i}"] = layer(x, return_attention=True)
        return maps
