"""AFM: Attentional Factorization Machines (Xiao et al., IJCAI 2017).

``y = b0 + sum_m <w_m, x_m> + p^T dropout( sum_{i<j} a_ij (e_i * e_j) )`` with
``a = softmax over pairs of h^T relu(W^T (e_i * e_j) + b)`` (``fastint.nn.AFMPooling``; the softmax
runs over the pair axis — the authors' released code softmaxes over a size-1 axis, which makes every
weight 1; not reproduced here). ``use_attention=False`` gives a plain FM with a projection ``p``.
``l2_attention`` is the L2 penalty on the attention network's ``W`` (``regularization_loss``).
``task="regression"`` makes the score the prediction (the paper trains squared loss on +-1 labels).
"""
from __future__ import annotations

import torch
from torch import nn

from fastint.models.base import CTRModel
from fastint.nn.afm import AFMPooling
from fastint.nn.embedding import FieldEmbedding
from fastint.schema import Batch, Schema


class AFM(CTRModel):
    name = "afm"

    def __init__(self, schema: Schema, *, embed_dim: int = 16, attention_dim: int = 16,
                 use_attention: bool = True, dropout: float = 0.0, l2_attention: float = 0.0,
                 task: str = "binary", sparse: bool = False):
        super().__init__(schema, task)
        if schema.num_fields < 2:
            raise ValueError("AFM needs at least two fields to form pairs")
        self.embedding = FieldEmbedding(schema, embed_dim, sparse=sparse)
        self.linear = FieldEmbedding(schema, 1, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(()))
        self.pooling = AFMPooling(embed_dim, attention_dim, use_attention=use_attention)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(embed_dim, 1, bias=False)
        self.l2_attention = l2_attention

    def forward(self, batch: Batch) -> torch.Tensor:
        """Scores ``[B]`` (logits, or predictions for regression)."""
        pooled = self.pooling(self.embedding(batch))
        first_order = self.linear(batch).sum(dim=(1, 2))
        return self.bias + first_order + self.projection(self.dropout(pooled)).squeeze(-1)

    def regularization_loss(self) -> torch.Tensor:
        if not self.pooling.use_attention or self.l2_attention == 0:
            return super().regularization_loss()
        return self.l2_attention * self.pooling.l2_penalty()

    @torch.no_grad()
    def explain(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Pair attention ``"pair_attention"`` ``[B, P]`` for the pairs ``"pairs"`` ``[P, 2]``."""
        _, attention = self.pooling(self.embedding(batch), return_attention=True)
        return {"pair_attention": attention, "pairs": self.pooling.pair_index(self.schema.num_fields)}
