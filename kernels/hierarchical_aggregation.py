"""Triton kernels for InterHAt's hierarchical attentional aggregation (all K orders fused).

Per sample, ``X1 [M, d]``; for orders ``i = 0..K-1`` (``X_0 = X1``):

    H_i = X_i W_i + b_i                 [M, a]
    s_i = relu(H_i) c_i                 [M]
    alpha_i = softmax over fields(s_i)  [M]
    u_i = alpha_i^T X_i                 [d]
    X_{i+1} = X1 * u_i + X_i

which unrolls to ``X_i = X1 * P_i`` with ``P_i = 1 + sum_{k<i} u_k`` (a ``[d]`` vector per sample):
the kernels carry ``P`` instead of ``X``.

Layout: a program owns a tile of ``SAMPLES`` consecutive samples (grid axis 0), held as
``[SAMPLES, M_PAD, D_PAD]`` fp32 registers (fields, d and a padded to powers of two >= 16 and
masked). The projections of the whole tile are one ``tl.dot`` ``[SAMPLES*M_PAD, D_PAD] x
[D_PAD, A_PAD]`` (fp32 accumulation; operands in the weights' dtype). Padded fields get score
``-inf`` (alpha 0); padded samples read zeros and produce no gradient.

Backward: each program recomputes the forward of its tile (only ``x1`` and the weights are saved),
keeping ``u_0..u_{K-1}`` in a ``[SAMPLES, K_PAD, D_PAD]`` tile, then walks the orders backwards:

    g_u_k     = dU_k + sum_{i>k} g_P_i,          g_P_i = sum_j g_X_i^(j) * x1^(j)
    g_alpha   = X_k g_u_k + dalpha_k
    g_s       = alpha * (g_alpha - <alpha, g_alpha>)
    g_H       = (g_s c_k^T) * [H > 0];   dc_k += relu(H)^T g_s;   db_k += 1^T g_H;   dW_k += X_k^T g_H
    g_X_k     = alpha g_u_k^T + g_H W_k^T;   dX1 += g_X_k * P_k

The backward grid is capped (a few programs per SM): each program loops over tiles and adds its
weight gradients into its own fp32 partial slot ``[programs, K, D_PAD, A_PAD]`` (read-modify-write
by one program only), summed afterwards by torch: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, accumulate_slot, contiguous, dot_precision,
                                     interpreter_samples, masked_softmax, mm, next_pow2, partial_slots,
                                     persistent_programs, reduce_partials, register_cap, split_dot,
                                     target_of)

_BACKWARD_PROGRAMS_PER_SM = 4  # persistent grid: each program loops over tiles


@triton.jit
def _tile_offsets(offs_s, offs_m, offs_d, rows, M, d):
    """In-tile offsets and mask of a ``[SAMPLES, M_PAD, D_PAD]`` tile of a ``[*, M, d]`` tensor whose
    first ``rows`` samples exist (int32: the tile's base pointer carries the int64 part)."""
    offs = offs_s[:, None, None] * (M * d) + offs_m[None, :, None] * d + offs_d[None, None, :]
    mask = (offs_s[:, None, None] < rows) & (offs_m[None, :, None] < M) & (offs_d[None, None, :] < d)
    return offs, mask


@triton.jit
def _load_samples(x1_ptr, row0, B, M, d, SAMPLES: tl.constexpr, M_PAD: tl.constexpr,
                  D_PAD: tl.constexpr):
    """The tile of samples ``row0 .. row0+SAMPLES-1``: ``x1 [SAMPLES, M_PAD, D_PAD]`` (fp32), its
    in-tile offsets and mask, and the masks of its ``u`` rows ``[SAMPLES, D_PAD]`` and ``alpha``
    rows ``[SAMPLES, M_PAD]``."""
    rows = B - row0
    offs_s = tl.arange(0, SAMPLES)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs, mask = _tile_offsets(offs_s, offs_m, offs_d, rows, M, d)
    x1 = tl.load(x1_ptr + row0 * (M * d) + offs, mask=mask, other=0.0).to(tl.float32)
    mask_u = (offs_s[:, None] < rows) & (offs_d[None, :] < d)
    mask_alpha = (offs_s[:, None] < rows) & (offs_m < M)[None, :]
    return x1, offs, mask, mask_u, mask_alpha


@triton.jit
def _load_order(w_ptr, b_ptr, c_ptr, i, d, a, offs_d, offs_a):
    """Weights of order ``i``: ``W [D_PAD, A_PAD]`` (storage dtype), ``b``, ``c`` ``[A_PAD]`` fp32."""
    mask_a = offs_a < a
    w = tl.load(w_ptr + i * d * a + offs_d[:, None] * a + offs_a[None, :],
                mask=(offs_d[:, None] < d) & mask_a[None, :], other=0.0)
    bias = tl.load(b_ptr + i * a + offs_a, mask=mask_a, other=0.0).to(tl.float32)
    ctx = tl.load(c_ptr + i * a + offs_a, mask=mask_a, other=0.0).to(tl.float32)
    return w, bias, ctx


@triton.jit
def _attend(X, w, bias, ctx, field_mask, SAMPLES: tl.constexpr, M_PAD: tl.constexpr,
            D_PAD: tl.constexpr, A_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """Pre-activations ``H [SAMPLES, M_PAD, A_PAD]`` and field attention ``alpha [SAMPLES, M_PAD]``
    of ``X`` (``X`` enters as ``hi + lo`` half parts with half-precision weights: ``split_dot``)."""
    H = split_dot(tl.reshape(X, [SAMPLES * M_PAD, D_PAD]), w, PRECISION)
    H = tl.reshape(H, [SAMPLES, M_PAD, A_PAD]) + bias[None, None, :]
    score = tl.sum(tl.maximum(H, 0.0) * ctx[None, None, :], axis=2)
    return H, masked_softmax(score, field_mask[None, :], 1)


@triton.jit
def _order(x1, P, i, w_ptr, b_ptr, c_ptr, d, a, field_mask, SAMPLES: tl.constexpr,
           M_PAD: tl.constexpr, D_PAD: tl.constexpr, A_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """Order ``i`` given ``P_i [SAMPLES, D_PAD]``: ``X_i = x1 * P_i``, the order's ``W_i`` and
    ``c_i``, the pre-activations ``H``, the attention ``alpha`` and ``u_i = alpha^T X_i``."""
    X = x1 * P[:, None, :]
    w, bias, ctx = _load_order(w_ptr, b_ptr, c_ptr, i, d, a, tl.arange(0, D_PAD), tl.arange(0, A_PAD))
    H, alpha = _attend(X, w, bias, ctx, field_mask, SAMPLES, M_PAD, D_PAD, A_PAD, PRECISION)
    return X, w, ctx, H, alpha, tl.sum(alpha[:, :, None] * X, axis=1)


@triton.jit
def _hierarchical_aggregation_fwd_kernel(
        x1_ptr, w_ptr, b_ptr, c_ptr, u_ptr, alpha_ptr, B, M, d, a,
        K: tl.constexpr, SAMPLES: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
        A_PAD: tl.constexpr, STORE_ALPHA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: samples ``[pid*SAMPLES, (pid+1)*SAMPLES)`` as an ``[SAMPLES, M_PAD, D_PAD]``
    tile; runs the ``K`` orders on chip and stores ``u_i`` ``[SAMPLES, d]`` and, with
    ``STORE_ALPHA``, ``alpha_i`` ``[SAMPLES, M]`` of every order."""
    row0 = tl.cast(tl.program_id(0), tl.int64) * SAMPLES
    offs_s = tl.arange(0, SAMPLES)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    field_mask = offs_m < M
    x1, offs, mask, mask_u, mask_alpha = _load_samples(x1_ptr, row0, B, M, d, SAMPLES, M_PAD, D_PAD)
    u_ptr += row0 * (K * d)
    alpha_ptr += row0 * (K * M)
    P = tl.full([SAMPLES, D_PAD], 1.0, tl.float32)
    for i in range(K):
        X, w, ctx, H, alpha, u = _order(x1, P, i, w_ptr, b_ptr, c_ptr, d, a, field_mask, SAMPLES, M_PAD,
                                        D_PAD, A_PAD, PRECISION)
        tl.store(u_ptr + offs_s[:, None] * (K * d) + i * d + offs_d[None, :],
                 u.to(u_ptr.dtype.element_ty), mask=mask_u)
        if STORE_ALPHA:
            tl.store(alpha_ptr + offs_s[:, None] * (K * M) + i * M + offs_m[None, :],
                     alpha.to(alpha_ptr.dtype.element_ty), mask=mask_alpha)
        P += u


@triton.jit
def _hierarchical_aggregation_bwd_kernel(
        x1_ptr, w_ptr, b_ptr, c_ptr, gu_ptr, ga_ptr, dx1_ptr, dw_ptr, db_ptr, dc_ptr,
        B, M, d, a, num_tiles,
        K: tl.constexpr, K_PAD: tl.constexpr, SAMPLES: tl.constexpr, M_PAD: tl.constexpr,
        D_PAD: tl.constexpr, A_PAD: tl.constexpr, HAS_GU: tl.constexpr, HAS_GA: tl.constexpr,
        PRECISION: tl.constexpr):
    """One program: tiles ``pid, pid + programs, ...`` of ``SAMPLES`` samples. Per tile it recomputes
    the forward keeping ``u_0..u_{K-1}``, walks the orders backwards, stores ``dx1`` and adds each
    order's ``dW, db, dc`` into its own partial slots ``[K, D_PAD, A_PAD]`` / ``[K, A_PAD]``."""
    pid = tl.program_id(0)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_a = tl.arange(0, A_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_s = tl.arange(0, SAMPLES)
    field_mask = offs_m < M
    # this program's partial weight-gradient slots (padded tile shape: no masks needed)
    dw_base = dw_ptr + pid.to(tl.int64) * (K * D_PAD * A_PAD) + offs_d[:, None] * A_PAD + offs_a[None, :]
    dv_base = pid.to(tl.int64) * (K * A_PAD) + offs_a
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        row0 = tl.cast(tile, tl.int64) * SAMPLES
        x1, offs, mask, mask_u, mask_alpha = _load_samples(x1_ptr, row0, B, M, d, SAMPLES, M_PAD, D_PAD)
        gu_tile = gu_ptr + row0 * (K * d)
        ga_tile = ga_ptr + row0 * (K * M)
        # recompute the forward, keeping u_0..u_{K-1}
        U = tl.zeros([SAMPLES, K_PAD, D_PAD], tl.float32)
        P = tl.full([SAMPLES, D_PAD], 1.0, tl.float32)
        for i in range(K):
            u = _order(x1, P, i, w_ptr, b_ptr, c_ptr, d, a, field_mask, SAMPLES, M_PAD, D_PAD, A_PAD,
                       PRECISION)[5]
            U = tl.where(offs_k[None, :, None] == i, u[:, None, :], U)
            P += u
        # walk the orders backwards
        G = tl.zeros([SAMPLES, D_PAD], tl.float32)  # sum of g_P_i over the orders after the current one
        dx1 = tl.zeros([SAMPLES, M_PAD, D_PAD], tl.float32)
        for j in range(K):
            i = K - 1 - j
            P = 1.0 + tl.sum(tl.where(offs_k[None, :, None] < i, U, 0.0), axis=1)
            X, w, ctx, H, alpha, u = _order(x1, P, i, w_ptr, b_ptr, c_ptr, d, a, field_mask, SAMPLES,
                                            M_PAD, D_PAD, A_PAD, PRECISION)
            gu = G
            if HAS_GU:
                gu += tl.load(gu_tile + offs_s[:, None] * (K * d) + i * d + offs_d[None, :],
                              mask=mask_u, other=0.0).to(tl.float32)
            galpha = tl.sum(X * gu[:, None, :], axis=2)
            if HAS_GA:
                galpha += tl.load(ga_tile + offs_s[:, None] * (K * M) + i * M + offs_m[None, :],
                                  mask=mask_alpha, other=0.0).to(tl.float32)
            gs = alpha * (galpha - tl.sum(alpha * galpha, axis=1)[:, None])
            gH = tl.where(H > 0.0, gs[:, :, None] * ctx[None, None, :], 0.0)
            dc = tl.sum(tl.sum(tl.maximum(H, 0.0) * gs[:, :, None], axis=1), axis=0)
            db = tl.sum(tl.sum(gH, axis=1), axis=0)
            gH2 = tl.reshape(gH, [SAMPLES * M_PAD, A_PAD])
            dw = mm(tl.trans(tl.reshape(X, [SAMPLES * M_PAD, D_PAD])), gH2, w.dtype, PRECISION)
            gX = alpha[:, :, None] * gu[:, None, :] + tl.reshape(
                mm(gH2, tl.trans(w), w.dtype, PRECISION), [SAMPLES, M_PAD, D_PAD])
            G += tl.sum(gX * x1, axis=1)
            dx1 += gX * P[:, None, :]
            accumulate_slot(dw_base + i * (D_PAD * A_PAD), dw)
            accumulate_slot(db_ptr + dv_base + i * A_PAD, db)
            accumulate_slot(dc_ptr + dv_base + i * A_PAD, dc)
        tl.store(dx1_ptr + row0 * (M * d) + offs, dx1.to(dx1_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

# Register pressure of a program's row tiles, as the static gate (sm_80 and sm_90) measured it: the
# forward holds X_1 and X_i ([rows, D_PAD] each) and the projection ([rows, A_PAD]), and 4 warps
# hold 128 x (2*16 + 64) elements without spilling; the backward's spills follow D_PAD alone (its
# gradients of X_1, X_i and U), 4 warps holding 64 x 3*16. At d = 16 fewer rows or more warps made
# ptxas spill more for a = 32..64, so those keep 64 rows and 4 warps.
def _tile_elements(rows: int, d_pad: int, a_pad: int, backward: bool) -> int:
    return rows * (3 * d_pad if backward else 2 * d_pad + a_pad)


_FOUR_WARP_ELEMENTS = {False: 12288, True: 4096}


def _tile_warps(samples: int, m_pad: int, d_pad: int, a_pad: int, backward: bool) -> tuple[int, int]:
    """``(SAMPLES, num_warps)``: fewer samples per program until 4 warps hold the row tiles within
    the budget, else (at one sample) 8 warps. 16 warps would cap ptxas at 128 registers, which
    spilled more than 8 warps at 255 (d = 40)."""
    samples, budget = max(1, samples), _FOUR_WARP_ELEMENTS[backward]
    while samples > 1 and _tile_elements(samples * m_pad, d_pad, a_pad, backward) > budget:
        samples //= 2
    return samples, 4 if _tile_elements(samples * m_pad, d_pad, a_pad, backward) <= budget else 8


def launch_config(batch: int, fields: int, dim: int, attention_dim: int, orders: int,
                  dtype: torch.dtype, target: Target, *, backward: bool = False,
                  return_attention: bool = False, grad_u: bool = True, grad_alpha: bool = False
                  ) -> LaunchConfig:
    """The launch of the forward (or ``backward``) kernel for ``x1 [batch, fields, dim]`` in
    ``dtype`` with ``orders`` orders of attention width ``attention_dim``.

    On a GPU up to 128 projection rows (``SAMPLES * M_PAD``) per forward program and 64 per
    backward program, fewer (or 8 warps) for wide tiles as ``_tile_warps`` chooses; a handful of
    large programs under the interpreter. Forward grid: one program per tile; backward: a few
    programs per SM, each looping over tiles."""
    m_pad, d_pad, a_pad = next_pow2(fields), next_pow2(dim), next_pow2(attention_dim)
    if target.interpreter:
        samples, num_warps = interpreter_samples(batch), 4
    else:
        samples, num_warps = _tile_warps((64 if backward else 128) // m_pad, m_pad, d_pad, a_pad, backward)
    num_tiles = triton.cdiv(batch, samples)
    meta = dict(K=orders, SAMPLES=samples, M_PAD=m_pad, D_PAD=d_pad, A_PAD=a_pad,
                PRECISION=dot_precision(dtype))
    if backward:   # one pipeline stage: the tile loop re-reads loop-invariant weights
        return LaunchConfig(_hierarchical_aggregation_bwd_kernel,
                            (persistent_programs(num_tiles, target, _BACKWARD_PROGRAMS_PER_SM),),
                            {**meta, "K_PAD": triton.next_power_of_2(orders), "HAS_GU": grad_u,
                             "HAS_GA": grad_alpha}, num_warps, num_stages=1, maxnreg=register_cap(num_warps))
    return LaunchConfig(_hierarchical_aggregation_fwd_kernel, (num_tiles,),
                        {**meta, "STORE_ALPHA": return_attention}, num_warps, maxnreg=register_cap(num_warps))


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def forward(x1: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, context: torch.Tensor,
            return_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x1 [B, M, d]``, ``weight [K, d, a]``, ``bias, context [K, a]`` -> ``U [B, K, d]`` and
    ``alpha [B, K, M]`` (absent, ``[0]``, unless ``return_attention``)."""
    x1, weight, bias, context = contiguous(x1, weight, bias, context)
    (B, M, d), (K, _, a) = x1.shape, weight.shape
    u = torch.empty(B, K, d, dtype=x1.dtype, device=x1.device)
    alpha = (torch.empty(B, K, M, dtype=x1.dtype, device=x1.device) if return_attention
             else x1.new_empty(0))
    if B == 0:
        return u, alpha
    cfg = launch_config(B, M, d, a, K, x1.dtype, target_of(x1.device), return_attention=return_attention)
    cfg.launch(x1, weight, bias, context, u, alpha if return_attention else u, B, M, d, a)
    return u, alpha


def backward(grad_u: torch.Tensor | None, grad_alpha: torch.Tensor | None, x1: torch.Tensor,
             weight: torch.Tensor, bias: torch.Tensor, context: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx1, dweight, dbias, dcontext)`` given ``grad_u [B, K, d]`` and
    ``grad_alpha [B, K, M]`` (either may be ``None`` = zero)."""
    x1, weight, bias, context, grad_u, grad_alpha = contiguous(x1, weight, bias, context, grad_u, grad_alpha)
    (B, M, d), (K, _, a) = x1.shape, weight.shape
    if B == 0 or (grad_u is None and grad_alpha is None):
        return tuple(torch.zeros_like(t) for t in (x1, weight, bias, context))
    cfg = launch_config(B, M, d, a, K, x1.dtype, target_of(x1.device), backward=True,
                        grad_u=grad_u is not None, grad_alpha=grad_alpha is not None)
    programs, d_pad, a_pad = cfg.grid[0], cfg.meta["D_PAD"], cfg.meta["A_PAD"]
    dx1 = torch.empty_like(x1)
    dw = partial_slots(programs, K, d_pad, a_pad, device=x1.device)
    db = partial_slots(programs, K, a_pad, device=x1.device)
    dc = partial_slots(programs, K, a_pad, device=x1.device)
    cfg.launch(x1, weight, bias, context, x1 if grad_u is None else grad_u,
               x1 if grad_alpha is None else grad_alpha, dx1, dw, db, dc, B, M, d, a,
               triton.cdiv(B, cfg.meta["SAMPLES"]))
    return (dx1, *(reduce_partials(g)[..., :a].to(t.dtype).contiguous()
                   for g, t in ((dw[:, :, :d], weight), (db, bias), (dc, context))))
