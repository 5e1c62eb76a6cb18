"""Triton kernels for field attention: AutoInt's interacting layer, fused.

Per sample, ``X [M, d]`` (``H`` heads of width ``dh``, ``HD = H*dh``):

    P_q, P_k, P_v = X W_q + b_q, X W_k + b_k, X W_v + b_v    [M, HD]  (W_qkv = [W_q | W_k | W_v])
    Q, K, V = act_qkv(P_q), act_qkv(P_k), act_qkv(P_v)
    A_h = softmax_keys(scale Q_h K_h^T)                        [M, M] per head
    O = concat_h(A_h V_h)                                      [M, HD]
    R = act_res(X W_res + b_res) | X | 0                       (residual "project" | "identity" | "none")
    Z = O + R;  Y = act_out(Z) | LN(act_out(Z)) | act_out(LN(Z))   (layer_norm "none" | "after" | "before")

Layout: a program owns ``SAMPLES`` consecutive samples (grid axis 0, so ``B * H`` is not limited
by the 65,535 cap of grid axes 1/2), held as rows ``[SAMPLES*M_PAD, ...]``: one row per (sample,
field), fields padded to ``M_PAD = max(16, next_pow2(M))``; every load and store is masked. Its
queries are ``ROWS`` tile rows: all of them, or with ``ROWS < M_PAD`` (fp32, or long samples) one
sample in query blocks of ``ROWS`` rows (``_query_tile``: the forward has a program per query
block, ``bwd_attention`` loops over them), so that few rows of fp32 3xTF32 operands are live.
Columns are ``d`` (``D_PAD``), one head (``DH_PAD = max(16, next_pow2(dh))``: ``tl.dot`` operands)
or all heads side by side (``H_PAD`` heads of ``DH_COLS`` columns, ``DH_COLS = next_pow2(dh)``
without the floor of 16: column ``h*DH_COLS + j`` holds global column ``h*dh + j``). Every tile
op is a 2-D ``tl.dot``, one head at a time: the projections over all rows of the tile, and the
attention over blocks of ``KEYS`` key rows (flash-attention style): a first pass over the key
blocks gives each query's softmax normaliser ``lse = log sum_keys exp(scale q k^T)``, a second
``O_h = sum_blocks exp(scale Q_h K_hj^T - lse) V_hj``. The score tile of a block is
``[rows, KEYS]``, block-diagonal (keys of other samples masked); only one head's queries and one
key block's keys, values and probabilities are live. The projections reduce over ``d`` in steps of
``D_CHUNK`` columns of ``x`` re-read from memory (16 in fp32, whose 3xTF32 operands are split in
registers; all of ``D_PAD`` in half precision). LayerNorm reduces over columns.

Dot operands are in the input dtype (fp16/bf16 on tensor cores; fp32 as ``tf32x3`` or ``tf32``
following ``torch.backends.cuda.matmul.allow_tf32``, see ``dot_precision``); accumulation,
softmax and LayerNorm are fp32. Padded rows/columns are never stored and carry zero gradient.

Backward: four kernels (nothing of size ``B x H x M x M`` is saved; the forward is recomputed
from ``x`` and the weights), so that no program holds the output-side tiles, the attention
tiles and the weight gradients at once (register pressure, static GPU audit):

1. ``bwd_output``: recomputes ``Z`` (``_tile``, storing each head's ``lse [B*M, H]``) and
   back-propagates ``grad_y`` through the output activation and LayerNorm: stores ``dZ``,
   ``delta_h = rowsum(A_h * dA_h) = rowsum(dZ_h * O_h) (+ rowsum(A_h * grad_a_h) with an upstream
   grad of A, from the recomputed A)`` ``[B*M, H]`` and ``dR_p = dZ * [R_p > 0 if res_relu]``, adds
   ``dgamma = colsum(gy * N)``, ``dbeta = colsum(gy)`` into per-program partial slots.
2. ``bwd_attention``: per head, key block ``j`` and query block ``i``, recomputes ``Q_hi, K_hj,
   V_hj`` and ``A_hij = exp(scale Q_hi K_hj^T - lse_hi)``; with ``dO_h = dZ_h``:

       dV_hj += A_hij^T dO_hi;  dA_hij = dO_hi V_hj^T (+ upstream grad of A)
       dS_hij = scale * A_hij * (dA_hij - delta_hi);  dK_hj += dS_hij^T Q_hi;  dQ_hi += dS_hij K_hj
       dP_* = dQ/dK/dV * [P_* > 0 if qkv_relu]

   and stores ``G = [dP_q | dP_k | dP_v | dR_p]``, the pre-activation gradients of
   ``[X W_qkv | X W_res]`` (``dR_p`` with ``residual="project"`` only).
3. ``bwd_input``: ``dX = G [W_qkv | W_res]^T`` (+ ``dZ`` with the identity residual), a tiled GEMM.
4. ``bwd_parameters``: ``[dW_qkv | dW_res] = X^T G`` and ``[db_qkv | db_res] = colsum(G)``: a
   plain tiled reduction over the ``B*M`` rows into per-chunk fp32 partial slots.

Partial slots (``kernels._common.partial_slots``) are summed afterwards: deterministic, no
atomics. ``dZ [B*M, HD]`` and ``G [B*M, 3*HD or 4*HD]`` are in ``x``'s dtype (the dots that read
them round their operands to it anyway), ``lse`` and ``delta`` fp32: ``(4 or 5) * M * HD``
elements plus ``2 * M * H`` floats per sample in memory; in HBM traffic ``dZ`` is written and read
once, ``G`` written once and read twice (its ``dR_p`` columns three times), ``x`` read three times
more: e.g. ~85 KB more per sample at M = 39, d = HD = 64, fp16 (the fused backward moved ``x``,
``grad_y`` and ``dx``: 15 KB), and 1.6 GB of buffers at B = 65,536.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (INTERPRETER_PROGRAMS, LaunchConfig, Target, accumulate_slot, contiguous,
                                     dot_precision, interpreter_samples, mm, next_pow2, or_dummy,
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
def _head_columns(H, dh, H_PAD: tl.constexpr, DH_COLS: tl.constexpr):
    """Global column ``h*dh + j`` of each padded head column ``h*DH_COLS + j``, and its mask."""
    offs_c = tl.arange(0, H_PAD * DH_COLS)
    head, j = offs_c // DH_COLS, offs_c % DH_COLS
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
def _project(x_ptr, grow, row_mask, w_ptr, cols, col_mask, d, w_stride, D_PAD: tl.constexpr,
             D_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
    """``x[rows] W[:, cols]``, fp32 ``[len(grow), len(cols)]``: ``x``'s rows ``grow`` of ``[B*M, d]``
    are read in ``D_CHUNK``-column pieces (L1/L2 hits after the first), so no full-width ``x``
    operand (and, in fp32, its 3xTF32 split) is held in registers."""
    acc = tl.zeros([grow.shape[0], cols.shape[0]], tl.float32)
    for c in tl.static_range(0, D_PAD, D_CHUNK):
        offs_c = c + tl.arange(0, D_CHUNK)
        xc = _load_rows(x_ptr, grow, row_mask, offs_c, d)
        acc += mm(xc, _load_weight(w_ptr, offs_c, d, cols, col_mask, w_stride, 0), xc.dtype, PRECISION)
    return acc


@triton.jit
def _head_project(x_ptr, grow, row_mask, w_ptr, b_ptr, column0, d, dh, width, D_PAD: tl.constexpr,
                  D_CHUNK: tl.constexpr, DH_PAD: tl.constexpr, HAS_B: tl.constexpr, RELU: tl.constexpr,
                  PRECISION: tl.constexpr):
    """One head of one part of ``act(x W_qkv + b_qkv)`` for ``x``'s rows ``grow``: columns
    ``column0 .. column0 + dh - 1``, ``[len(grow), DH_PAD]`` (fp32)."""
    offs_j = tl.arange(0, DH_PAD)
    cols, col_mask = column0 + offs_j, offs_j < dh
    bias = _load_vector(b_ptr, cols, col_mask, 0, HAS_B, 0.0)
    return _relu_if(_project(x_ptr, grow, row_mask, w_ptr, cols, col_mask, d, 3 * width, D_PAD, D_CHUNK, PRECISION)
                    + bias[None, :], RELU)


@triton.jit
def _rows(sample0, first, B, M, ROWS: tl.constexpr, M_PAD: tl.constexpr):
    """Tile rows ``first .. first + ROWS - 1`` (tile row ``r`` is field ``r % M_PAD`` of sample
    ``sample0 + r // M_PAD``): their global rows ``b*M + m`` in ``[B*M, ...]`` tensors, the mask of
    the real ones, and the tile rows themselves."""
    rows = first + tl.arange(0, ROWS)
    samples, fields = sample0 + (rows // M_PAD).to(tl.int64), rows % M_PAD
    return samples * M + fields, (samples < B) & (fields < M), rows


@triton.jit
def _query_tile(tile, M, SAMPLES: tl.constexpr, ROWS: tl.constexpr, M_PAD: tl.constexpr):
    """The first sample and the first tile row of query tile ``tile``: ``SAMPLES`` whole samples
    (``ROWS = SAMPLES * M_PAD``), or with ``ROWS < M_PAD`` query block ``tile % cdiv(M, ROWS)`` of
    sample ``tile // cdiv(M, ROWS)`` (its keys are still all of the sample's rows)."""
    if ROWS < M_PAD:
        blocks = tl.cdiv(M, ROWS)
    else:
        blocks = tl.cdiv(M, M_PAD)                            # 1
    tile = tl.cast(tile, tl.int64)
    return tile // blocks * SAMPLES, (tile % blocks) * ROWS


@triton.jit
def _load_rows(ptr, grow, row_mask, offs_d, d):
    """Columns ``offs_d`` of rows ``grow`` of a ``[B*M, d]`` tensor (storage dtype, zeros where padded)."""
    return tl.load(ptr + grow[:, None] * d + offs_d[None, :], mask=row_mask[:, None] & (offs_d[None, :] < d),
                   other=0.0)


@triton.jit
def _attention_block(sample0, h, B, M, H, qrows, krows, M_PAD: tl.constexpr):
    """Offsets in ``A [B, H, M, M]`` of head ``h``'s block (query tile rows ``qrows``, key tile rows
    ``krows``) and the mask of its real entries: a real query and a real key of the same sample (the
    tile's attention is block-diagonal, one ``M_PAD`` block per sample; zero elsewhere)."""
    samples, fields = sample0 + (qrows // M_PAD).to(tl.int64), qrows % M_PAD
    key_fields = krows % M_PAD
    offs = ((samples * H + h)[:, None] * M + fields[:, None]) * M + key_fields[None, :]
    mask = (((qrows[:, None] // M_PAD) == (krows[None, :] // M_PAD)) & (key_fields[None, :] < M)
            & ((samples < B) & (fields < M))[:, None])
    return offs, mask


@triton.jit
def _probabilities(q, k, lse, scale, mask, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Attention probabilities ``exp(scale q k^T - lse)`` of a key block, 0 outside ``mask``."""
    return tl.where(mask, tl.exp(scale * mm(q, tl.trans(k), DTYPE, PRECISION) - lse[:, None]), 0.0)


@triton.jit
def _key_block_attention(x_ptr, wqkv_ptr, bqkv_ptr, q, lse, qrows, sample0, key0, h, scale, B, M, H, d, dh,
                         width, KEYS: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
                         D_CHUNK: tl.constexpr, DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr,
                         QKV_RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Head ``h`` on key block ``key0 ..``: its keys and values ``[KEYS, DH_PAD]`` (fp32), the
    probabilities ``a [rows, KEYS]`` given ``lse``, their offsets in ``A`` and mask
    (``_attention_block``), and the block's global rows and their mask."""
    kgrow, kmask, krows = _rows(sample0, key0, B, M, KEYS, M_PAD)
    k = _head_project(x_ptr, kgrow, kmask, wqkv_ptr, bqkv_ptr, width + h * dh, d, dh, width, D_PAD, D_CHUNK, DH_PAD,
                      HAS_BQKV, QKV_RELU, PRECISION)
    v = _head_project(x_ptr, kgrow, kmask, wqkv_ptr, bqkv_ptr, 2 * width + h * dh, d, dh, width, D_PAD, D_CHUNK,
                      DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
    offs, mask = _attention_block(sample0, h, B, M, H, qrows, krows, M_PAD)
    return k, v, _probabilities(q, k, lse, scale, mask, x_ptr.dtype.element_ty, PRECISION), offs, mask, kgrow, kmask


@triton.jit
def _head_lse(x_ptr, wqkv_ptr, bqkv_ptr, q, qrows, sample0, h, scale, B, M, H, d, dh, width, n_keys,
              KEYS: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, D_CHUNK: tl.constexpr,
              DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Head ``h``'s softmax normaliser ``lse = log sum_keys exp(scale q k^T)`` per query row
    (fp32), over key blocks of ``KEYS`` rows (online maximum)."""
    row_max = tl.full(qrows.shape, -1.0e30, tl.float32)
    total = tl.zeros(qrows.shape, tl.float32)
    for key0 in range(0, n_keys, KEYS):
        kgrow, kmask, krows = _rows(sample0, key0, B, M, KEYS, M_PAD)
        k = _head_project(x_ptr, kgrow, kmask, wqkv_ptr, bqkv_ptr, width + h * dh, d, dh, width, D_PAD, D_CHUNK,
                          DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        _, mask = _attention_block(sample0, h, B, M, H, qrows, krows, M_PAD)
        scores = tl.where(mask, scale * mm(q, tl.trans(k), x_ptr.dtype.element_ty, PRECISION), float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        total = total * tl.exp(row_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), axis=1)
        row_max = new_max
    return row_max + tl.log(tl.maximum(total, 1.0e-30))    # no keys (rows past the batch): finite


@triton.jit
def _store_head_grad(g_ptr, grad, out, grow, row_mask, column0, dh, g_stride, DH_PAD: tl.constexpr,
                     RELU: tl.constexpr):
    """Store the pre-activation gradient of ``out = act(P)`` given ``grad`` w.r.t. ``out``, rows
    ``grow`` of ``G``, columns ``column0 .. column0 + dh - 1`` (storage dtype)."""
    offs_j = tl.arange(0, DH_PAD)
    tl.store(g_ptr + grow[:, None] * g_stride + column0 + offs_j[None, :],
             _grad_relu_if(grad, out, RELU).to(g_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (offs_j[None, :] < dh))


@triton.jit
def _tile(x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, a_ptr, ga_ptr, lse_ptr, sample0,
          first, B, M, d, H, dh, scale, eps,
          SAMPLES: tl.constexpr, ROWS: tl.constexpr, M_PAD: tl.constexpr, KEYS: tl.constexpr, D_PAD: tl.constexpr,
          D_CHUNK: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr, DH_COLS: tl.constexpr,
          HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr,
          RES_RELU: tl.constexpr, OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
          HAS_LNB: tl.constexpr, STORE_A: tl.constexpr, STORE_LSE: tl.constexpr, HAS_GA: tl.constexpr,
          PRECISION: tl.constexpr):
    """Forward of the ``ROWS`` query rows from tile row ``first`` of samples ``sample0 ..
    sample0+SAMPLES-1`` (``_query_tile``), one head at a time, each head's attention over the
    samples' key blocks of ``KEYS`` rows (``_head_lse``, then ``O_h = sum_blocks A_h V_h``): only
    one head's queries and one key block's keys, values and probabilities are live. Stores each
    head's attention into ``A`` with ``STORE_A``, its ``lse`` into ``lse [B*M, H]`` with ``STORE_LSE``.

    Returns, rows ``[ROWS, H_PAD*DH_COLS]`` fp32, ``r`` (residual), ``z`` (``O + R``), ``n, rstd``
    (LayerNorm; dummies without), ``y``, and ``[ROWS, H_PAD]`` per head ``rowsum(A_h * grad_a_h)``
    with ``HAS_GA`` (else zeros): every intermediate the backward needs.
    """
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    grow, row_mask, qrows = _rows(sample0, first, B, M, ROWS, M_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_COLS)
    width = H * dh
    n_keys = (SAMPLES - 1) * M_PAD + M                        # the last real key row + 1

    head_of = tl.arange(0, H_PAD)[None, :, None]
    z3 = tl.zeros([ROWS, H_PAD, DH_COLS], tl.float32)
    ga_term = tl.zeros([ROWS, H_PAD], tl.float32)
    for h in range(H):
        q = _head_project(x_ptr, grow, row_mask, wqkv_ptr, bqkv_ptr, h * dh, d, dh, width, D_PAD, D_CHUNK, DH_PAD,
                          HAS_BQKV, QKV_RELU, PRECISION)
        lse = _head_lse(x_ptr, wqkv_ptr, bqkv_ptr, q, qrows, sample0, h, scale, B, M, H, d, dh, width, n_keys,
                        KEYS, M_PAD, D_PAD, D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
        if STORE_LSE:
            tl.store(lse_ptr + grow * H + h, lse, mask=row_mask)
        o = tl.zeros([ROWS, DH_PAD], tl.float32)
        ga_h = tl.zeros([ROWS], tl.float32)
        for key0 in range(0, n_keys, KEYS):
            _, v, a, offs, mask, _, _ = _key_block_attention(
                x_ptr, wqkv_ptr, bqkv_ptr, q, lse, qrows, sample0, key0, h, scale, B, M, H, d, dh, width,
                KEYS, M_PAD, D_PAD, D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            if STORE_A:
                tl.store(a_ptr + offs, a.to(a_ptr.dtype.element_ty), mask=mask)
            if HAS_GA:
                ga_h += tl.sum(a * tl.load(ga_ptr + offs, mask=mask, other=0.0).to(tl.float32), axis=1)
            o += mm(a, v, DTYPE, PRECISION)                   # [rows, DH_PAD], zero beyond dh
        if DH_COLS < DH_PAD:                                  # its first DH_COLS columns
            o = tl.sum(tl.reshape(o, [ROWS, DH_PAD // DH_COLS, DH_COLS]), axis=1)
        z3 += tl.where(head_of == h, o[:, None, :], 0.0)
        if HAS_GA:
            ga_term += tl.where(tl.arange(0, H_PAD)[None, :] == h, ga_h[:, None], 0.0)
    z = tl.reshape(z3, [ROWS, H_PAD * DH_COLS])

    if RESIDUAL == 2:
        bias = _load_vector(bres_ptr, cols, col_mask, 0, HAS_BRES, 0.0)
        r = _relu_if(_project(x_ptr, grow, row_mask, wres_ptr, cols, col_mask, d, width, D_PAD, D_CHUNK, PRECISION)
                     + bias[None, :], RES_RELU)
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
    return r, z, n, rstd, y, ga_term


@triton.jit
def _field_attention_fwd_kernel(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, y_ptr, a_ptr,
        B, M, d, H, dh, scale, eps,
        SAMPLES: tl.constexpr, ROWS: tl.constexpr, M_PAD: tl.constexpr, KEYS: tl.constexpr, D_PAD: tl.constexpr,
        D_CHUNK: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr, DH_COLS: tl.constexpr,
        HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr,
        RES_RELU: tl.constexpr, OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
        HAS_LNB: tl.constexpr, STORE_A: tl.constexpr, PRECISION: tl.constexpr):
    """One program: query tile ``pid`` (``_query_tile``: ``SAMPLES`` samples, or one query block of
    ``ROWS`` rows of a sample), all heads. Runs the whole layer on chip for its rows (``_tile``) and
    stores their ``Y`` rows ``[ROWS, H*dh]`` and, with ``STORE_A``, their rows of ``A [B, H, M, M]``."""
    sample0, first = _query_tile(tl.program_id(0), M, SAMPLES, ROWS, M_PAD)
    r, z, n, rstd, y, _ = _tile(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, a_ptr, x_ptr, y_ptr, sample0, first,
        B, M, d, H, dh, scale, eps, SAMPLES, ROWS, M_PAD, KEYS, D_PAD, D_CHUNK, H_PAD, DH_PAD, DH_COLS, HAS_BQKV,
        QKV_RELU, RESIDUAL, HAS_BRES, RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, STORE_A, False, False,
        PRECISION)
    grow, row_mask, _ = _rows(sample0, first, B, M, ROWS, M_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_COLS)
    tl.store(y_ptr + grow[:, None] * (H * dh) + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _field_attention_bwd_output_kernel(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, gy_ptr, ga_ptr,
        dz_ptr, g_ptr, lse_ptr, delta_ptr, dlnw_ptr, dlnb_ptr,
        B, M, d, H, dh, scale, eps, num_tiles,
        SAMPLES: tl.constexpr, ROWS: tl.constexpr, M_PAD: tl.constexpr, KEYS: tl.constexpr, D_PAD: tl.constexpr,
        D_CHUNK: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr, DH_COLS: tl.constexpr,
        HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr,
        RES_RELU: tl.constexpr, OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
        HAS_LNB: tl.constexpr, HAS_GY: tl.constexpr, HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: query tiles ``pid, pid + programs, ...`` (``_query_tile``). Per tile it
    recomputes the forward (``_tile``, storing each head's ``lse``), back-propagates ``grad_y``
    through the output activation and LayerNorm and stores ``dZ`` rows ``[ROWS, H*dh]`` (storage
    dtype), per head ``delta_h = rowsum(dO_h * O_h) + rowsum(A_h * grad_a_h)`` into
    ``delta [B*M, H]`` (fp32, with ``dO = dZ`` as stored; the second term with ``HAS_GA``), with
    ``RESIDUAL == 2`` also the residual's pre-activation gradient ``dR_p`` into its columns of
    ``G``; adds the LayerNorm affine's gradients into its own partial slots ``[HD_PAD]``."""
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    HD_PAD: tl.constexpr = H_PAD * DH_COLS
    pid = tl.program_id(0)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_COLS)
    width = H * dh
    dv_slot = pid.to(tl.int64) * HD_PAD + tl.arange(0, HD_PAD)
    gamma = _load_vector(lnw_ptr, cols, col_mask, 0, HAS_LNW, 1.0)
    heads = tl.arange(0, H_PAD)
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        sample0, first = _query_tile(tile, M, SAMPLES, ROWS, M_PAD)
        r, z, n, rstd, y, ga_term = _tile(
            x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, x_ptr, ga_ptr, lse_ptr, sample0,
            first, B, M, d, H, dh, scale, eps, SAMPLES, ROWS, M_PAD, KEYS, D_PAD, D_CHUNK, H_PAD, DH_PAD, DH_COLS,
            HAS_BQKV, QKV_RELU, RESIDUAL, HAS_BRES, RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, False, True,
            HAS_GA, PRECISION)
        grow, row_mask, _ = _rows(sample0, first, B, M, ROWS, M_PAD)
        out_mask = row_mask[:, None] & col_mask[None, :]
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
        dz = dz.to(DTYPE)
        tl.store(dz_ptr + grow[:, None] * width + cols[None, :], dz, mask=out_mask)
        delta = tl.sum(tl.reshape(dz.to(tl.float32) * (z - r), [ROWS, H_PAD, DH_COLS]), axis=2) + ga_term
        tl.store(delta_ptr + grow[:, None] * H + heads[None, :], delta,
                 mask=row_mask[:, None] & (heads[None, :] < H))
        if RESIDUAL == 2:
            tl.store(g_ptr + grow[:, None] * (4 * width) + 3 * width + cols[None, :],
                     _grad_relu_if(dz.to(tl.float32), r, RES_RELU).to(DTYPE), mask=out_mask)


@triton.jit
def _head_rows(ptr, grow, row_mask, row_stride, column0, dh, DH_PAD: tl.constexpr):
    """Columns ``column0 .. column0 + dh - 1`` of rows ``grow`` of a ``[B*M, row_stride]``
    tensor, as fp32 ``[len(grow), DH_PAD]`` (zeros where padded)."""
    offs_j = tl.arange(0, DH_PAD)
    return tl.load(ptr + grow[:, None] * row_stride + column0 + offs_j[None, :],
                   mask=row_mask[:, None] & (offs_j[None, :] < dh), other=0.0).to(tl.float32)


@triton.jit
def _query_block(x_ptr, wqkv_ptr, bqkv_ptr, dz_ptr, lse_ptr, delta_ptr, sample0, first, h, B, M, H, d, dh,
                 width, ROWS: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, D_CHUNK: tl.constexpr,
                 DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Head ``h`` on the ``ROWS`` query rows from tile row ``first``: their global rows, mask and
    tile rows, ``Q_h`` (recomputed), ``dO_h`` (``dZ``'s head columns), ``lse_h`` and ``delta_h``."""
    grow, row_mask, qrows = _rows(sample0, first, B, M, ROWS, M_PAD)
    q = _head_project(x_ptr, grow, row_mask, wqkv_ptr, bqkv_ptr, h * dh, d, dh, width, D_PAD, D_CHUNK, DH_PAD,
                      HAS_BQKV, QKV_RELU, PRECISION)
    do = _head_rows(dz_ptr, grow, row_mask, width, h * dh, dh, DH_PAD)
    lse = tl.load(lse_ptr + grow * H + h, mask=row_mask, other=0.0)
    delta = tl.load(delta_ptr + grow * H + h, mask=row_mask, other=0.0)
    return grow, row_mask, qrows, q, do, lse, delta


@triton.jit
def _score_grad(a, do, v, delta, ga_ptr, offs, mask, scale, DTYPE: tl.constexpr, HAS_GA: tl.constexpr,
                PRECISION: tl.constexpr):
    """``dS = scale * A * (dA - delta)`` of a key block, ``dA = dO V^T`` (+ its entries of ``grad_a``)."""
    da = mm(do, tl.trans(v), DTYPE, PRECISION)
    if HAS_GA:
        da += tl.load(ga_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return scale * a * (da - delta[:, None])


@triton.jit
def _field_attention_bwd_attention_kernel(
        x_ptr, wqkv_ptr, bqkv_ptr, dz_ptr, lse_ptr, delta_ptr, ga_ptr, g_ptr,
        B, M, d, H, dh, scale,
        SAMPLES: tl.constexpr, ROWS: tl.constexpr, M_PAD: tl.constexpr, KEYS: tl.constexpr, D_PAD: tl.constexpr,
        D_CHUNK: tl.constexpr, DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
        RESIDUAL: tl.constexpr, HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: samples ``[pid*SAMPLES, (pid+1)*SAMPLES)``, one head at a time, keys in
    blocks of ``KEYS`` rows. Given ``dZ``, ``lse`` and ``delta`` (``_field_attention_bwd_output_kernel``),
    per head, key block ``j`` and query block ``i``:

        A_hij = exp(scale Q_hi K_hj^T - lse_hi);  dV_hj += A_hij^T dO_hi;  dA_hij = dO_hi V_hj^T (+ grad_a)
        dS_hij = scale * A_hij * (dA_hij - delta_hi);  dK_hj += dS_hij^T Q_hi;  dQ_hi += dS_hij K_hj

    and stores ``dP_v, dP_k`` per key block and ``dP_q`` per query block into their columns of
    ``G`` (``dP = dQ/dK/dV * [P > 0 if qkv_relu]``). With ``ROWS < M_PAD`` (one sample in query
    blocks: fewer live rows) a pass over the key blocks, each over the query blocks, gives ``dK,
    dV``, then a pass over the query blocks, each over the key blocks, ``dQ``; with ``ROWS =
    SAMPLES * M_PAD`` the queries are one block and the second pass gives all three. ``dx``
    follows from ``G`` (``bwd_input``)."""
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    sample0 = tl.program_id(0).to(tl.int64) * SAMPLES
    width = H * dh
    g_stride = (4 if RESIDUAL == 2 else 3) * width
    n_keys = (SAMPLES - 1) * M_PAD + M
    ONE_BLOCK: tl.constexpr = ROWS == SAMPLES * M_PAD       # every query of the tile in one block
    for h in range(H):
        if not ONE_BLOCK:                                     # dK, dV: key blocks x query blocks
            for key0 in range(0, n_keys, KEYS):
                kgrow, kmask, krows = _rows(sample0, key0, B, M, KEYS, M_PAD)
                k = _head_project(x_ptr, kgrow, kmask, wqkv_ptr, bqkv_ptr, width + h * dh, d, dh, width, D_PAD,
                                  D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
                v = _head_project(x_ptr, kgrow, kmask, wqkv_ptr, bqkv_ptr, 2 * width + h * dh, d, dh, width, D_PAD,
                                  D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
                dk = tl.zeros([KEYS, DH_PAD], tl.float32)
                dv = tl.zeros([KEYS, DH_PAD], tl.float32)
                for first in range(0, M, ROWS):
                    _, _, qrows, q, do, lse, delta = _query_block(
                        x_ptr, wqkv_ptr, bqkv_ptr, dz_ptr, lse_ptr, delta_ptr, sample0, first, h, B, M, H, d, dh,
                        width, ROWS, M_PAD, D_PAD, D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
                    offs, mask = _attention_block(sample0, h, B, M, H, qrows, krows, M_PAD)
                    a = _probabilities(q, k, lse, scale, mask, DTYPE, PRECISION)
                    dv += mm(tl.trans(a), do, DTYPE, PRECISION)
                    ds = _score_grad(a, do, v, delta, ga_ptr, offs, mask, scale, DTYPE, HAS_GA, PRECISION)
                    dk += mm(tl.trans(ds), q, DTYPE, PRECISION)
                _store_head_grad(g_ptr, dv, v, kgrow, kmask, 2 * width + h * dh, dh, g_stride, DH_PAD, QKV_RELU)
                _store_head_grad(g_ptr, dk, k, kgrow, kmask, width + h * dh, dh, g_stride, DH_PAD, QKV_RELU)
        for first in range(0, M, ROWS):                       # dQ: query blocks x key blocks (ONE_BLOCK: once)
            grow, row_mask, qrows, q, do, lse, delta = _query_block(
                x_ptr, wqkv_ptr, bqkv_ptr, dz_ptr, lse_ptr, delta_ptr, sample0, first, h, B, M, H, d, dh, width,
                ROWS, M_PAD, D_PAD, D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
            dq = tl.zeros([ROWS, DH_PAD], tl.float32)
            for key0 in range(0, n_keys, KEYS):
                k, v, a, offs, mask, kgrow, kmask = _key_block_attention(
                    x_ptr, wqkv_ptr, bqkv_ptr, q, lse, qrows, sample0, key0, h, scale, B, M, H, d, dh, width,
                    KEYS, M_PAD, D_PAD, D_CHUNK, DH_PAD, HAS_BQKV, QKV_RELU, PRECISION)
                ds = _score_grad(a, do, v, delta, ga_ptr, offs, mask, scale, DTYPE, HAS_GA, PRECISION)
                if ONE_BLOCK:                                 # the block holds all the keys' queries
                    _store_head_grad(g_ptr, mm(tl.trans(a), do, DTYPE, PRECISION), v, kgrow, kmask,
                                     2 * width + h * dh, dh, g_stride, DH_PAD, QKV_RELU)
                    _store_head_grad(g_ptr, mm(tl.trans(ds), q, DTYPE, PRECISION), k, kgrow, kmask, width + h * dh,
                                     dh, g_stride, DH_PAD, QKV_RELU)
                dq += mm(ds, k, DTYPE, PRECISION)
            _store_head_grad(g_ptr, dq, q, grow, row_mask, h * dh, dh, g_stride, DH_PAD, QKV_RELU)


@triton.jit
def _field_attention_bwd_input_kernel(
        g_ptr, w_ptr, dz_ptr, dx_ptr, rows, d, n,
        D_PAD: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, IDENTITY: tl.constexpr,
        PRECISION: tl.constexpr):
    """One program: rows ``[pid*BLOCK_ROWS, (pid+1)*BLOCK_ROWS)`` of ``dX = G W^T`` (``G [rows, n]``,
    ``W = [W_qkv | W_res] [d, n]``), ``n`` in steps of ``BLOCK_N``, plus ``dZ`` with the identity
    residual (``d == H*dh``); fp32 accumulation, stored in ``dx``'s dtype."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = offs_r < rows
    offs_d = tl.arange(0, D_PAD)
    acc = tl.zeros([BLOCK_ROWS, D_PAD], tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        g = tl.load(g_ptr + offs_r[:, None] * n + offs_n[None, :], mask=row_mask[:, None] & (offs_n[None, :] < n),
                    other=0.0)
        wt = tl.load(w_ptr + offs_d[None, :] * n + offs_n[:, None], mask=(offs_d[None, :] < d) & (offs_n[:, None] < n),
                     other=0.0)
        acc += mm(g, wt, g.dtype, PRECISION)
    out_mask = row_mask[:, None] & (offs_d[None, :] < d)
    if IDENTITY:
        acc += tl.load(dz_ptr + offs_r[:, None] * d + offs_d[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs_r[:, None] * d + offs_d[None, :], acc.to(dx_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _field_attention_bwd_parameters_kernel(
        x_ptr, g_ptr, dw_ptr, db_ptr, rows, d, n,
        D_PAD: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Program ``(chunk, j)``: chunk ``chunk`` of ``X [rows, d]`` and ``G [rows, n]`` (the rows
    split into ``chunks = num_programs(0)`` runs of whole ``BLOCK_ROWS`` blocks), columns
    ``j*BLOCK_N ..`` of ``G``. Accumulates ``X^T G`` ``[D_PAD, BLOCK_N]`` and ``colsum(G)``
    ``[BLOCK_N]`` in fp32 registers and writes them into slot ``chunk`` of
    ``dW [chunks, D_PAD, N_PAD]`` / ``db [chunks, N_PAD]`` (``N_PAD`` = the column blocks' width)."""
    chunk, block = tl.program_id(0), tl.program_id(1)
    n_pad = tl.num_programs(1) * BLOCK_N
    offs_d = tl.arange(0, D_PAD)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    per_chunk = tl.cdiv(tl.cdiv(rows, tl.num_programs(0)), BLOCK_ROWS) * BLOCK_ROWS
    first = chunk.to(tl.int64) * per_chunk
    last = tl.minimum(first + per_chunk, rows)
    acc = tl.zeros([D_PAD, BLOCK_N], tl.float32)
    colsum = tl.zeros([BLOCK_N], tl.float32)
    for row0 in range(first, last, BLOCK_ROWS):
        offs_r = row0 + tl.arange(0, BLOCK_ROWS)
        row_mask = offs_r < last
        xt = tl.load(x_ptr + offs_r[None, :] * d + offs_d[:, None],
                     mask=row_mask[None, :] & (offs_d[:, None] < d), other=0.0)
        g = tl.load(g_ptr + offs_r[:, None] * n + offs_n[None, :],
                    mask=row_mask[:, None] & (offs_n[None, :] < n), other=0.0)
        acc += mm(xt, g, g.dtype, PRECISION)
        colsum += tl.sum(g.to(tl.float32), axis=0)
    tl.store(dw_ptr + (chunk * D_PAD + offs_d[:, None]) * n_pad + offs_n[None, :], acc)
    tl.store(db_ptr + chunk * n_pad + offs_n, colsum)


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

_RESIDUAL_CODES = {"none": 0, "identity": 1, "project": 2}
_LAYER_NORM_CODES = {"none": 0, "after": 1, "before": 2}
PARAMETERS = ("w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")
KERNELS = ("fwd", "bwd_output", "bwd_attention", "bwd_input", "bwd_parameters")
_BACKWARD_PROGRAMS_PER_SM = 4   # persistent grid of bwd_output: each program loops over tiles
_PARAMETER_PROGRAMS_PER_SM = 4  # (row chunks x column blocks) of bwd_parameters
_PARAMETER_BLOCK_ROWS = 64
_INPUT_BLOCK_ROWS = 64          # bwd_input: rows per program and G columns per step
_INPUT_BLOCK_N = 32
_KEY_BLOCK = 16                 # key rows per block of the attention loops on a GPU
_PROJECTION_CHUNK = 16          # fp32 x columns per step of the projections on a GPU


def padded_sizes(fields: int, dim: int, num_heads: int, head_dim: int) -> dict[str, int]:
    """Power-of-two tile sizes ``M_PAD``, ``D_PAD``, ``H_PAD``, ``DH_PAD`` (``tl.dot`` needs >= 16)
    and ``DH_COLS``, the columns of one head in the rows layout: the next power of two of ``dh``,
    no floor of 16 (half the width of every full-width tile at ``dh = 8``) as long as the heads
    together are 16 columns wide."""
    h_pad = triton.next_power_of_2(num_heads)
    return {"M_PAD": next_pow2(fields), "D_PAD": next_pow2(dim), "H_PAD": h_pad, "DH_PAD": next_pow2(head_dim),
            "DH_COLS": max(triton.next_power_of_2(head_dim), 16 // h_pad)}


def projection_width(head_dim: int, options: FieldAttentionOptions) -> int:
    """Columns of ``G``, the pre-activation gradients of ``[X W_qkv | X W_res]``: ``3*H*dh``, plus
    ``H*dh`` with ``residual="project"``."""
    return (4 if options.residual == "project" else 3) * options.num_heads * head_dim


def _tile_shape(batch: int, pads: dict[str, int], dtype: torch.dtype, target: Target,
                kernel: str) -> tuple[int, int, int]:
    """``(SAMPLES, ROWS, num_warps)``: the samples whose keys a program covers and its query rows
    (``SAMPLES * M_PAD``, or with fewer rows than ``M_PAD`` one query block of a sample; see
    ``_query_tile``), sizes from the static GPU audit (the fewest spills). GPU, half precision: the
    forward 64 query rows, 8 warps from 64 x 64 values of the widest tile on; ``bwd_output`` 32
    rows, 8 warps from 64 x 64 values on; ``bwd_attention`` 64 rows (one warpgroup: a 64-row wgmma
    tile), 4 warps. fp32: 16 query rows and 4 warps everywhere (the 3xTF32 split operands of more
    rows spill at M = 39; more warps do not help: the dots' weight operands are per warp).
    Interpreter: a handful of large programs, and with one sample per program queries in blocks of
    half a sample (tests run the query-block paths)."""
    m_pad, width = pads["M_PAD"], max(pads["D_PAD"], pads["H_PAD"] * pads["DH_COLS"])
    if target.interpreter:
        samples = interpreter_samples(batch)
        split = samples == 1 and m_pad >= 32
        return samples, m_pad // 2 if split else samples * m_pad, 4
    half = dtype != torch.float32
    rows = {"fwd": 64, "bwd_output": 32, "bwd_attention": 64}[kernel] if half else 16
    samples = max(1, rows // m_pad)
    if rows >= m_pad:
        rows = samples * m_pad
    wide = rows * width >= 64 * 64
    if kernel == "fwd":
        return samples, rows, 8 if half and wide else 4
    if kernel == "bwd_output":
        return samples, rows, 8 if wide else 4
    return samples, rows, 4


def _query_tiles(batch: int, fields: int, samples: int, rows: int, m_pad: int) -> int:
    """How many query tiles ``_query_tile`` numbers: a tile per ``samples`` samples, or per query
    block of ``rows`` rows of each sample."""
    return triton.cdiv(batch, samples) * (triton.cdiv(fields, rows) if rows < m_pad else 1)


def _key_block(rows: int, target: Target) -> int:
    """``KEYS``, the key rows of one block of the attention loops (a power of two >= 16): 16 on a
    GPU (fewer spills than 32 or the whole tile in the static audit); under the interpreter half
    the tile, so that tests run the loop over blocks, blocks that span samples and partly padded
    ones."""
    return max(16, rows // 2) if target.interpreter else min(rows, _KEY_BLOCK)


def _projection_chunk(d_pad: int, dtype: torch.dtype, target: Target) -> int:
    """``D_CHUNK``, the columns of ``x`` per step of the projections' reduction over ``d``: 16 for
    fp32 on a GPU (no full-width fp32 ``x`` tile and 3xTF32 split held in registers: static audit),
    the whole ``D_PAD`` in half precision; under the interpreter fp32 steps are half of ``D_PAD`` from
    32 on (the tests run the loop, with a partly padded last step at ``d = 40``)."""
    if dtype != torch.float32:
        return d_pad
    return max(16, d_pad // 2) if target.interpreter else min(d_pad, _PROJECTION_CHUNK)


def _parameters_config(rows: int, dim: int, columns: int, dtype: torch.dtype, target: Target) -> LaunchConfig:
    """``X^T G`` and ``colsum(G)`` for ``X [rows, dim]``, ``G [rows, columns]``: a grid of
    (row chunks, ``BLOCK_N`` column blocks), about ``_PARAMETER_PROGRAMS_PER_SM`` programs per
    SM (interpreter: two chunks), each accumulating ``[D_PAD, BLOCK_N]`` in registers over
    ``BLOCK_ROWS``-row steps of its chunk (two pipeline stages: loads of the next step overlap)."""
    block_n = min(64, next_pow2(columns))
    blocks = triton.cdiv(columns, block_n)
    steps = triton.cdiv(max(rows, 1), _PARAMETER_BLOCK_ROWS)
    wanted = 2 if target.interpreter else triton.cdiv(_PARAMETER_PROGRAMS_PER_SM * target.sm_count, blocks)
    meta = dict(D_PAD=next_pow2(dim), BLOCK_ROWS=_PARAMETER_BLOCK_ROWS, BLOCK_N=block_n,
                PRECISION=dot_precision(dtype))
    return LaunchConfig(_field_attention_bwd_parameters_kernel, (max(1, min(wanted, steps)), blocks), meta, 4,
                        num_stages=2, maxnreg=register_cap(4))


def _input_config(rows: int, dim: int, columns: int, identity: bool, dtype: torch.dtype,
                  target: Target) -> LaunchConfig:
    """``dX = G W^T`` (+ ``dZ``) for ``G [rows, columns]``, ``W [dim, columns]``: one program per
    ``BLOCK_ROWS`` rows (interpreter: a handful), ``columns`` in ``BLOCK_N`` steps."""
    block_rows = max(16, triton.next_power_of_2(triton.cdiv(rows, INTERPRETER_PROGRAMS))) if target.interpreter \
        else _INPUT_BLOCK_ROWS
    meta = dict(D_PAD=next_pow2(dim), BLOCK_ROWS=block_rows, BLOCK_N=min(_INPUT_BLOCK_N, next_pow2(columns)),
                IDENTITY=identity, PRECISION=dot_precision(dtype))
    return LaunchConfig(_field_attention_bwd_input_kernel, (max(1, triton.cdiv(rows, block_rows)),), meta, 4,
                        num_stages=2, maxnreg=register_cap(4))


def launch_config(batch: int, fields: int, dim: int, head_dim: int, dtype: torch.dtype,
                  options: FieldAttentionOptions, target: Target, *, kernel: str = "fwd",
                  present: Collection[str] = ("w_qkv",), return_attention: bool = False,
                  grad_y: bool = True, grad_a: bool = False) -> LaunchConfig:
    """The launch of ``kernel`` (one of ``KERNELS``) for ``x [batch, fields, dim]`` in ``dtype``
    with the parameters named in ``present`` (see ``PARAMETERS``); ``grad_y``/``grad_a``: which
    upstream gradients the backward gets.

    ``fwd`` and ``bwd_attention``: one program per ``SAMPLES`` samples (grid axis 0 only), keys in
    blocks of ``KEYS`` rows (``_key_block``).
    ``bwd_output``: a few programs per SM (``persistent_programs``), each looping over tiles of
    ``SAMPLES`` samples (its LayerNorm gradients go to per-program partial slots).
    ``bwd_input``: ``dx`` from ``G`` (``_input_config``); ``bwd_parameters``: the weight and bias
    gradients from ``x`` and ``G`` (``_parameters_config``), both with ``rows = batch * fields``,
    ``columns = projection_width``.
    The attention backward kernels run without pipelining (their loops re-read weights); every
    launch has ``register_cap``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "bwd_parameters":
        return _parameters_config(batch * fields, dim, projection_width(head_dim, options), dtype, target)
    if kernel == "bwd_input":
        return _input_config(batch * fields, dim, projection_width(head_dim, options),
                             options.residual == "identity", dtype, target)
    pads = padded_sizes(fields, dim, options.num_heads, head_dim)
    samples, rows, num_warps = _tile_shape(batch, pads, dtype, target, kernel)
    num_tiles = _query_tiles(batch, fields, samples, rows, pads["M_PAD"])
    meta = dict(SAMPLES=samples, ROWS=rows, M_PAD=pads["M_PAD"], KEYS=_key_block(samples * pads["M_PAD"], target),
                **{k: v for k, v in pads.items() if k != "M_PAD"},
                D_CHUNK=_projection_chunk(pads["D_PAD"], dtype, target), HAS_BQKV="b_qkv" in present,
                QKV_RELU=options.qkv_relu, RESIDUAL=_RESIDUAL_CODES[options.residual],
                PRECISION=dot_precision(dtype))
    options_ = dict(num_warps=num_warps, maxnreg=register_cap(num_warps))
    if kernel == "bwd_attention":
        del meta["H_PAD"], meta["DH_COLS"]
        return LaunchConfig(_field_attention_bwd_attention_kernel, (triton.cdiv(batch, samples),),
                            {**meta, "HAS_GA": grad_a},
                            num_stages=1, **options_)
    meta.update(HAS_BRES="b_res" in present, RES_RELU=options.res_relu, OUT_RELU=options.out_relu,
                LAYER_NORM=_LAYER_NORM_CODES[options.layer_norm], HAS_LNW="ln_weight" in present,
                HAS_LNB="ln_bias" in present)
    if kernel == "bwd_output":
        return LaunchConfig(_field_attention_bwd_output_kernel,
                            (persistent_programs(num_tiles, target, _BACKWARD_PROGRAMS_PER_SM),),
                            {**meta, "HAS_GY": grad_y, "HAS_GA": grad_a}, num_stages=1, **options_)
    return LaunchConfig(_field_attention_fwd_kernel, (num_tiles,), {**meta, "STORE_A": return_attention},
                        **options_)


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
    ``grad_y [B, M, H*dh]`` and ``grad_a [B, H, M, M]`` (either may be ``None``: zero).

    Four launches: ``bwd_output`` (``dZ [B, M, H*dh]``, per head ``lse`` and ``delta`` ``[B*M, H]``
    fp32, the LayerNorm affine's gradients and ``G``'s residual columns), ``bwd_attention``
    (``G``'s Q/K/V columns), ``bwd_input`` (``dx = G [W_qkv | W_res]^T`` (+ ``dZ``)), then
    ``bwd_parameters`` (``[dW_qkv | dW_res] = X^T G``, ``[db_qkv | db_res] = colsum(G)``), with
    ``G [B*M, projection_width]`` the pre-activation gradients; ``dZ`` and ``G`` in ``x``'s dtype."""
    x, *params = contiguous(x, *params)
    grad_y, grad_a = contiguous(grad_y, grad_a)
    (B, M, d), width = x.shape, params[0].shape[1] // 3
    dh = width // options.num_heads
    if B == 0 or (grad_y is None and grad_a is None):
        return torch.zeros_like(x), tuple(None if p is None else torch.zeros_like(p) for p in params)
    target, present = target_of(x.device), _present(params)
    dz = torch.empty(B, M, width, dtype=x.dtype, device=x.device)
    g = torch.empty(B * M, projection_width(dh, options), dtype=x.dtype, device=x.device)
    lse, delta = torch.empty(2, B * M, options.num_heads, dtype=torch.float32, device=x.device)
    cfg = launch_config(B, M, d, dh, x.dtype, options, target, kernel="bwd_output", present=present,
                        grad_y=grad_y is not None, grad_a=grad_a is not None)
    h_pad, dh_cols, programs = cfg.meta["H_PAD"], cfg.meta["DH_COLS"], cfg.grid[0]
    ln_slots = [None if p is None else partial_slots(programs, h_pad * dh_cols, device=x.device)
                for p in params[4:]]
    cfg.launch(x, *or_dummy(*params, grad_y, grad_a, dummy=x), dz, g, lse, delta, *or_dummy(*ln_slots, dummy=x),
               B, M, d, options.num_heads, dh, options.score_scale(dh), options.ln_eps,
               _query_tiles(B, M, cfg.meta["SAMPLES"], cfg.meta["ROWS"], cfg.meta["M_PAD"]))

    cfg = launch_config(B, M, d, dh, x.dtype, options, target, kernel="bwd_attention", present=present,
                        grad_a=grad_a is not None)
    cfg.launch(x, *or_dummy(*params[:2], dummy=x), dz, lse, delta, *or_dummy(grad_a, dummy=x), g,
               B, M, d, options.num_heads, dh, options.score_scale(dh))

    dx = torch.empty_like(x)
    w = params[0] if options.residual != "project" else torch.cat((params[0], params[2]), 1)
    cfg = launch_config(B, M, d, dh, x.dtype, options, target, kernel="bwd_input", present=present)
    cfg.launch(g, w, dz, dx, B * M, d, g.shape[1])

    cfg = launch_config(B, M, d, dh, x.dtype, options, target, kernel="bwd_parameters", present=present)
    chunks, blocks = cfg.grid
    n_pad = blocks * cfg.meta["BLOCK_N"]
    dw = partial_slots(chunks, cfg.meta["D_PAD"], n_pad, device=x.device)
    db = partial_slots(chunks, n_pad, device=x.device)
    cfg.launch(x, g, dw, db, B * M, d, g.shape[1])
    dw, db = reduce_partials(dw)[:d], reduce_partials(db)
    ln = [None if slot is None else reduce_partials(slot).unflatten(-1, (h_pad, dh_cols))
          [:options.num_heads, :dh].flatten() for slot in ln_slots]
    grads = (dw[:, :3 * width], db[:3 * width], dw[:, 3 * width:4 * width], db[3 * width:4 * width], *ln)
    return dx, tuple(None if p is None else torch.empty_like(p).copy_(grad) for p, grad in zip(params, grads))
