"""Plain-PyTorch multi-function interactions (AIM, Zhu et al., TKDE; AutoFIS, KDD 2020): the oracle
and the CPU path.

This is the authors' formulation: gather the rows of every tuple and materialise the products
``[B, P, d]`` per embedding table before reducing them.
"""
from __future__ import annotations

import functools
import operator

import torch

INNER, KERNEL, SCALAR, OUTER = "inner", "kernel", "scalar", "outer"
FUNCTIONS = (INNER, KERNEL, SCALAR, OUTER)


def all_tuples(fields: int, order: int = 2, device: torch.device | str | None = None) -> torch.Tensor:
    """Every tuple ``q_0 < q_1 < ... < q_{p-1}`` of ``fields`` fields in lexicographic order,
    ``[C(M, p), p]`` int64: ``(0, 1), (0, 2), ..., (1, 2), ...`` for ``order = 2``."""
    return torch.combinations(torch.arange(fields, device=device), order)


def multi_function_interactions(embeddings: torch.Tensor, tuples: torch.Tensor,
                                kappa: torch.Tensor | None = None, s: torch.Tensor | None = None,
                                w: torch.Tensor | None = None, *, functions=FUNCTIONS,
                                mask: torch.Tensor | None = None) -> torch.Tensor:
    """``embeddings [B, T, M, d]`` (``T`` = 1 or ``len(functions)``), ``tuples [P, p]`` ->
    ``Z [B, F, P]`` with ``F = len(functions)``; function ``f`` reads table ``f`` (or table 0 when
    ``T = 1``). For tuple ``q`` with rows ``e_r = embeddings[:, t, q_r]`` and ``prod = prod_r e_r``:
    ``inner = sum_k prod``, ``kernel = sum_k kappa_q[k] prod``, ``scalar = s_q sum_k prod``,
    ``outer = prod_r (w_r . e_r)``; entries where ``mask [F, P]`` is false are 0."""
    tuples = tuples.to(device=embeddings.device, dtype=torch.long)
    outputs = []
    for f, name in enumerate(functions):
        table = embeddings[:, f if embeddings.shape[1] > 1 else 0]            # [B, M, d]
        rows = [table.index_select(1, tuples[:, r]) for r in range(tuples.shape[1])]  # [B, P, d]
        if name == OUTER:
            z = torch.stack([row @ w[r] for r, row in enumerate(rows)]).prod(0)
        else:
            prod = functools.reduce(operator.mul, rows)                        # [B, P, d]
            if name == KERNEL:
                z = (prod * kappa).sum(-1)
            elif name == SCALAR:
                z = prod.sum(-1) * s
            else:
                z = prod.sum(-1)
        outputs.append(z)
    z = torch.stack(outputs, dim=1)
    return z if mask is None else z * mask.to(z.dtype)
