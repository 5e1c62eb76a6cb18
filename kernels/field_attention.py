"""Triton kernels for field attention: AutoInt's interacting layer, fused.

Per sample, ``X [M, d]`` (``H`` heads of width ``dh``, ``HD = H*dh``):

    P_q, P_k, P_v = X W_q + b_q, X W_k + b_k, X W_v + b_v    [M, HD]  (W_qkv = [W_q | W_k | W_v])
    Q, K, V = act_qkv(P_q), act_qkv(P_k), act_qkv(P_v)
    A_h = softmax_keys(scale Q_h K_h^T)                        [M, M] per head
    O = concat_h(A_h V_h)                                      [M, HD]
    R = act_res(X W_res + b_res) | X | 0                       (residual "project" | "identity" | "none")
    Z = O + R;  Y = act_out(Z) | LN(act_out(Z)) | act_out(LN(Z))   (layer_norm "none" | "after" | "before")

Layout: a program owns ``SAMPLES`` consecutive samples (grid axis 0 = ``ceil(B / SAMPLES)``, so
``B * H`` is not limited by the 65,535 cap of grid axes 1/2). Fields are padded to
``M_PAD = max(16, next_pow2(M))``, ``d`` and ``dh`` to powers of two >= 16, heads to ``H_PAD``; every
load and store is masked. Two register layouts:

* rows  ``[SAMPLES*M_PAD, ...]``: one row per (sample, field), columns ``d`` (``D_PAD``) or the heads
  side by side (``HD_PAD = H_PAD * DH_PAD``, column ``h*DH_PAD + j`` holds global column ``h*dh + j``).
  Projections are single ``tl.dot`` s over all rows of the tile; LayerNorm reduces over columns.
* heads ``[SAMPLES*H_PAD, M_PAD, DH_PAD]``: one batch entry per (sample, head); ``QK^T`` and ``AV`` are
  batched ``tl.dot`` s.

Dot operands are in the input dtype (fp16/bf16 on tensor cores; fp32 as ``ieee`` or ``tf32`` following
``torch.backends.cuda.matmul.allow_tf32``); accumulation, softmax and LayerNorm are fp32.
Padded keys get score ``-inf``; padded rows/columns are never stored and carry zero gradient.

Backward recomputes the forward of its tile from ``x`` and the weights (nothing of size
``B x H x M x M`` is saved), one head at a time so that only one head's ``Q, K, V, A`` and their
gradients are live (register pressure), then, with ``dZ`` from the output activation / LayerNorm
backward and the residual's gradient first, per head:

    dO = dZ;  dV_h = A_h^T dO_h;  dA_h = dO_h V_h^T (+ upstream grad of A)
    dS_h = scale * A_h * (dA_h - rowsum(A_h * dA_h));  dQ_h = dS_h K_h;  dK_h = dS_h^T Q_h
    dP_* = dQ/dK/dV * [P_* > 0 if qkv_relu];   dW_qkv += X^T dP;   db_qkv += colsum(dP)
    dX = dP_q W_q^T + dP_k W_k^T + dP_v W_v^T + (dR_p W_res^T | dZ | 0)

Its grid is capped (a few programs per SM); each program loops over tiles and adds its weight
gradients into its own fp32 partial slot (``kernels._common.partial_slots``), summed afterwards:
deterministic, no atomics.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, accumulate_slot, contiguous, dot_precision,
                                     interpreter_samples, masked_softmax, mm, next_pow2, or_dummy,
                                     partial_slots, persistent_programs, reduce_partials, register_cap,
                                     target_of)
from fastint.options import FieldAttentionOptions


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

@triton.jit
def _relu_if(t, FLAG: tl.constexpr):
    if FLAG:
        t = tl.maximum(t, 0.0)
    return t


@triton.jit
def _grad_relu_if(g, out, FLAG: tl.constexpr):
    """Gradient through ``out = relu(p)`` (``out > 0`` iff ``p > 0``) when ``FLAG``."""
    if FLAG:
        g = tl.where(out > 0.0, g, 0.0)
    return g


@triton.jit
def _to_heads(t, SAMPLES: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr):
    """rows ``[SAMPLES*M_PAD, H_PAD*DH_PAD]`` -> heads ``[SAMPLES*H_PAD, M_PAD, DH_PAD]``."""
    t = tl.permute(tl.reshape(t, [SAMPLES, M_PAD, H_PAD, DH_PAD]), (0, 2, 1, 3))
    return tl.reshape(t, [SAMPLES * H_PAD, M_PAD, DH_PAD])


@triton.jit
def _to_rows(t, SAMPLES: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr):
    """heads ``[SAMPLES*H_PAD, M_PAD, DH_PAD]`` -> rows ``[SAMPLES*M_PAD, H_PAD*DH_PAD]``."""
    t = tl.permute(tl.reshape(t, [SAMPLES, H_PAD, M_PAD, DH_PAD]), (0, 2, 1, 3))
    return tl.reshape(t, [SAMPLES * M_PAD, H_PAD * DH_PAD])


@triton.jit
def _head_columns(H, dh, H_PAD: tl.constexpr, DH_PAD: tl.constexpr):
    """Global column ``h*dh + j`` of each padded head column ``h*DH_PAD + j``, and its mask."""
    offs_c = tl.arange(0, H_PAD * DH_PAD)
    head, j = offs_c // DH_PAD, offs_c % DH_PAD
    return head * dh + j, (head < H) & (j < dh)


@triton.jit
def _load_weight(ptr, offs_d, d, cols, col_mask, row_stride, col_offset):
    """``W[:, col_offset + cols]`` as ``[D_PAD, HD_PAD]`` (storage dtype; zeros where padded)."""
    mask = (offs_d[:, None] < d) & col_mask[None, :]
    return tl.load(ptr + offs_d[:, None] * row_stride + col_offset + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _load_vector(ptr, cols, col_mask, offset, HAS: tl.constexpr, default: tl.constexpr):
    """``v[offset + cols]`` as fp32 ``[HD_PAD]``; ``default`` everywhere when absent."""
    if HAS:
        return tl.load(ptr + offset + cols, mask=col_mask, other=0.0).to(tl.float32)
    return tl.full(cols.shape, default, tl.float32)


@triton.jit
def _layer_norm(z, col_mask, width, eps):
    """Normalised ``(z - mean) * rstd`` over the real columns (0 in padded ones) and ``rstd``."""
    mean = tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1) / width
    centred = tl.where(col_mask[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / width + eps)
    return centred * rstd[:, None], rstd


@triton.jit
def _layer_norm_backward(dn, n, rstd, col_mask, width):
    """Gradient w.r.t. the LayerNorm input given ``dn`` w.r.t. the normalised ``n``."""
    dn = tl.where(col_mask[None, :], dn, 0.0)
    mean_dn = tl.sum(dn, axis=1) / width
    mean_dn_n = tl.sum(dn * n, axis=1) / width
    return tl.where(col_mask[None, :], rstd[:, None] * (dn - mean_dn[:, None] - n * mean_dn_n[:, None]), 0.0)


@triton.jit
def _project(x2, w_ptr, b_ptr, part, offs_d, d, cols, col_mask, width, SAMPLES: tl.constexpr,
             M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr, HAS_B: tl.constexpr,
             RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Part ``part`` (0 Q, 1 K, 2 V) of ``act(x W_qkv + b_qkv)`` in heads layout (fp32)."""
    w = _load_weight(w_ptr, offs_d, d, cols, col_mask, 3 * width, part * width)
    bias = _load_vector(b_ptr, cols, col_mask, part * width, HAS_B, 0.0)
    p = _relu_if(mm(x2, w, x2.dtype, PRECISION) + bias[None, :], RELU)
    return _to_heads(p, SAMPLES, M_PAD, H_PAD, DH_PAD)


