"""Plain-PyTorch AFM attention pooling (Xiao et al., IJCAI 2017): the oracle and the CPU path.

This is the formulation of the public AFM implementations: gather both sides of every pair with
``index_select``, materialising ``p [B, P, k]`` and the hidden layer ``[B, P, t]``.
"""
from __future__ import annotations

import torch


def all_pairs(fields: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All pairs ``i < j`` of ``fields`` fields in row-major order, ``[P, 2]`` int64,
    ``P = M (M - 1) / 2``: ``(0, 1), (0, 2), ..., (0, M-1), (1, 2), ...``."""
    return torch.triu_indices(fields, fields, 1, device=device).T


def afm_pooling(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, projection: torch.Tensor,
                pairs: torch.Tensor | None = None, *, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``e [B, M, k]``, ``weight [k, t]``, ``bias, projection [t]``, ``pairs [P, 2]`` (None: all
    ``i < j``) -> ``pooled [B, k]``, or ``(pooled, a [B, P])`` with ``return_attention``.

    ``p_ij = e_i * e_j``, ``s_ij = h . relu(W^T p_ij + b)``, ``a = softmax over pairs(s)``,
    ``pooled = sum_ij a_ij p_ij``.
    """
    if pairs is None:
        pairs = all_pairs(e.shape[1], e.device)
    pairs = pairs.to(device=e.device, dtype=torch.long)
    p = e.index_select(1, pairs[:, 0]) * e.index_select(1, pairs[:, 1])   # [B, P, k]
    scores = torch.relu(p @ weight + bias) @ projection                    # [B, P]
    a = torch.softmax(scores, dim=1)
    pooled = (a.unsqueeze(1) @ p).squeeze(1)
    return (pooled, a) if return_attention else pooled
