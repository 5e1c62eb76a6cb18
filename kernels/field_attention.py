"""Triton kernels for field attention: AutoInt's interacting layer, fused.

Per sample, ``X [M, d]`` (``H`` heads of width ``dh``, ``HD = H*dh``):

    P_q, P_k, P_v = X W_q + b_q, X W_k + b_k, X W_v + b_v    [M, HD]  (W_qkv = [W_q | W_k | W_v])
    Q, K, V = act_qkv(P_q), act_qkv(P_k), act_qkv(P_v)
    A_h = softmax_keys(scale Q_h K_h^T)                        [M, M] per head
    O = concat_h(A_h V_h)                                      [M, HD]
    R = act_res(X W_res + b_res) | X | 0                       (residual "project" | "identity" | "none")
    Z = O + R;  Y = act_out(Z) | LN(act_out(Z)) | act_out(LN(Z))   (layer_norm "none" | "after" | "before")

Layout: a program owns ``S`` (``SAMPLES``) consecutive samples (grid axis 0 = ``ceil(B / S)``, so
``B * H`` is not limited by the 65,535 cap of grid axes 1/2). Fields are padded to
``M_PAD = max(16, next_pow2(M))``, ``d`` and ``dh`` to powers of two >= 16, heads to ``H_PAD``; every
load and store is masked. Two register layouts:

* rows  ``[S*M_PAD, ...]``: one row per (sample, field), columns ``d`` (``D_PAD``) or the heads
  side by side (``HD_PAD = H_PAD * DH_PAD``, column ``h*DH_PAD + j`` holds global column ``h*dh + j``).
  Projections are single ``tl.dot`` s over all rows of the tile; LayerNorm reduces over columns.
* heads ``[S*H_PAD, M_PAD, DH_PAD]``: one batch entry per (sample, head); ``QK^T`` and ``AV`` are
  batched ``tl.dot`` s.

Dot operands are in the input dtype (fp16/bf16 on tensor cores; fp32 as ``ieee`` or ``tf32`` following
``torch.backends.cuda.matmul.allow_tf32``); accumulation, softmax and LayerNorm are fp32.
Padded keys get score ``-inf``; padded rows/columns are never stored and carry zero gradient.

Backward recomputes the whole forward of its tile from ``x`` and the weights (nothing of size
``B x H x M x M`` is saved), then, with ``dZ`` from the output activation / LayerNorm backward:

    dO = dZ;  dV_h = A_h^T dO_h;  dA_h = dO_h V_h^T (+ upstream grad of A)
    dS_h = scale * A_h * (dA_h - rowsum(A_h * dA_h));  dQ_h = dS_h K_h;  dK_h = dS_h^T Q_h
    dP_* = dQ/dK/dV * [P_* > 0 if qkv_relu];   dW_qkv += X^T dP;   db_qkv += colsum(dP)
    dX = dP_q W_q^T + dP_k W_k^T + dP_v W_v^T + (dR_p W_res^T | dZ | 0)

Its grid is capped (a few programs per SM); each program loops over tiles and adds its weight
gradients into its own fp32 slot of ``[programs, ...]`` partial buffers (read-modify-write by that
program only), summed by torch afterwards: deterministic, no atomics.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastint._backend import triton_interpreting

RESIDUALS = {"none": 0, "identity": 1, "project": 2}
LAYER_NORMS = {"none": 0, "after": 1, "before": 2}

_INTERPRETER_PROGRAMS = 8    # target grid size under the (slow, per-program) interpreter
_INTERPRETER_MAX_SAMPLES = 64
_PROGRAMS_PER_SM = 4         # backward: persistent-ish grid


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: testable without launching anything)
# ----------------------------------------------------------------------------------------------

def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(n))


def padded_sizes(fields: int, dim: int, num_heads: int, head_dim: int) -> dict[str, int]:
    """Power-of-two tile sizes: ``M_PAD``, ``D_PAD``, ``H_PAD``, ``DH_PAD`` (``tl.dot`` needs >= 16)."""
    return {"M_PAD": _pow2(fields), "D_PAD": _pow2(dim), "H_PAD": triton.next_power_of_2(num_heads),
            "DH_PAD": _pow2(head_dim)}


def launch_config(batch: int, pads: dict[str, int], *, backward: bool = False,
                  interpreting: bool | None = None) -> tuple[int, int]:
    """``(SAMPLES, num_warps)``.

    GPU: about 128 rows (``SAMPLES * M_PAD``) per program in the forward, 64 in the backward (which
    holds ~3x more live tiles), at least one sample; warps so that the largest fp32 tile (rows x
    width, or the scores ``[S*H_PAD, M_PAD, M_PAD]``) is about 64 values per thread, 4..16 warps.
    Interpreter: a handful of large programs (the interpreter pays per program).
    """
    if triton_interpreting() if interpreting is None else interpreting:
        samples = triton.next_power_of_2(triton.cdiv(max(batch, 1), _INTERPRETER_PROGRAMS))
        return min(samples, _INTERPRETER_MAX_SAMPLES), 4
    m_pad, width = pads["M_PAD"], max(pads["D_PAD"], pads["H_PAD"] * pads["DH_PAD"])
    samples = max(1, (64 if backward else 128) // m_pad)
    largest = samples * max(m_pad * width, pads["H_PAD"] * m_pad * m_pad)
    return samples, min(16, max(4, triton.next_power_of_2(largest // (64 * 32))))


def grid(batch: int, samples: int) -> tuple[int]:
    """Forward grid: one program per ``samples`` samples, on axis 0 only (no 65,535 cap)."""
    return (triton.cdiv(batch, samples),)


def _backward_programs(num_tiles: int, device: torch.device) -> int:
    """Backward grid: a few programs per SM, each looping over tiles. Under the interpreter half
    the tiles' programs, so that tests exercise the loop and the partial accumulation."""
    if device.type != "cuda":
        return triton.cdiv(num_tiles, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(num_tiles, _PROGRAMS_PER_SM * sms)


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

@triton.jit
def _mm(a, b, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` (2-D, or batched 3-D) with operands cast to ``DTYPE``, fp32 accumulation."""
    if DTYPE == tl.float32:
        return tl.dot(a.to(DTYPE), b.to(DTYPE), input_precision=PRECISION)
    return tl.dot(a.to(DTYPE), b.to(DTYPE))


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
def _to_heads(t, S: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr):
    """rows ``[S*M_PAD, H_PAD*DH_PAD]`` -> heads ``[S*H_PAD, M_PAD, DH_PAD]``."""
    t = tl.permute(tl.reshape(t, [S, M_PAD, H_PAD, DH_PAD]), (0, 2, 1, 3))
    return tl.reshape(t, [S * H_PAD, M_PAD, DH_PAD])


@triton.jit
def _to_rows(t, S: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr):
    """heads ``[S*H_PAD, M_PAD, DH_PAD]`` -> rows ``[S*M_PAD, H_PAD*DH_PAD]``."""
    t = tl.permute(tl.reshape(t, [S, H_PAD, M_PAD, DH_PAD]), (0, 2, 1, 3))
    return tl.reshape(t, [S * M_PAD, H_PAD * DH_PAD])


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
def _accumulate(ptr, value):
    """``*ptr += value`` on this program's private partial-gradient slot."""
    tl.store(ptr, tl.load(ptr) + value)


@triton.jit
def _project(x2, w_ptr, b_ptr, part, offs_d, d, cols, col_mask, width, S: tl.constexpr,
             M_PAD: tl.constexpr, H_PAD: tl.constexpr, DH_PAD: tl.constexpr, HAS_B: tl.constexpr,
             RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Part ``part`` (0 Q, 1 K, 2 V) of ``act(x W_qkv + b_qkv)`` in heads layout (fp32)."""
    w = _load_weight(w_ptr, offs_d, d, cols, col_mask, 3 * width, part * width)
    bias = _load_vector(b_ptr, cols, col_mask, part * width, HAS_B, 0.0)
    p = _relu_if(_mm(x2, w, x2.dtype, PRECISION) + bias[None, :], RELU)
    return _to_heads(p, S, M_PAD, H_PAD, DH_PAD)


@triton.jit
def _project_backward(grad, out, x2t, w_ptr, dw_ptr, db_ptr, part, pid, offs_d, d, cols, col_mask,
                      width, S: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
                      H_PAD: tl.constexpr, DH_PAD: tl.constexpr, HAS_B: tl.constexpr,
                      RELU: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of ``_project`` given ``grad`` (heads layout) w.r.t. its output ``out``: adds
    ``x^T dP`` and ``colsum(dP)`` to this program's partial slots, returns ``dP W^T`` (rows)."""
    HD_PAD: tl.constexpr = H_PAD * DH_PAD
    dp = _to_rows(_grad_relu_if(grad, out, RELU), S, M_PAD, H_PAD, DH_PAD)
    w = _load_weight(w_ptr, offs_d, d, cols, col_mask, 3 * width, part * width)
    slot = pid.to(tl.int64) * 3 + part                        # partials [programs, 3, ...]
    offs_c = tl.arange(0, HD_PAD)
    _accumulate(dw_ptr + slot * (D_PAD * HD_PAD) + offs_d[:, None] * HD_PAD + offs_c[None, :],
                _mm(x2t, dp, x2t.dtype, PRECISION))
    if HAS_B:
        _accumulate(db_ptr + slot * HD_PAD + offs_c, tl.sum(dp, axis=0))
    return _mm(dp, tl.trans(w), x2t.dtype, PRECISION)


@triton.jit
def _row_offsets(sample0, B, M, S: tl.constexpr, M_PAD: tl.constexpr):
    """Global row ``b*M + m`` of each tile row and its mask."""
    rows = tl.arange(0, S * M_PAD)
    samples, fields = sample0 + (rows // M_PAD).to(tl.int64), rows % M_PAD
    return samples * M + fields, (samples < B) & (fields < M)


@triton.jit
def _tile(x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0,
          B, M, d, H, dh, scale, eps,
          S: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
          DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
          RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr,
          OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
          HAS_LNB: tl.constexpr, PRECISION: tl.constexpr):
    """Forward of samples ``sample0 .. sample0+S-1``; returns every intermediate the backward needs.

    Returns ``x2`` rows ``[S*M_PAD, D_PAD]`` (storage dtype), ``q, k, v, a`` in heads layout (fp32),
    ``r`` (residual), ``z`` (``O + R``), ``n, rstd`` (LayerNorm; dummies without) and ``y``, rows
    ``[S*M_PAD, HD_PAD]`` fp32.
    """
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    grow, row_mask = _row_offsets(sample0, B, M, S, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    width = H * dh

    x2 = tl.load(x_ptr + grow[:, None] * d + offs_d[None, :],
                 mask=row_mask[:, None] & (offs_d[None, :] < d), other=0.0)
    q = _project(x2, wqkv_ptr, bqkv_ptr, 0, offs_d, d, cols, col_mask, width, S, M_PAD, H_PAD, DH_PAD,
                 HAS_BQKV, QKV_RELU, PRECISION)
    k = _project(x2, wqkv_ptr, bqkv_ptr, 1, offs_d, d, cols, col_mask, width, S, M_PAD, H_PAD, DH_PAD,
                 HAS_BQKV, QKV_RELU, PRECISION)
    v = _project(x2, wqkv_ptr, bqkv_ptr, 2, offs_d, d, cols, col_mask, width, S, M_PAD, H_PAD, DH_PAD,
                 HAS_BQKV, QKV_RELU, PRECISION)

    scores = scale * _mm(q, tl.permute(k, (0, 2, 1)), DTYPE, PRECISION)   # [S*H_PAD, M_PAD, M_PAD]
    keys = tl.arange(0, M_PAD)
    scores = tl.where((keys < M)[None, None, :], scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=2)[:, :, None])
    a = p / tl.sum(p, axis=2)[:, :, None]
    z = _to_rows(_mm(a, v, DTYPE, PRECISION), S, M_PAD, H_PAD, DH_PAD)

    if RESIDUAL == 2:
        w = _load_weight(wres_ptr, offs_d, d, cols, col_mask, width, 0)
        bias = _load_vector(bres_ptr, cols, col_mask, 0, HAS_BRES, 0.0)
        r = _relu_if(_mm(x2, w, DTYPE, PRECISION) + bias[None, :], RES_RELU)
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
    return x2, q, k, v, a, r, z, n, rstd, y


@triton.jit
def _attention_offsets(sample0, B, M, H, S: tl.constexpr, M_PAD: tl.constexpr, H_PAD: tl.constexpr):
    """Offsets and mask of the heads-layout tile ``[S*H_PAD, M_PAD, M_PAD]`` in ``A [B, H, M, M]``."""
    entry = tl.arange(0, S * H_PAD)
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
def _forward_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, y_ptr, a_ptr,
                    B, M, d, H, dh, scale, eps,
                    S: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
                    DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
                    RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr,
                    OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
                    HAS_LNB: tl.constexpr, STORE_A: tl.constexpr, PRECISION: tl.constexpr):
    sample0 = tl.program_id(0).to(tl.int64) * S
    _, _, _, _, a, _, _, _, _, y = _tile(
        x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0, B, M, d, H, dh,
        scale, eps, S, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU, RESIDUAL, HAS_BRES,
        RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, PRECISION)
    grow, row_mask = _row_offsets(sample0, B, M, S, M_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    tl.store(y_ptr + grow[:, None] * (H * dh) + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
    if STORE_A:
        offs, mask = _attention_offsets(sample0, B, M, H, S, M_PAD, H_PAD)
        tl.store(a_ptr + offs, a.to(a_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, gy_ptr, ga_ptr,
                     dx_ptr, dwqkv_ptr, dbqkv_ptr, dwres_ptr, dbres_ptr, dlnw_ptr, dlnb_ptr,
                     B, M, d, H, dh, scale, eps, num_tiles,
                     S: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
                     DH_PAD: tl.constexpr, HAS_BQKV: tl.constexpr, QKV_RELU: tl.constexpr,
                     RESIDUAL: tl.constexpr, HAS_BRES: tl.constexpr, RES_RELU: tl.constexpr,
                     OUT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, HAS_LNW: tl.constexpr,
                     HAS_LNB: tl.constexpr, HAS_GY: tl.constexpr, HAS_GA: tl.constexpr,
                     PRECISION: tl.constexpr):
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    HD_PAD: tl.constexpr = H_PAD * DH_PAD
    pid = tl.program_id(0)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, HD_PAD)
    cols, col_mask = _head_columns(H, dh, H_PAD, DH_PAD)
    width = H * dh
    # this program's partial weight-gradient slots (padded layout: no masks needed)
    dw_slot = pid.to(tl.int64) * (D_PAD * HD_PAD) + offs_d[:, None] * HD_PAD + offs_c[None, :]
    dv_slot = pid.to(tl.int64) * HD_PAD + offs_c
    gamma = _load_vector(lnw_ptr, cols, col_mask, 0, HAS_LNW, 1.0)
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        sample0 = tile * S
        x2, q, k, v, a, r, z, n, rstd, _ = _tile(
            x_ptr, wqkv_ptr, bqkv_ptr, wres_ptr, bres_ptr, lnw_ptr, lnb_ptr, sample0, B, M, d, H,
            dh, scale, eps, S, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU, RESIDUAL,
            HAS_BRES, RES_RELU, OUT_RELU, LAYER_NORM, HAS_LNW, HAS_LNB, PRECISION)
        grow, row_mask = _row_offsets(sample0, B, M, S, M_PAD)
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

        # attention
        do = _to_heads(dz, S, M_PAD, H_PAD, DH_PAD)
        dv = _mm(tl.permute(a, (0, 2, 1)), do, DTYPE, PRECISION)
        da = _mm(do, tl.permute(v, (0, 2, 1)), DTYPE, PRECISION)
        if HAS_GA:
            offs, mask = _attention_offsets(sample0, B, M, H, S, M_PAD, H_PAD)
            da += tl.load(ga_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        ds = scale * a * (da - tl.sum(a * da, axis=2)[:, :, None])
        dq = _mm(ds, k, DTYPE, PRECISION)
        dk = _mm(tl.permute(ds, (0, 2, 1)), q, DTYPE, PRECISION)

        # projections: dX and the weight gradients
        x2t = tl.trans(x2)
        dx = _project_backward(dq, q, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 0, pid, offs_d, d, cols,
                               col_mask, width, S, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU,
                               PRECISION)
        dx += _project_backward(dk, k, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 1, pid, offs_d, d, cols,
                                col_mask, width, S, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU,
                                PRECISION)
        dx += _project_backward(dv, v, x2t, wqkv_ptr, dwqkv_ptr, dbqkv_ptr, 2, pid, offs_d, d, cols,
                                col_mask, width, S, M_PAD, D_PAD, H_PAD, DH_PAD, HAS_BQKV, QKV_RELU,
                                PRECISION)
        if RESIDUAL == 2:
            dr = _grad_relu_if(dz, r, RES_RELU)
            w = _load_weight(wres_ptr, offs_d, d, cols, col_mask, width, 0)
            dx += _mm(dr, tl.trans(w), DTYPE, PRECISION)
            _accumulate(dwres_ptr + dw_slot, _mm(x2t, dr, DTYPE, PRECISION))
            if HAS_BRES:
                _accumulate(dbres_ptr + dv_slot, tl.sum(dr, axis=0))
        elif RESIDUAL == 1:
            # scatter head columns back to x's columns: dZ @ E with E[h*DH_PAD + j, h*dh + j] = 1
            select = (cols[:, None] == offs_d[None, :]) & col_mask[:, None]
            dx += tl.dot(dz, select.to(tl.float32), input_precision="ieee")
        if LAYER_NORM != 0:
            if HAS_LNW:
                _accumulate(dlnw_ptr + dv_slot, dgamma)
            if HAS_LNB:
                _accumulate(dlnb_ptr + dv_slot, dbeta)
        tl.store(dx_ptr + grow[:, None] * d + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & (offs_d[None, :] < d))


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _flags(b_qkv, w_res, b_res, ln_weight, ln_bias, *, qkv_relu, residual, res_relu, out_relu,
           layer_norm) -> dict:
    """Compile-time specialisation shared by both kernels."""
    return dict(HAS_BQKV=b_qkv is not None, QKV_RELU=qkv_relu, RESIDUAL=RESIDUALS[residual],
                HAS_BRES=b_res is not None, RES_RELU=res_relu, OUT_RELU=out_relu,
                LAYER_NORM=LAYER_NORMS[layer_norm], HAS_LNW=ln_weight is not None,
                HAS_LNB=ln_bias is not None)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _pointers(*tensors, dummy):
    """Absent optional tensors become ``dummy`` (never read: the kernels are specialised on presence)."""
    return tuple(dummy if t is None else t for t in tensors)


def forward(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, *, num_heads: int, scale: float | None,
            qkv_relu: bool, residual: str, res_relu: bool, out_relu: bool, layer_norm: str,
            ln_eps: float, return_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, M, d]`` -> ``Y [B, M, H*dh]`` and ``A [B, H, M, M]`` (``[0]`` unless
    ``return_attention``); see ``fastint.ops.field_attention`` for the arguments."""
    x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias = _contiguous(
        x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias)
    (B, M, d), width = x.shape, w_qkv.shape[1] // 3
    dh = width // num_heads
    y = torch.empty(B, M, width, dtype=x.dtype, device=x.device)
    a = torch.empty((B, num_heads, M, M) if return_attention else (0,), dtype=x.dtype, device=x.device)
    if B == 0:
        return y, a
    pads = padded_sizes(M, d, num_heads, dh)
    samples, num_warps = launch_config(B, pads)
    flags = _flags(b_qkv, w_res, b_res, ln_weight, ln_bias, qkv_relu=qkv_relu, residual=residual,
                   res_relu=res_relu, out_relu=out_relu, layer_norm=layer_norm)
    _forward_kernel[grid(B, samples)](
        x, w_qkv, *_pointers(b_qkv, w_res, b_res, ln_weight, ln_bias, dummy=x), y,
        a if return_attention else y, B, M, d, num_heads, dh,
        _scale(scale, dh), ln_eps, S=samples, **pads, **flags, STORE_A=return_attention,
        PRECISION=_precision(x.dtype), num_warps=num_warps)
    return y, a


def backward(grad_y, grad_a, x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, *, num_heads: int,
             scale: float | None, qkv_relu: bool, residual: str, res_relu: bool, out_relu: bool,
             layer_norm: str, ln_eps: float) -> tuple[torch.Tensor | None, ...]:
    """Gradients ``(dx, dw_qkv, db_qkv, dw_res, db_res, dln_weight, dln_bias)`` (``None`` for absent
    parameters) given ``grad_y [B, M, H*dh]`` and ``grad_a [B, H, M, M]`` (either may be ``None``)."""
    x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, grad_y, grad_a = _contiguous(
        x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, grad_y, grad_a)
    params = (w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias)
    (B, M, d), width = x.shape, w_qkv.shape[1] // 3
    dh = width // num_heads
    if B == 0 or (grad_y is None and grad_a is None):
        return (torch.zeros_like(x),) + tuple(None if p is None else torch.zeros_like(p) for p in params)
    pads = padded_sizes(M, d, num_heads, dh)
    d_pad, hd_pad = pads["D_PAD"], pads["H_PAD"] * pads["DH_PAD"]
    samples, num_warps = launch_config(B, pads, backward=True)
    num_tiles = triton.cdiv(B, samples)
    programs = _backward_programs(num_tiles, x.device)

    def partials(like, *shape):
        """This gradient's fp32 partial slots ``[programs, *shape]`` (a dummy when ``like`` is absent)."""
        return x if like is None else torch.zeros(programs, *shape, dtype=torch.float32, device=x.device)

    dx = torch.empty_like(x)
    dw_qkv, db_qkv = partials(w_qkv, 3, d_pad, hd_pad), partials(b_qkv, 3, hd_pad)
    dw_res, db_res = partials(w_res, d_pad, hd_pad), partials(b_res, hd_pad)
    dln_w, dln_b = partials(ln_weight, hd_pad), partials(ln_bias, hd_pad)
    flags = _flags(b_qkv, w_res, b_res, ln_weight, ln_bias, qkv_relu=qkv_relu, residual=residual,
                   res_relu=res_relu, out_relu=out_relu, layer_norm=layer_norm)
    _backward_kernel[(programs,)](
        x, w_qkv, *_pointers(b_qkv, w_res, b_res, ln_weight, ln_bias, grad_y, grad_a, dummy=x),
        dx, dw_qkv, db_qkv, dw_res, db_res, dln_w, dln_b,
        B, M, d, num_heads, dh, _scale(scale, dh), ln_eps, num_tiles,
        S=samples, **pads, **flags, HAS_GY=grad_y is not None, HAS_GA=grad_a is not None,
        PRECISION=_precision(x.dtype), num_warps=num_warps)

    def reduce(partial, like, matrix=False):
        """Sum over programs, drop padded heads / head columns (and ``matrix`` rows) -> ``like``."""
        if like is None:
            return None
        g = partial.sum(0).unflatten(-1, (pads["H_PAD"], pads["DH_PAD"]))[..., :num_heads, :dh].flatten(-2)
        if matrix:
            g = g[..., :d, :]
        if like is w_qkv:                                   # [3, d, HD] -> [d, 3*HD]
            g = g.permute(1, 0, 2)
        return g.reshape(like.shape).to(like.dtype).contiguous()

    return (dx, reduce(dw_qkv, w_qkv, True), reduce(db_qkv, b_qkv), reduce(dw_res, w_res, True),
            reduce(db_res, b_res), reduce(dln_w, ln_weight), reduce(dln_b, ln_bias))
