"""AFMPooling: AFM's attention-based pooling of pairwise interactions (or plain FM pooling)."""
from __future__ import annotations

import torch
from torch import nn

from fastint.ops.afm_pooling import afm_pooling


class AFMPooling(nn.Module):
    """``e [B, M, k] -> pooled [B, k]`` (and optionally ``a [B, P]``).

    With ``use_attention=True`` (AFM, Xiao et al. 2017) this is ``fastint.ops.afm_pooling``:
    ``pooled = sum_q a_q (e_i * e_j)`` with ``a = softmax over pairs(h . relu(W^T (e_i * e_j) + b))``.
    Parameters: ``weight`` ``[k, t]`` (``W``, Xavier-uniform), ``bias`` ``[t]`` (zeros) and
    ``projection`` ``[t]`` (``h``, Xavier-normal as a ``[t, 1]`` matrix, as in DeepCTR).

    With ``use_attention=False`` it is FM's pairwise pooling with all weights 1 (no parameters):
    ``pooled = sum_q e_i * e_j``; for all pairs (``pairs=None``) computed in ``O(M k)`` per sample
    by the identity ``sum_{i<j} e_i * e_j = ((sum_i e_i)^2 - sum_i e_i^2) / 2``, for a given list
    as ``sum_i e_i * (sum_j C_ij e_j)`` with ``C`` the ``[M, M]`` pair-count matrix (no ``[B, P, k]``
    tensor either way); the returned attention is then all ones.

    ``pairs``: ``None`` (all ``i < j``, row-major) or an int ``[P, 2]`` list of field pairs, kept
    as a non-persistent buffer (moves with ``.to()``, not part of the state_dict).
    """

    def __init__(self, embed_dim: int, attention_dim: int, pairs: torch.Tensor | None = None,
                 use_attention: bool = True, *, device=None, dtype=None):
        super().__init__()
        if min(embed_dim, attention_dim) < 1:
            raise ValueError("embed_dim and attention_dim must be >= 1, "
                             f"got {embed_dim}, {attention_dim}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.attention_dim, self.use_attention = embed_dim, attention_dim, use_attention
        if pairs is not None:
            pairs = torch.as_tensor(pairs, device=device)
            if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.dtype not in (torch.int32, torch.int64):
                raise ValueError("pairs must be an int32/int64 [P, 2] tensor, "
                                 f"got {pairs.dtype} {list(pairs.shape)}")
        self.register_buffer("pairs", pairs, persistent=False)
        if use_attention:
            self.weight = nn.Parameter(torch.empty(embed_dim, attention_dim, **factory))
            self.bias = nn.Parameter(torch.empty(attention_dim, **factory))
            self.projection = nn.Parameter(torch.empty(attention_dim, **factory))
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if not self.use_attention:
            return
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.xavier_normal_(self.projection.view(-1, 1))

    def forward(self, e: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.use_attention:
            return afm_pooling(e, self.weight, self.bias, self.projection, self.pairs,
                               return_attention=return_attention)
        pooled = self._fm_pooling(e)
        if not return_attention:
            return pooled
        return pooled, e.new_ones(e.shape[0], self.pair_index(e.shape[1]).shape[0])

    def pair_index(self, num_fields: int) -> torch.Tensor:
        """The pooled pairs as int64 ``[P, 2]``: the given list, or all ``i < j`` row-major."""
        if self.pairs is not None:
            return self.pairs.long()
        return torch.triu_indices(num_fields, num_fields, offset=1).T

    def _fm_pooling(self, e: torch.Tensor) -> torch.Tensor:
        if e.dim() != 3:
            raise ValueError(f"e must have 3 dimensions, got shape {tuple(e.shape)}")
        if self.pairs is None:
            total = e.sum(1)
            return 0.5 * (total * total - (e * e).sum(1))
        fields = e.shape[1]
        pairs = self.pairs.long()
        if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= fields):
            raise ValueError(f"pairs must index fields 0..{fields - 1}")
        counts = e.new_zeros(fields, fields).index_put_(
            (pairs[:, 0], pairs[:, 1]), e.new_ones(pairs.shape[0]), accumulate=True)
        return torch.einsum("bik,ij,bjk->bk", e, counts, e)

    def l2_penalty(self) -> torch.Tensor:
        """``||W||^2``: the authors regularise the attention network's weight (lambda ~ 0..16)."""
        if not self.use_attention:
            raise ValueError("AFMPooling(use_attention=False) has no attention weights to penalise")
        return self.weight.square().sum()

    def extra_repr(self) -> str:
        pairs = "all" if self.pairs is None else self.pairs.shape[0]
        return (f"embed_dim={self.embed_dim}, attention_dim={self.attention_dim}, pairs={pairs}, "
                f"use_attention={self.use_attention}")
