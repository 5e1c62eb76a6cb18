"""Plain-PyTorch table-batched embedding bag: the oracle and the fallback path.

``out[b, m] = reduce_{i in bag(b, m), id_i >= 0} w_i * weight[id_i]`` with ``reduce`` = sum, or for
``mean`` the sum divided by ``sum_i w_i`` (with weights) or by the number of present ids (without);
an empty bag (or one whose divisor is 0) gives zeros. Negative ids are missing and ignored.
Dense form: ``indices [B, M]`` (one id per bag). CSR form: ``indices [nnz]``, ``offsets [B*M+1]``,
``num_fields = M``. Returns ``[B, M, D]`` in ``weight``'s dtype, accumulating in float32 (float64
stays float64).
"""
from __future__ import annotations

import torch


def embedding_bag(indices: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None = None,
                  per_sample_weights: torch.Tensor | None = None, mode: str = "sum",
                  sparse: bool = False, num_fields: int | None = None) -> torch.Tensor:
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if offsets is None:
        batch, fields = indices.shape
        bag = torch.arange(batch * fields, device=indices.device)
        ids = indices.reshape(-1)
    else:
        fields = 1 if num_fields is None else num_fields
        batch = (offsets.numel() - 1) // fields
        bag = torch.repeat_interleave(torch.arange(batch * fields, device=indices.device),
                                      offsets.diff().long(), output_size=indices.numel())
        ids = indices
    present = ids >= 0
    w = (per_sample_weights.reshape(-1).to(acc) if per_sample_weights is not None
         else torch.ones(ids.shape, dtype=acc, device=ids.device)) * present
    rows = torch.nn.functional.embedding(ids.long().clamp_min(0), weight, sparse=sparse).to(acc)
    out = torch.zeros(batch * fields, weight.shape[1], dtype=acc, device=weight.device)
    out = out.index_add(0, bag, rows * w.unsqueeze(1))
    if mode == "mean":
        denom = torch.zeros(batch * fields, dtype=acc, device=weight.device).index_add(0, bag, w)
        out = out / torch.where(denom == 0, 1, denom).unsqueeze(1) * (denom != 0).unsqueeze(1)
    return out.to(weight.dtype).reshape(batch, fields, weight.shape[1])
