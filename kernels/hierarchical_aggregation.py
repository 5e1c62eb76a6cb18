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

import functools

import torch
import triton
import triton.language as tl

from fastint._backend import triton_interpreting

_INTERPRETER_PROGRAMS = 8  # target grid size under the (slow, per-program) interpreter
_PROGRAMS_PER_SM = 4       # backward: persistent-ish grid


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(n))


def _launch_config(batch: int, m_pad: int, d_pad: int, a_pad: int, backward: bool) -> tuple[int, int]:
    """``(SAMPLES, num_warps)``. On a GPU about 128 projection rows per forward program and 64
    per backward program (about 240 registers/thread at 128 rows on sm_90 for d = a = 16), halved
    for d or a >= 128; a handful of large programs under the interpreter."""
    if triton_interpreting():
        return triton.next_power_of_2(triton.cdiv(batch, _INTERPRETER_PROGRAMS)), 4
    rows = (64 if backward else 128) // (2 if max(d_pad, a_pad) >= 128 else 1)
    samples = max(1, rows // m_pad)
    num_warps = 8 if samples * m_pad * max(d_pad, a_pad) > 8192 else 4
    return samples, num_warps


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@triton.jit
def _tile_offsets(offs_s, offs_m, offs_d, rows, M, d):
    """In-tile offsets and mask of a ``[S, M_PAD, D_PAD]`` tile of a ``[*, M, d]`` tensor whose
    first ``rows`` samples exist (int32: the tile's base pointer carries the int64 part)."""
    offs = offs_s[:, None, None] * (M * d) + offs_m[None, :, None] * d + offs_d[None, None, :]
    mask = (offs_s[:, None, None] < rows) & (offs_m[None, :, None] < M) & (offs_d[None, None, :] < d)
    return offs, mask


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
def _attend(X, w, bias, ctx, field_mask, S: tl.constexpr, M_PAD: tl.constexpr,
            D_PAD: tl.constexpr, A_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """Pre-activations ``H [S, M_PAD, A_PAD]`` and field attention ``alpha [S, M_PAD]`` of ``X``.

    With half-precision weights ``X`` (fp32) enters the projection as ``hi + lo`` half parts: the
    softmax amplifies a rounded ``X`` into 1e-2 relative gradient errors, the split costs one dot.
    """
    X2 = tl.reshape(X, [S * M_PAD, D_PAD])
    if w.dtype == tl.float32:
        H = tl.dot(X2, w, input_precision=PRECISION)
    else:
        hi = X2.to(w.dtype)
        H = tl.dot(hi, w)
        H = tl.dot((X2 - hi.to(tl.float32)).to(w.dtype), w, H)
    H = tl.reshape(H, [S, M_PAD, A_PAD]) + bias[None, None, :]
    score = tl.sum(tl.maximum(H, 0.0) * ctx[None, None, :], axis=2)
    score = tl.where(field_mask[None, :], score, float("-inf"))
    p = tl.exp(score - tl.max(score, axis=1)[:, None])
    return H, p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _forward_kernel(x1_ptr, w_ptr, b_ptr, c_ptr, u_ptr, alpha_ptr, B, M, d, a,
                    K: tl.constexpr, S: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
                    A_PAD: tl.constexpr, PRECISION: tl.constexpr):
    row0 = tl.cast(tl.program_id(0), tl.int64) * S
    rows = B - row0
    offs_s = tl.arange(0, S)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_a = tl.arange(0, A_PAD)
    field_mask = offs_m < M
    offs, mask = _tile_offsets(offs_s, offs_m, offs_d, rows, M, d)
    x1 = tl.load(x1_ptr + row0 * (M * d) + offs, mask=mask, other=0.0).to(tl.float32)
    u_ptr += row0 * (K * d)
    alpha_ptr += row0 * (K * M)
    mask_u = (offs_s[:, None] < rows) & (offs_d[None, :] < d)
    mask_alpha = (offs_s[:, None] < rows) & field_mask[None, :]
    P = tl.full([S, D_PAD], 1.0, tl.float32)
    for i in range(K):
        X = x1 * P[:, None, :]
        w, bias, ctx = _load_order(w_ptr, b_ptr, c_ptr, i, d, a, offs_d, offs_a)
        _, alpha = _attend(X, w, bias, ctx, field_mask, S, M_PAD, D_PAD, A_PAD, PRECISION)
        u = tl.sum(alpha[:, :, None] * X, axis=1)
        tl.store(u_ptr + offs_s[:, None] * (K * d) + i * d + offs_d[None, :],
                 u.to(u_ptr.dtype.element_ty), mask=mask_u)
        tl.store(alpha_ptr + offs_s[:, None] * (K * M) + i * M + offs_m[None, :],
                 alpha.to(alpha_ptr.dtype.element_ty), mask=mask_alpha)
        P += u


@triton.jit
def _backward_kernel(x1_ptr, w_ptr, b_ptr, c_ptr, gu_ptr, ga_ptr, dx1_ptr, dw_ptr, db_ptr, dc_ptr,
                     B, M, d, a, num_tiles,
                     K: tl.constexpr, K_PAD: tl.constexpr, S: tl.constexpr, M_PAD: tl.constexpr,
                     D_PAD: tl.constexpr, A_PAD: tl.constexpr, HAS_GU: tl.constexpr,
                     HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_a = tl.arange(0, A_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_s = tl.arange(0, S)
    field_mask = offs_m < M
    # this program's partial weight-gradient slots (padded layout: no masks needed)
    dw_base = dw_ptr + pid.to(tl.int64) * (K * D_PAD * A_PAD) + offs_d[:, None] * A_PAD + offs_a[None, :]
    dv_base = pid.to(tl.int64) * (K * A_PAD) + offs_a
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        row0 = tl.cast(tile, tl.int64) * S
        rows = B - row0
        mask_u = (offs_s[:, None] < rows) & (offs_d[None, :] < d)
        mask_alpha = (offs_s[:, None] < rows) & field_mask[None, :]
        offs, mask = _tile_offsets(offs_s, offs_m, offs_d, rows, M, d)
        x1 = tl.load(x1_ptr + row0 * (M * d) + offs, mask=mask, other=0.0).to(tl.float32)
        gu_tile = gu_ptr + row0 * (K * d)
        ga_tile = ga_ptr + row0 * (K * M)
        # recompute the forward, keeping u_0..u_{K-1}
        U = tl.zeros([S, K_PAD, D_PAD], tl.float32)
        P = tl.full([S, D_PAD], 1.0, tl.float32)
        for i in range(K):
            X = x1 * P[:, None, :]
            w, bias, ctx = _load_order(w_ptr, b_ptr, c_ptr, i, d, a, offs_d, offs_a)
            _, alpha = _attend(X, w, bias, ctx, field_mask, S, M_PAD, D_PAD, A_PAD, PRECISION)
            u = tl.sum(alpha[:, :, None] * X, axis=1)
            U = tl.where(offs_k[None, :, None] == i, u[:, None, :], U)
            P += u
        # walk the orders backwards
        G = tl.zeros([S, D_PAD], tl.float32)  # sum of g_P_i over the orders after the current one
        dx1 = tl.zeros([S, M_PAD, D_PAD], tl.float32)
        for j in range(K):
            i = K - 1 - j
            P = 1.0 + tl.sum(tl.where(offs_k[None, :, None] < i, U, 0.0), axis=1)
            X = x1 * P[:, None, :]
            w, bias, ctx = _load_order(w_ptr, b_ptr, c_ptr, i, d, a, offs_d, offs_a)
            H, alpha = _attend(X, w, bias, ctx, field_mask, S, M_PAD, D_PAD, A_PAD, PRECISION)
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
            gH2 = tl.reshape(gH, [S * M_PAD, A_PAD]).to(w.dtype)
            X2 = tl.reshape(X, [S * M_PAD, D_PAD]).to(w.dtype)
            dw = tl.dot(tl.trans(X2), gH2, input_precision=PRECISION)
            gX = alpha[:, :, None] * gu[:, None, :] + tl.reshape(
                tl.dot(gH2, tl.trans(w), input_precision=PRECISION), [S, M_PAD, D_PAD])
            G += tl.sum(gX * x1, axis=1)
            dx1 += gX * P[:, None, :]
            dw_ptrs = dw_base + i * (D_PAD * A_PAD)
            tl.store(dw_ptrs, tl.load(dw_ptrs) + dw)
            tl.store(db_ptr + dv_base + i * A_PAD, tl.load(db_ptr + dv_base + i * A_PAD) + db)
            tl.store(dc_ptr + dv_base + i * A_PAD, tl.load(dc_ptr + dv_base + i * A_PAD) + dc)
        tl.store(dx1_ptr + row0 * (M * d) + offs, dx1.to(dx1_ptr.dtype.element_ty), mask=mask)


def _pads(x1: torch.Tensor, w: torch.Tensor) -> tuple[int, int, int]:
    return _pow2(x1.shape[1]), _pow2(x1.shape[2]), _pow2(w.shape[2])


def forward(x1: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x1 [B, M, d]``, ``w [K, d, a]``, ``b, c [K, a]`` -> ``U [B, K, d]``, ``alpha [B, K, M]``."""
    x1, w, b, c = (t.contiguous() for t in (x1, w, b, c))
    (B, M, d), (K, _, a) = x1.shape, w.shape
    u = torch.empty(B, K, d, dtype=x1.dtype, device=x1.device)
    alpha = torch.empty(B, K, M, dtype=x1.dtype, device=x1.device)
    if B == 0:
        return u, alpha
    m_pad, d_pad, a_pad = _pads(x1, w)
    samples, num_warps = _launch_config(B, m_pad, d_pad, a_pad, backward=False)
    _forward_kernel[(triton.cdiv(B, samples),)](
        x1, w, b, c, u, alpha, B, M, d, a, K=K, S=samples, M_PAD=m_pad, D_PAD=d_pad, A_PAD=a_pad,
        PRECISION=_precision(x1.dtype), num_warps=num_warps)
    return u, alpha


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_programs(num_tiles: int, device: torch.device) -> int:
    """Backward grid: a few programs per SM, each looping over tiles. Under the interpreter half
    the tiles' programs, so that tests exercise the loop and the partial accumulation."""
    if device.type != "cuda":
        return triton.cdiv(num_tiles, 2)
    return min(num_tiles, _PROGRAMS_PER_SM * _sm_count(device))


def backward(grad_u: torch.Tensor | None, grad_alpha: torch.Tensor | None, x1: torch.Tensor,
             w: torch.Tensor, b: torch.Tensor, c: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx1, dw, db, dc)`` given ``grad_u [B, K, d]`` and ``grad_alpha [B, K, M]``
    (either may be ``None`` = zero)."""
    x1, w, b, c = (t.contiguous() for t in (x1, w, b, c))
    (B, M, d), (K, _, a) = x1.shape, w.shape
    dx1 = torch.empty_like(x1)
    if B == 0 or (grad_u is None and grad_alpha is None):
        return dx1.zero_(), torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(c)  # contiguous
    m_pad, d_pad, a_pad = _pads(x1, w)
    samples, num_warps = _launch_config(B, m_pad, d_pad, a_pad, backward=True)
    num_tiles = triton.cdiv(B, samples)
    programs = _num_programs(num_tiles, x1.device)
    dw = torch.zeros(programs, K, d_pad, a_pad, dtype=torch.float32, device=x1.device)
    db = torch.zeros(programs, K, a_pad, dtype=torch.float32, device=x1.device)
    dc = torch.zeros(programs, K, a_pad, dtype=torch.float32, device=x1.device)
    gu = grad_u.contiguous() if grad_u is not None else x1  # dummy pointer when absent
    ga = grad_alpha.contiguous() if grad_alpha is not None else x1
    _backward_kernel[(programs,)](
        x1, w, b, c, gu, ga, dx1, dw, db, dc, B, M, d, a, num_tiles,
        K=K, K_PAD=triton.next_power_of_2(K), S=samples, M_PAD=m_pad, D_PAD=d_pad, A_PAD=a_pad,
        HAS_GU=grad_u is not None, HAS_GA=grad_alpha is not None,
        PRECISION=_precision(x1.dtype), num_warps=num_warps)
    return tuple(g.to(t.dtype).contiguous() for g, t in
                 ((dx1, x1), (dw.sum(0)[:, :d, :a], w), (db.sum(0)[:, :a], b), (dc.sum(0)[:, :a], c)))
