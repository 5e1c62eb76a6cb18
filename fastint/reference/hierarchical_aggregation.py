"""Plain-PyTorch hierarchical attentional aggregation (InterHAt): the oracle and the CPU path."""
from __future__ import annotations

import torch


def hierarchical_aggregation(x1: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             context: torch.Tensor, *, return_attention: bool = False
                             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``x1 [B, M, d]``, ``weight [K, d, a]``, ``bias, context [K, a]`` -> ``U [B, K, d]``, or
    ``(U, alpha [B, K, M])`` with ``return_attention``.

    For orders ``i = 1..K`` with ``X_1 = x1``: ``alpha_i = softmax_j(c_i . relu(W_i^T x_i^(j) + b_i))``,
    ``u_i = sum_j alpha_i^(j) x_i^(j)``, ``X_{i+1} = x1 * u_i + X_i``. One batched matmul per order.
    """
    x, us, alphas = x1, [], []
    for i in range(weight.shape[0]):
        scores = torch.relu(x @ weight[i] + bias[i]) @ context[i]   # [B, M]
        alpha = torch.softmax(scores, dim=1)
        u = (alpha.unsqueeze(1) @ x).squeeze(1)               # [B, d]
        x = x1 * u.unsqueeze(1) + x
        us.append(u)
        alphas.append(alpha)
    u = torch.stack(us, 1)
    return (u, torch.stack(alphas, 1)) if return_attention else u
