"""HierarchicalAttention: InterHAt's attentional aggregation of feature-interaction orders."""
from __future__ import annotations

import torch
from torch import nn

from fastint.ops.hierarchical_aggregation import hierarchical_aggregation


class HierarchicalAttention(nn.Module):
    """``X1 [B, M, d] -> U [B, K, d]`` (and ``alpha [B, K, M]``), see ``fastint.ops.hierarchical_aggregation``.

    Parameters per order ``i``: ``weight[i]`` ``[d, a]`` (``W_i``, Xavier-uniform), ``bias[i]``
    ``[a]`` (``b_i``, zeros) and ``context[i]`` ``[a]`` (``c_i``, normal with std 0.01).
    """

    def __init__(self, embed_dim: int, attention_dim: int, num_orders: int = 3, *,
                 device=None, dtype=None):
        super().__init__()
        if min(embed_dim, attention_dim, num_orders) < 1:
            raise ValueError("embed_dim, attention_dim and num_orders must all be >= 1, got "
                             f"{embed_dim}, {attention_dim}, {num_orders}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.attention_dim, self.num_orders = embed_dim, attention_dim, num_orders
        self.weight = nn.Parameter(torch.empty(num_orders, embed_dim, attention_dim, **factory))
        self.bias = nn.Parameter(torch.empty(num_orders, attention_dim, **factory))
        self.context = nn.Parameter(torch.empty(num_orders, attention_dim, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in self.weight:
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.bias)
        nn.init.normal_(self.context, std=0.01)

    def forward(self, x1: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x1 [B, M, d]`` -> ``U [B, K, d]``, or ``(U, alpha [B, K, M])`` with ``return_attention``."""
        return hierarchical_aggregation(x1, self.weight, self.bias, self.context,
                                        return_attention=return_attention)

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squared attention projections ``sum_i ||W_i||^2`` (the authors' L2 term)."""
        return self.weight.square().sum()

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, attention_dim={self.attention_dim}, num_orders={self.num_orders}"