@triton.jit
def _head_project(x2, w_ptr, b_ptr, column0, offs_d, d, dh, width, DH_PAD: tl.constexpr,
                  HAS_B: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr):
    """One head of one part of ``act(x W_qkv + b_qkv)``: columns ``column0 .. column0 + dh - 1``,
    rows ``[SAMPLES*M_PAD, DH_PAD]`` (fp32)."""
    offs_j = tl.arange(0, DH_PAD)
    cols, col_mask = column0 + offs_j, offs_j < dh
    w = _load_weight(w_ptr, offs_d, d, cols, col_mask, 3 * width, 0)
    bias = _load_vector(b_ptr, cols, col_mask, 0, HAS_B, 0.0)
    return _relu_if(mm(x2, w, x2.dtype, PRECISION) + bias[None, :], RELU)


@triton.jit
def _head_attention(x2, wqkv_ptr, bqkv_ptr, h, scale, M, offs_d, d, dh, width, SAMPLES: tl.constexpr,
                    M_PAD: tl.constexpr, DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Head ``h`` of the tile: ``q, k, v`` rows ``[SAMPLES*M_PAD, DH_PAD]`` and the attention
    ``a [SAMPLES, M_PAD, M_PAD]`` (fp32)."""
    q = _head_project(x2, wqkv_ptr, bqkv_ptr, h * dh, offs_d, d, dh, width, DH_PAD, HAS_BQKV, QKV_RELU,
                      PRECISION)
    k = _head_project(x2, wqkv_ptr, bqkv_ptr, width + h * dh, offs_d, d, dh, width, DH_PAD, HAS_BQKV,
                      QKV_RELU, PRECISION)
    v = _head_project(x2, wqkv_ptr, bqkv_ptr, 2 * width + h * dh, offs_d, d, dh, width, DH_PAD, HAS_BQKV,
                      QKV_RELU, PRECISION)
    scores = scale * mm(tl.reshape(q, [SAMPLES, M_PAD, DH_PAD]),
                        tl.permute(tl.reshape(k, [SAMPLES, M_PAD, DH_PAD]), (0, 2, 1)), x2.dtype, PRECISION)
    return q, k, v, masked_softmax(scores, (tl.arange(0, M_PAD) < M)[None, None, :], 2)


@triton.jit
def _head_project_backward(grad, out, x2t, w_ptr, dw_ptr, db_ptr, part, h, slot, offs_d, d, dh, width,
                           D_PAD: tl.constexpr, HD_PAD: tl.constexpr, DH_PAD: tl.constexpr,
                           HAS_B: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of ``_head_project`` (part ``part``, head ``h``) given ``grad`` rows w.r.t. its
    output ``out``: adds ``x^T dP`` and ``colsum(dP)`` to head ``h``'s columns of this program's
    partial slot ``slot`` (``[3, D_PAD, HD_PAD]`` / ``[3, HD_PAD]``), returns ``dP W^T`` rows."""
    offs_j = tl.arange(0, DH_PAD)
    dp = _grad_relu_if(grad, out, RELU)
    w = _load_weight(w_ptr, offs_d, d, part * width + h * dh + offs_j, offs_j < dh, 3 * width, 0)
    base = slot * 3 + part
    columns = h * DH_PAD + offs_j
    accumulate_slot(dw_ptr + base * (D_PAD * HD_PAD) + offs_d[:, None] * HD_PAD + columns[None, :],
                    mm(x2t, dp, x2t.dtype, PRECISION))
    if HAS_B:
        accumulate_slot(db_ptr + base * HD_PAD + columns, tl.sum(dp, axis=0))
    return mm(dp, tl.trans(w), x2t.dtype, PRECISION)


@triton.jit
def _row_offsets(sample0, B, M, SAMPLES: tl.constexpr, M_PAD: tl.constexpr):
    """Global row ``b*M + m`` of each tile row and its mask."""
    rows = tl.arange(0, SAMPLES * M_PAD)
    samples, fields = sample0 + (rows // M_PAD).to(tl.int64), rows % M_PAD
    return samples * M + fields, (samples < B) & (fields < M)


@triton.jit
def _tile(x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0,
          B, M, d, H, dh, scale, eps,
          SAMPLES: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
          DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
          RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr,
          OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
          HAS_LNB: tl.constexpr, BY_HEAD: tl.constexpr, PRECISION: tl.constexpr):
    """Forward of samples ``sample0 .. sample0+SAMPLES-1``; returns every intermediate the backward needs.

    Returns ``x2`` rows ``[SAMPLES*M_PAD, D_PAD]`` (storage dtype), ``a`` in heads layout
    ``[SAMPLES*H_PAD, M_PAD, M_PAD]`` (fp32; with ``BY_HEAD`` a placeholder), ``r`` (residual),
    ``z`` (``O + R``), ``n, rstd`` (LayerNorm; dummies without) and ``y``, rows
    ``[SAMPLES*M_PAD, HD_PAD]`` fp32. ``BY_HEAD``: the attention one head at a time (fewer live
    tiles, the backward's choice) instead of all heads in batched dots (the forward's).
    """
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    grow, row_mask = _row_offsets(sample0, B, M, SAMPLES, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    width = H * dh

    x2 = tl.load(x_ptr + grow[:, None] * d + offs_d[None, :],
                 mask=row_mask[:, None] & (offs_d[None, :] < d), other=0.0)
    if BY_HEAD:
        head_of = tl.arange(0, H_PAD)[None, :, None]
        z3 = tl.zeros([SAMPLES * M_PAD, H_PAD, DH_PAD], tl.float32)
        for h in range(H):
            q_h, k_h, v_h, a_h = _head_attention(x2, wqkv_ptr, bqkv_ptr, h, scale, M, offs_d, d, dh, width,
                                                 SAMPLES, M_PAD, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            o = mm(a_h, tl.reshape(v_h, [SAMPLES, M_PAD, DH_PAD]), DTYPE, PRECISION)
            z3 += tl.where(head_of == h, tl.reshape(o, [SAMPLES * M_PAD, DH_PAD])[:, None, :], 0.0)
        z = tl.reshape(z3, [SAMPLES * M_PAD, H_PAD * DH_PAD])
        a = tl.zeros([SAMPLES * H_PAD, M_PAD, M_PAD], tl.float32)    # not needed by the backward
    else:
        q = _project(x2, wqkv_ptr, bqkv_ptr, 0, offs_d, d, cols, col_mask, width, SAMPLES, M_PAD, H_PAD,
                     DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        k = _project(x2, wqkv_ptr, bqkv_ptr, 1, offs_d, d, cols, col_mask, width, SAMPLES, M_PAD, H_PAD,
                     DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        v = _project(x2, wqkv_ptr, bqkv_ptr, 2, offs_d, d, cols, col_mask, width, SAMPLES, M_PAD, H_PAD,
                     DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        scores = scale * mm(q, tl.permute(k, (0, 2, 1)), DTYPE, PRECISION)  # [SAMPLES*H_PAD, M_PAD, M_PAD]
        a = masked_softmax(scores, (tl.arange(0, M_PAD) < M)[None, None, :], 2)
        z = _to_rows(mm(a, v, DTYPE, PRECISION), SAMPLES, M_PAD, H_PAD, DH_PAD)

    if RESIDUAL == 2:
        w = _load_weight(wres_ptr, offs_d, d, cols, col_mask, width, 0)
        bias = _load_vector(bres_ptr, cols, col_mask, 0, HAS_BRES, 0.0)
        r = _relu_if(mm(x2, w, DTYPE, PRECISION) + bias[None, :], RES_RELU)
    elif RESIDUAL == 1:
        r = tl.load(x_ptr + grow[:, None] * d + cols[None, :],
                    mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
    else:
        r = tl.zeros_like(z)
    z += r

    gamma = _load_vector(lnw_ptr, cols, col_mask, 0, HAS_LNW, 1.0)
    beta = _load_vector(lnb_ptr, cols, col_mask, 0, HAS_LNB, 0.0)
    if LAYER_NORM == 1:                                       # after: LN(act_out(Z))
        n, rstd = _layer_norm(_relu_if(z, OUT_RELU), col_mask, width, eps)
        y = n * gamma[None, :] + beta[None, :]
    elif LAYER_NORM == 2:                                     # before: act_out(LN(Z))
        n, rstd = _layer_norm(z, col_mask, width, eps)
        y = _relu_if(n * gamma[None, :] + beta[None, :], OUT_RELU)
    else:
        n, rstd = z, tl.zeros_like(row_mask.to(tl.float32))
        y = _relu_if(z, OUT_RELU)
    return x2, a, r, z, n, rstd, y


@triton.jit
def _attention_offsets(sample0, B, M, H, SAMPLES: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr):
    """Offsets and mask of the heads-layout tile ``[SAMPLES*H_PAD, M_PAD, M_PAD]`` in ``A [B, H, M, M]``."""
    entry = tl.arange(0, SAMPLES * H_PAD)
    samples, heads = sample0 + (entry // H_PAD).to(tl.int64), entry % H_PAD
    offs_m = tl.arange(0, M_PAD)
    query, key = offs_m[None, :, None], offs_m[None, None, :]
    offs = ((samples * H + heads)[:, None, None] * M + query) * M + key
    mask = ((samples < B) & (heads < H))[:, None, None] & (query < M) & (key < M)
    return offs, mask


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _head_attention_offsets(sample0, h, B, M, H, SAMPLES: tl.constexpr, M_PAD: tl.constexpr):
    """Offsets and mask of head ``h``'s tile ``[SAMPLES, M_PAD, M_PAD]`` in ``A [B, H, M, M]``."""
    samples = sample0 + tl.arange(0, SAMPLES).to(tl.int64)
    offs_m = tl.arange(0, M_PAD)
    query, key = offs_m[None, :, None], offs_m[None, None, :]
    offs = ((samples * H + h)[:, None, None] * M + query) * M + key
    return offs, (samples < B)[:, None, None] & (query < M) & (key < M)


@triton.jit
def _field_attention_fwd_kernel(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, y_ptr, a_ptr,
        B, M, d, H, dh, scale, eps,
        SAMPLES: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
        DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, RESIDUAL: tl.constexpr,
        HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr, OUT_RELU: tl.constexpr,
        LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr, HAS_LNB: tl.constexpr,
        STORE_A: tl.constexpr, PRECISION: tl.constexpr):
    """One program: samples ``[pid*SAMPLES, (pid+1)*SAMPLES)``, all heads. Loads their ``x``
    rows ``[SAMPLES*M_PAD, D_PAD]``, runs the whole layer on chip (``_tile``) and stores ``Y``
    rows ``[SAMPLES*M_PAD, H*dh]`` and, with ``STORE_A``, ``A [SAMPLES, H, M, M]``."""
    sample0 = tl.program_id(0).to(tl.int64) * SAMPLES
    x2, a, r, z, n, rstd, y = _tile(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0, B, M, d, H, dh,
        scale, eps, SAMPLES, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU, RESIDUAL, HAS_BRES,
        RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, False, PRECISION)
    grow, row_mask = _row_offsets(sample0, B, M, SAMPLES, M_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    tl.store(y_ptr + grow[:, None] * (H * dh) + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
    if STORE_A:
        offs, mask = _attention_offsets(sample0, B, M, H, SAMPLES, M_PAD, H_PAD)
        tl.store(a_ptr + offs, a.to(a_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _field_attention_bwd_kernel(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, gy_ptr, ga_ptr,
        dx_ptr, dwqkv_ptr, dbqkv_ptr, dwres_ptr, dbres_ptr, dlnw_ptr, dlnb_ptr,
        B, M, d, H, dh, scale, eps, num_tiles,
        SAMPLES: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
        DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, RESIDUAL: tl.constexpr,
        HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr, OUT_RELU: tl.constexpr,
        LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr, HAS_LNB: tl.constexpr,
        HAS_GY: tl.constexpr, HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: tiles ``pid, pid + programs, ...`` of ``SAMPLES`` samples each. Per tile it
    recomputes the forward (``_tile``), back-propagates ``grad_y`` / ``grad_a`` through LayerNorm,
    the attention and the projections, stores ``dx`` rows ``[SAMPLES*M_PAD, d]`` and adds the
    tile's weight gradients into its own partial slots ``[D_PAD, HD_PAD]`` / ``[HD_PAD]``."""
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    HD_PAD: tl.constexpr = H_PAD * DH_PAD
    pid = tl.program_id(0)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, HD_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    width = H * dh
    # this program's partial weight-gradient slots (padded tile shape: no masks needed)
    dw_slot = pid.to(tl.int64) * (D_PAD * HD_PAD) + offs_d[:, None] * HD_PAD + offs_c[None, :]
    dv_slot = pid.to(tl.int64) * HD_PAD + offs_c
    gamma = _load_vector(lnw_ptr, cols, col_mask, 0, HAS_LNW, 1.0)
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        sample0 = tile * SAMPLES
        x2, a_all, r, z, n, rstd, y = _tile(
            x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0, B, M, d, H,
            dh, scale, eps, SAMPLES, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU, RESIDUAL,
            HAS_BRES, RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, True, PRECISION)
        grow, row_mask = _row_offsets(sample0, B, M, SAMPLES, M_PAD)
        out_mask = row_mask[:, None] & col_mask[None, :]

        # dZ through the output activation and LayerNorm
        if HAS_GY:
            gy = tl.load(gy_ptr + grow[:, None] * width + cols[None, :], mask=out_mask, other=0.0
                         ).to(tl.float32)
        else:
            gy = tl.zeros_like(z)
        if LAYER_NORM == 1:                                   # y = LN(relu(z))
            dgamma, dbeta = tl.sum(gy * n, axis=0), tl.sum(gy, axis=0)
            dz = _grad_relu_if(_layer_norm_backward(gy * gamma[None, :], n, rstd, col_mask, width),
                               z, OUT_RELU)
        elif LAYER_NORM == 2:                                 # y = relu(LN(z))
            beta = _load_vector(lnb_ptr, cols, col_mask, 0, HAS_LNB, 0.0)
            gy = _grad_relu_if(gy, n * gamma[None, :] + beta[None, :], OUT_RELU)
            dgamma, dbeta = tl.sum(gy * n, axis=0), tl.sum(gy, axis=0)
            dz = _layer_norm_backward(gy * gamma[None, :], n, rstd, col_mask, width)
        else:
            dz = _grad_relu_if(gy, z, OUT_RELU)

        if LAYER_NORM != 0:
            if HAS_LNW:
                accumulate_slot(dlnw_ptr + dv_slot, dgamma)
            if HAS_LNB:
                accumulate_slot(dlnb_ptr + dv_slot, dbeta)

        # Each gradient tile is consumed as soon as it exists (the residual first, then V, Q, K):
        # fewer tiles live at once than computing dQ, dK, dV first (register pressure).
        x2t = tl.trans(x2)
        if RESIDUAL == 2:
            dr = _grad_relu_if(dz, r, RES_RELU)
            w = _load_weight(wres_ptr, offs_d, d, cols, col_mask, width, 0)
            dx = mm(dr, tl.trans(w), DTYPE, PRECISION)
            accumulate_slot(dwres_ptr + dw_slot, mm(x2t, dr, DTYPE, PRECISION))
            if HAS_BRES:
                accumulate_slot(dbres_ptr + dv_slot, tl.sum(dr, axis=0))
        elif RESIDUAL == 1:
            # scatter head columns back to x's columns: dZ @ E with E[h*DH_PAD + j, h*dh + j] = 1
            select = (cols[:, None] == offs_d[None, :]) & col_mask[:, None]
            dx = tl.dot(dz, select.to(tl.float32), input_precision="tf32x3")
        else:
            dx = tl.zeros([SAMPLES * M_PAD, D_PAD], tl.float32)

        # attention and projections, one head at a time (only one head's tiles are live)
        head_of = tl.arange(0, H_PAD)[None, :, None]
        dz3 = tl.reshape(dz, [SAMPLES * M_PAD, H_PAD, DH_PAD])
        for h in range(H):
            q, k, v, a = _head_attention(x2, wqkv_ptr, bqkv_ptr, h, scale, M, offs_d, d, dh, width, SAMPLES,
                                         M_PAD, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            q3 = tl.reshape(q, [SAMPLES, M_PAD, DH_PAD])
            k3 = tl.reshape(k, [SAMPLES, M_PAD, DH_PAD])
            do = tl.reshape(tl.sum(tl.where(head_of == h, dz3, 0.0), axis=1), [SAMPLES, M_PAD, DH_PAD])
            da = mm(do, tl.permute(tl.reshape(v, [SAMPLES, M_PAD, DH_PAD]), (0, 2, 1)), DTYPE, PRECISION)
            if HAS_GA:
                offs, mask = _head_attention_offsets(sample0, h, B, M, H, SAMPLES, M_PAD)
                da += tl.load(ga_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dv = tl.reshape(mm(tl.permute(a, (0, 2, 1)), do, DTYPE, PRECISION), [SAMPLES * M_PAD, DH_PAD])
            dx += _head_project_backward(dv, v, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 2, h, pid, offs_d, d,
                                         dh, width, D_PAD, HD_PAD, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            ds = scale * a * (da - tl.sum(a * da, axis=2)[:, :, None])
            dq = tl.reshape(mm(ds, k3, DTYPE, PRECISION), [SAMPLES * M_PAD, DH_PAD])
            dx += _head_project_backward(dq, q, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 0, h, pid, offs_d, d,
                                         dh, width, D_PAD, HD_PAD, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            dk = tl.reshape(mm(tl.permute(ds, (0, 2, 1)), q3, DTYPE, PRECISION), [SAMPLES * M_PAD, DH_PAD])
            dx += _head_project_backward(dk, k, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 1, h, pid, offs_d, d,
                                         dh, width, D_PAD, HD_PAD, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        tl.store(dx_ptr + grow[:, None] * d + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & (offs_d[None, :] < d))


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

_RESIDUAL_CODES = {"none": 0, "identity": 1, "project": 2}
_LAYER_NORM_CODES = {"none": 0, "after": 1, "before": 2}
PARAMETERS = ("w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")
_BACKWARD_PROGRAMS_PER_SM = 4   # persistent grid: each program loops over tiles


def padded_sizes(fields: int, dim: int, num_heads: int, head_dim: int) -> dict[str, int]:
    """Power-of-two tile sizes ``M_PAD``, ``D_PAD``, ``H_PAD``, ``DH_PAD`` (``tl.dot`` needs >= 16)."""
    return {"M_PAD": next_pow2(fields), "D_PAD": next_pow2(dim),
            "H_PAD": triton.next_power_of_2(num_heads), "DH_PAD": next_pow2(head_dim)}


def _samples_and_warps(batch: int, pads: dict[str, int], dtype: torch.dtype, target: Target,
                       backward: bool) -> tuple[int, int]:
    """GPU: about 128 rows (``SAMPLES * M_PAD``) per program in the half-precision forward, 64
    in the fp32 forward (its 3xTF32 dots hold split operands) and in the backward (which holds
    ~3x more live tiles), at least one sample; warps so that the largest fp32 tile (rows x width,
    or the scores ``[SAMPLES*H_PAD, M_PAD, M_PAD]``) is about 64 values per thread in the forward
    and 32 in the backward (static audit: half the spills at M = 39), 4..16 warps.
    Interpreter: a handful of large programs."""
    if target.interpreter:
        return interpreter_samples(batch), 4
    m_pad, width = pads["M_PAD"], max(pads["D_PAD"], pads["H_PAD"] * pads["DH_PAD"])
    samples = max(1, (64 if backward or dtype == torch.float32 else 128) // m_pad)
    largest = samples * max(m_pad * width, pads["H_PAD"] * m_pad * m_pad)
    values_per_thread = 32 if backward else 64
    return samples, min(16, max(4, triton.next_power_of_2(largest // (values_per_thread * 32))))


def launch_config(batch: int, fields: int, dim: int, head_dim: int, dtype: torch.dtype,
                  options: FieldAttentionOptions, target: Target, *, present: Collection[str] = ("w_qkv",),
                  backward: bool = False, return_attention: bool = False, grad_y: bool = True,
                  grad_a: bool = False) -> LaunchConfig:
    """The launch of the forward (or ``backward``) kernel for ``x [batch, fields, dim]`` in
    ``dtype`` with the parameters named in ``present`` (see ``PARAMETERS``); ``grad_y``/``grad_a``:
    which upstream gradients the backward gets.

    Forward grid: one program per ``SAMPLES`` samples (axis 0 only). Backward grid: a few programs
    per SM (``persistent_programs``), each looping over tiles of ``SAMPLES`` samples."""
    pads = padded_sizes(fields, dim, options.num_heads, head_dim)
    samples, num_warps = _samples_and_warps(batch, pads, dtype, target, backward)
    num_tiles = triton.cdiv(batch, samples)
    meta = dict(
        SAMPLES=samples, **pads, HAS_BQKV="b_qkv" in present, QKV_RELU=options.qkv_relu,
        RESIDUAL=_RESIDUAL_CODES[options.residual], HAS_BRES="b_res" in present,
        RES_RELU=options.res_relu, OUT_RELU=options.out_relu,
        LAYER_NORM=_LAYER_NORM_CODES[options.layer_norm], HAS_LNW="ln_weight" in present,
        HAS_LNB="ln_bias" in present, PRECISION=dot_precision(dtype))
    if backward:   # one pipeline stage: the tile loop re-reads loop-invariant weights
        return LaunchConfig(_field_attention_bwd_kernel,
                            (persistent_programs(num_tiles, target, _BACKWARD_PROGRAMS_PER_SM),),
                            {**meta, "HAS_GY": grad_y, "HAS_GA": grad_a}, num_warps, num_stages=1,
                            maxnreg=register_cap(num_warps))
    return LaunchConfig(_field_attention_fwd_kernel, (num_tiles,), {**meta, "STORE_A": return_attention},
                        num_warps, maxnreg=register_cap(num_warps))


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _present(params: Sequence[torch.Tensor | None]) -> tuple[str, ...]:
    return tuple(name for name, p in zip(PARAMETERS, params) if p is not None)


def forward(x: torch.Tensor, params: Sequence[torch.Tensor | None], options: FieldAttentionOptions,
            return_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, M, d]`` and ``params`` (``PARAMETERS`` order, ``None`` where absent) ->
    ``Y [B, M, H*dh]`` and ``A [B, H, M, M]`` (an empty ``[0]`` tensor unless ``return_attention``);
    see ``fastint.ops.field_attention``."""
    x, *params = contiguous(x, *params)
    (B, M, d), width = x.shape, params[0].shape[1] // 3
    dh = width // options.num_heads
    y = torch.empty(B, M, width, dtype=x.dtype, device=x.device)
    a = (torch.empty(B, options.num_heads, M, M, dtype=x.dtype, device=x.device) if return_attention
         else x.new_empty(0))
    if B == 0:
        return y, a
    cfg = launch_config(B, M, d, dh, x.dtype, options, target_of(x.device), present=_present(params),
                        return_attention=return_attention)
    cfg.launch(x, *or_dummy(*params, dummy=x), y, a if return_attention else y,
               B, M, d, options.num_heads, dh, options.score_scale(dh), options.ln_eps)
    return y, a


def backward(grad_y: torch.Tensor | None, grad_a: torch.Tensor | None, x: torch.Tensor,
             params: Sequence[torch.Tensor | None], options: FieldAttentionOptions
             ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """``dx`` and the parameters' gradients (``PARAMETERS`` order, ``None`` for absent ones) given
    ``grad_y [B, M, H*dh]`` and ``grad_a [B, H, M, M]`` (either may be ``None``: zero)."""
    x, *params = contiguous(x, *params)
    grad_y, grad_a = contiguous(grad_y, grad_a)
    (B, M, d), width = x.shape, params[0].shape[1] // 3
    dh = width // options.num_heads
    if B == 0 or (grad_y is None and grad_a is None):
        return torch.zeros_like(x), tuple(None if p is None else torch.zeros_like(p) for p in params)
    cfg = launch_config(B, M, d, dh, x.dtype, options, target_of(x.device), present=_present(params),
                        backward=True, grad_y=grad_y is not None, grad_a=grad_a is not None)
    h_pad, dh_pad = cfg.meta["H_PAD"], cfg.meta["DH_PAD"]
    d_pad, hd_pad, programs = cfg.meta["D_PAD"], h_pad * dh_pad, cfg.grid[0]
    slot_shapes = {"w_qkv": (3, d_pad, hd_pad), "b_qkv": (3, hd_pad), "w_res": (d_pad, hd_pad),
                   "b_res": (hd_pad,), "ln_weight": (hd_pad,), "ln_bias": (hd_pad,)}
    slots = [None if p is None else partial_slots(programs, *slot_shapes[name], device=x.device)
             for name, p in zip(PARAMETERS, params)]
    dx = torch.empty_like(x)
    cfg.launch(x, *or_dummy(*params, grad_y, grad_a, dummy=x), dx, *or_dummy(*slots, dummy=x),
               B, M, d, options.num_heads, dh, options.score_scale(dh), options.ln_eps,
               triton.cdiv(B, cfg.meta["SAMPLES"]))

    def unpad(slot, like, name):
        """Summed slots without padded heads / head columns (and weight rows) -> ``like``'s layout."""
        g = reduce_partials(slot).unflatten(-1, (h_pad, dh_pad))[..., :options.num_heads, :dh].flatten(-2)
        if name in ("w_qkv", "w_res"):
            g = g[..., :d, :]
        if name == "w_qkv":                                   # [3, d, HD] -> [d, 3*HD]
            g = g.permute(1, 0, 2)
        return g.reshape(like.shape).to(like.dtype).contiguous()

    return dx, tuple(None if p is None else unpad(slot, p, name)
                     for name, slot, p in zip(PARAMETERS, slots, params))
