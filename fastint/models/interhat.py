"""InterHAt: Interpretable Click-Through Rate Prediction through Hierarchical Attention
(Li et al., WSDM 2020), following the authors' TensorFlow code.

1. ``e = FieldEmbedding(batch)`` ``[B, M, d]``.
2. One transformer block: multi-head self-attention with bias+ReLU on Q/K/V and scale 1/sqrt(a)
   (``fastint.ops.field_attention`` with no residual), projection back to ``d`` with ReLU, residual +
   LayerNorm; position-wise feed-forward ``d -> 4d -> d`` with residual + LayerNorm -> ``X1``.
3. Hierarchical attentional aggregation of orders 1..K (``fastint.nn.HierarchicalAttention``):
   ``U [B, K, d]`` and the per-order field attention ``alpha [B, K, M]``.
4. Order attention: ``beta = softmax_k(v^T relu(P u_k + p))``, ``u = sum_k beta_k u_k``.
5. ``logit = Linear(relu(Linear(u, d//2, no bias)), 1, no bias)``.
``l2_aggregation`` is the L2 penalty on the aggregation and order-attention weights.
"""
from __future__ import annotations

import torch
from torch import nn

from fastint.models.base import CTRModel
from fastint.nn.embedding import FieldEmbedding
from fastint.nn.hierarchical import HierarchicalAttention
from fastint.nn.interacting import InteractingLayer
from fastint.nn.mlp import MLP
from fastint.schema import Batch, Schema


class TransformerBlock(nn.Module):
    """InterHAt's encoder: ``[B, M, d] -> [B, M, d]`` (see the module docstring, step 2)."""

    def __init__(self, embed_dim: int, attention_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attention = InteractingLayer(embed_dim, attention_dim, num_heads, variant="tf",
                                          residual="none", out_relu=False, layer_norm="none")
        self.project = nn.Sequential(nn.Linear(num_heads * attention_dim, embed_dim), nn.ReLU())
        self.norm1 = nn.LayerNorm(embed_dim)
        self.feed_forward = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.ReLU(),
                                          nn.Linear(4 * embed_dim, embed_dim))
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.project(self.attention(x))))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class InterHAt(CTRModel):
    name = "interhat"

    def __init__(self, schema: Schema, *, embed_dim: int = 16, attention_dim: int = 16,
                 num_heads: int = 1, num_orders: int = 3, dropout: float = 0.0,
                 l2_aggregation: float = 0.0, task: str = "binary", sparse: bool = False):
        super().__init__(schema, task)
        self.embedding = FieldEmbedding(schema, embed_dim, sparse=sparse)
        self.encoder = TransformerBlock(embed_dim, attention_dim, num_heads, dropout)
        self.aggregation = HierarchicalAttention(embed_dim, attention_dim, num_orders=num_orders)
        self.order_hidden = nn.Linear(embed_dim, attention_dim)
        self.order_score = nn.Linear(attention_dim, 1, bias=False)
        self.output = MLP(embed_dim, [max(1, embed_dim // 2)], bias=False)
        self.l2_aggregation = l2_aggregation

    def _aggregate(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Combined vector ``[B, d]``, field attention ``[B, K, M]``, order attention ``[B, K]``."""
        u, alpha = self.aggregation(self.encoder(self.embedding(batch)), return_attention=True)
        beta = torch.softmax(self.order_score(torch.relu(self.order_hidden(u))).squeeze(-1), dim=1)
        return torch.einsum("bk,bkd->bd", beta, u), alpha, beta

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B]``."""
        return self.output(self._aggregate(batch)[0]).squeeze(-1)

    def regularization_loss(self) -> torch.Tensor:
        if self.l2_aggregation == 0:
            return super().regularization_loss()
        return self.l2_aggregation * (self.aggregation.l2_penalty() + self.order_hidden.weight.square().sum())

    @torch.no_grad()
    def explain(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``"field_attention"`` ``[B, K, M]`` (which fields matter at each order) and
        ``"order_attention"`` ``[B, K]`` (which orders matter), the paper's interpretation."""
        _, alpha, beta = self._aggregate(batch)
        return {"field_attention": alpha, "order_attention": beta}
