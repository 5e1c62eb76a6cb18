"""Triton kernels for InterHAt's hierarchical attentional aggregation (all K orders fused).

Per sample, ``X1 [M, d]``; for orders ``i = 0..K-1`` (``X_0 = X1``):

    H_i = X_i W_i + b_i                 [M, a]
    s_i = relu(H_i) c_i                 [M]
    alpha_i = softmax over fields(s_i)  [M]
    u_i = alpha_i^T X_i                 [d]
    X_{i+1} = X1 * u_i + X_i

which unrolls to ``X_i = X1 * P_i`` with ``P_i = 1 + sum_{k<i} u_k`` (a ``[d]`` vector per sample):
the kernels carry ``P`` instead of ``X``.

Layout: a program owns ``SAMPLES`` consecutive samples (grid axis 0) and walks their fields in
chunks of ``FIELD_BLOCK``: a chunk is an ``[SAMPLES, FIELD_BLOCK, D_PAD]`` fp32 tile of ``x1``,
re-read (an L1/L2 hit) whenever an order needs it, so no ``[M, d]`` tensor stays on chip. The
projection runs in chunks of ``A_BLOCK`` attention units: ``tl.dot`` ``[SAMPLES*FIELD_BLOCK,
D_PAD] x [D_PAD, A_BLOCK]`` (fp32 accumulation; operands in the weights' dtype; d and a padded
to powers of two >= 16 and masked). The softmax over fields is online (running max, sum and
``u`` accumulator). Padded fields get score ``-inf`` (alpha 0); padded samples read zeros and
produce no gradient.

Forward outputs: ``U [B, K, d]`` and, on request, the raw scores ``[B, K, M]`` and their
log-sum-exp ``[B, K]`` (fp32; the launcher forms ``alpha = exp(s - lse)``).

Backward, two kernels (only ``x1`` and the weights are saved). The activation kernel recomputes
the forward keeping ``u_i``, ``lse_i`` and (with an ``alpha`` gradient) ``t_i = <alpha_i,
dalpha_i>`` per order, then walks the orders backwards:

    g_u_i   = dU_i + sum_{k>i} g_P_k;   delta_i = <u_i, g_u_i> + t_i  (= <alpha_i, g_alpha_i>)
    per chunk of fields:
      alpha = exp(s - lse_i);   g_alpha = X_i g_u_i + dalpha_i;   g_s = alpha (g_alpha - delta_i)
      g_H = (g_s c_i^T) * [H_i > 0];   g_X = alpha g_u_i^T + g_H W_i^T
      g_P_i += sum_j g_X^(j) * x1^(j);   dx1 += g_X * P_i

``dx1`` accumulates over the orders in an fp32 buffer (each program reads and writes only its own
rows); ``g_s [B, K, M]`` and ``P [B, K, d]`` are stored (fp32) for the parameter kernel, which
treats the ``B*M`` rows independently: order ``i``, chunk of ``A_BLOCK`` attention units, tiles of
``ROW_BLOCK`` rows ``X_i = x1 * P_i``:

    H = X_i W_i + b_i;   g_H = (g_s c_i^T) * [H > 0]
    dW_i += X_i^T g_H;   db_i += 1^T g_H;   dc_i += relu(H)^T g_s

accumulated on chip over the program's tiles and stored once into its own fp32 slot
``[groups, K, ...]``, summed afterwards by torch: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, contiguous, dot_precision, interpreter_samples,
                                     mm, next_pow2, persistent_programs, reduce_partials, register_cap,
                                     split_dot, target_of)

_PARAMETER_PROGRAMS_PER_SM = 4  # the parameter kernel's grid: each program loops over row tiles


@triton.jit
def _field_chunk(x1_ptr, row0, m0, B, M, d, SAMPLES: tl.constexpr, FIELD_BLOCK: tl.constexpr,
                 D_PAD: tl.constexpr):
    """Fields ``m0 .. m0+FIELD_BLOCK-1`` of samples ``row0 .. row0+SAMPLES-1``: ``x1
    [SAMPLES, FIELD_BLOCK, D_PAD]`` (fp32), its offsets in a ``[B, M, d]`` tensor, its mask and the
    mask of its existing ``(sample, field)`` rows ``[SAMPLES, FIELD_BLOCK]`` and of its existing
    fields ``[FIELD_BLOCK]``."""
    offs_s = tl.arange(0, SAMPLES)
    offs_f = m0 + tl.arange(0, FIELD_BLOCK)
    offs_d = tl.arange(0, D_PAD)
    fields = offs_f < M
    rows = (offs_s[:, None] < B - row0) & fields[None, :]
    offs = (row0 + offs_s[:, None, None]) * (M * d) + offs_f[None, :, None] * d + offs_d[None, None, :]
    mask = rows[:, :, None] & (offs_d < d)[None, None, :]
    return tl.load(x1_ptr + offs, mask=mask, other=0.0).to(tl.float32), offs, mask, rows, fields


@triton.jit
def _hidden_chunk(X, w_ptr, b_ptr, c_ptr, i, d, a, a0, D_PAD: tl.constexpr, A_BLOCK: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Pre-activations ``H [rows, A_BLOCK]`` of attention units ``a0 + offs`` of order ``i`` for
    rows ``X [rows, D_PAD]`` (fp32; ``hi + lo`` half parts with half-precision weights:
    ``split_dot``), that chunk of ``W_i [D_PAD, A_BLOCK]`` (storage dtype) and of ``c_i``."""
    offs_d = tl.arange(0, D_PAD)
    cols = a0 + tl.arange(0, A_BLOCK)
    mask_c = cols < a
    w = tl.load(w_ptr + i * d * a + offs_d[:, None] * a + cols[None, :],
                mask=(offs_d[:, None] < d) & mask_c[None, :], other=0.0)
    bias = tl.load(b_ptr + i * a + cols, mask=mask_c, other=0.0).to(tl.float32)
    ctx = tl.load(c_ptr + i * a + cols, mask=mask_c, other=0.0).to(tl.float32)
    return split_dot(X, w, PRECISION) + bias[None, :], w, ctx


@triton.jit
def _scores(X, w_ptr, b_ptr, c_ptr, i, d, a, D_PAD: tl.constexpr, A_PAD: tl.constexpr,
            A_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Scores ``relu(X W_i + b_i) c_i`` ``[rows]`` of rows ``X [rows, D_PAD]``, in chunks of
    ``A_BLOCK`` attention units (``W_i`` never needs to be on chip whole)."""
    s = tl.zeros([X.shape[0]], tl.float32)
    for a0 in range(0, A_PAD, A_BLOCK):
        H, _, ctx = _hidden_chunk(X, w_ptr, b_ptr, c_ptr, i, d, a, a0, D_PAD, A_BLOCK, PRECISION)
        s += tl.sum(tl.maximum(H, 0.0) * ctx[None, :], axis=1)
    return s


@triton.jit
def _chunk_scores(x1, P, fields, i, w_ptr, b_ptr, c_ptr, d, a, SAMPLES: tl.constexpr,
                  FIELD_BLOCK: tl.constexpr, D_PAD: tl.constexpr, A_PAD: tl.constexpr,
                  A_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Order ``i`` on a chunk: ``X_i = x1 * P_i`` ``[SAMPLES, FIELD_BLOCK, D_PAD]`` and the scores
    ``[SAMPLES, FIELD_BLOCK]`` (``-inf`` on padded fields; samples past the batch keep finite
    scores, so their statistics stay finite)."""
    X = x1 * P[:, None, :]
    s = _scores(tl.reshape(X, [SAMPLES * FIELD_BLOCK, D_PAD]), w_ptr, b_ptr, c_ptr, i, d, a, D_PAD,
                A_PAD, A_BLOCK, PRECISION)
    return X, tl.where(fields[None, :], tl.reshape(s, [SAMPLES, FIELD_BLOCK]), float("-inf"))


@triton.jit
def _attend_order(x1_ptr, ga_ptr, s_ptr, P, i, row0, B, M, d, a, w_ptr, b_ptr, c_ptr,
                  K: tl.constexpr, SAMPLES: tl.constexpr, FIELD_BLOCK: tl.constexpr,
                  D_PAD: tl.constexpr, A_PAD: tl.constexpr, A_BLOCK: tl.constexpr,
                  HAS_GA: tl.constexpr, STORE_SCORES: tl.constexpr, PRECISION: tl.constexpr):
    """Order ``i`` of samples ``row0 ..`` given ``P_i [SAMPLES, D_PAD]``: one online-softmax pass
    over the chunks of fields. Returns ``u_i [SAMPLES, D_PAD]``, the log-sum-exp of the scores and
    (``HAS_GA``) ``t_i = <alpha_i, dalpha_i>`` ``[SAMPLES]``; stores the raw scores with
    ``STORE_SCORES``."""
    m = tl.full([SAMPLES], float("-inf"), tl.float32)
    total = tl.zeros([SAMPLES], tl.float32)
    t = tl.zeros([SAMPLES], tl.float32)
    u = tl.zeros([SAMPLES, D_PAD], tl.float32)
    offs_s = tl.arange(0, SAMPLES)
    for m0 in range(0, M, FIELD_BLOCK):
        x1, _, _, rows, fields = _field_chunk(x1_ptr, row0, m0, B, M, d, SAMPLES, FIELD_BLOCK, D_PAD)
        X, s = _chunk_scores(x1, P, fields, i, w_ptr, b_ptr, c_ptr, d, a, SAMPLES, FIELD_BLOCK, D_PAD,
                             A_PAD, A_BLOCK, PRECISION)
        offs_alpha = (row0 + offs_s[:, None]) * (K * M) + i * M + m0 + tl.arange(0, FIELD_BLOCK)[None, :]
        if STORE_SCORES:
            tl.store(s_ptr + offs_alpha, s, mask=rows)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        scale = tl.exp(m - m_new)
        weight = tl.exp(s - m_new[:, None])
        total = total * scale + tl.sum(weight, axis=1)
        u = u * scale[:, None] + tl.sum(weight[:, :, None] * X, axis=1)
        if HAS_GA:
            ga = tl.load(ga_ptr + offs_alpha, mask=rows, other=0.0).to(tl.float32)
            t = t * scale + tl.sum(weight * ga, axis=1)
        m = m_new
    return u / total[:, None], m + tl.log(total), t / total


@triton.jit
def _hierarchical_aggregation_fwd_kernel(
        x1_ptr, w_ptr, b_ptr, c_ptr, u_ptr, s_ptr, lse_ptr, B, M, d, a,
        K: tl.constexpr, SAMPLES: tl.constexpr, FIELD_BLOCK: tl.constexpr, D_PAD: tl.constexpr,
        A_PAD: tl.constexpr, A_BLOCK: tl.constexpr, STORE_SCORES: tl.constexpr,
        PRECISION: tl.constexpr):
    """One program: samples ``[pid*SAMPLES, (pid+1)*SAMPLES)``; runs the ``K`` orders and stores
    ``u_i [SAMPLES, d]`` and, with ``STORE_SCORES``, the raw scores ``[SAMPLES, M]`` and their
    log-sum-exp of every order."""
    row0 = tl.cast(tl.program_id(0), tl.int64) * SAMPLES
    offs_s = tl.arange(0, SAMPLES)
    offs_d = tl.arange(0, D_PAD)
    mask_u = (offs_s[:, None] < B - row0) & (offs_d[None, :] < d)
    P = tl.full([SAMPLES, D_PAD], 1.0, tl.float32)
    for i in range(K):
        u, lse, _ = _attend_order(x1_ptr, x1_ptr, s_ptr, P, i, row0, B, M, d, a, w_ptr, b_ptr, c_ptr,
                                  K, SAMPLES, FIELD_BLOCK, D_PAD, A_PAD, A_BLOCK, False, STORE_SCORES,
                                  PRECISION)
        tl.store(u_ptr + (row0 + offs_s[:, None]) * (K * d) + i * d + offs_d[None, :],
                 u.to(u_ptr.dtype.element_ty), mask=mask_u)
        if STORE_SCORES:
            tl.store(lse_ptr + (row0 + offs_s) * K + i, lse, mask=offs_s < B - row0)
        P += u


@triton.jit
def _grad_rows(X, gs, w_ptr, b_ptr, c_ptr, i, d, a, D_PAD: tl.constexpr, A_PAD: tl.constexpr,
               A_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """``g_H W_i^T`` ``[rows, D_PAD]`` of rows ``X [rows, D_PAD]`` with score gradients ``gs [rows]``:
    ``g_H = (g_s c_i^T) * [X W_i + b_i > 0]``, in chunks of ``A_BLOCK`` attention units."""
    acc = tl.zeros([X.shape[0], D_PAD], tl.float32)
    for a0 in range(0, A_PAD, A_BLOCK):
        H, w, ctx = _hidden_chunk(X, w_ptr, b_ptr, c_ptr, i, d, a, a0, D_PAD, A_BLOCK, PRECISION)
        gH = tl.where(H > 0.0, gs[:, None] * ctx[None, :], 0.0)
        acc += mm(gH, tl.trans(w), w.dtype, PRECISION)
    return acc


@triton.jit
def _hierarchical_aggregation_bwd_activations_kernel(
        x1_ptr, w_ptr, b_ptr, c_ptr, gu_ptr, ga_ptr, dx1_ptr, p_ptr, gs_ptr, B, M, d, a,
        K: tl.constexpr, K_PAD: tl.constexpr, SAMPLES: tl.constexpr, FIELD_BLOCK: tl.constexpr,
        D_PAD: tl.constexpr, A_PAD: tl.constexpr, A_BLOCK: tl.constexpr, HAS_GU: tl.constexpr,
        HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: samples ``[pid*SAMPLES, (pid+1)*SAMPLES)``. It recomputes the forward keeping
    ``u_i``, ``lse_i``, ``t_i`` of every order, walks the orders backwards adding ``g_X * P_i`` into
    the zero-initialised fp32 ``dx1`` rows of its samples, and stores ``P_i [SAMPLES, d]`` and
    ``g_s [SAMPLES, M]`` of every order (fp32) for the parameter kernel."""
    row0 = tl.cast(tl.program_id(0), tl.int64) * SAMPLES
    offs_s = tl.arange(0, SAMPLES)
    offs_d = tl.arange(0, D_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_fb = tl.arange(0, FIELD_BLOCK)
    mask_u = (offs_s[:, None] < B - row0) & (offs_d[None, :] < d)
    offs_u = (row0 + offs_s[:, None]) * (K * d) + offs_d[None, :]          # + i * d: order i
    # recompute the forward, keeping u_i [SAMPLES, K_PAD, D_PAD], lse_i and t_i [SAMPLES, K_PAD]
    U = tl.zeros([SAMPLES, K_PAD, D_PAD], tl.float32)
    LSE = tl.zeros([SAMPLES, K_PAD], tl.float32)
    T = tl.zeros([SAMPLES, K_PAD], tl.float32)
    P = tl.full([SAMPLES, D_PAD], 1.0, tl.float32)
    for i in range(K):
        u, lse, t = _attend_order(x1_ptr, ga_ptr, x1_ptr, P, i, row0, B, M, d, a, w_ptr, b_ptr, c_ptr,
                                  K, SAMPLES, FIELD_BLOCK, D_PAD, A_PAD, A_BLOCK, HAS_GA, False, PRECISION)
        U = tl.where(offs_k[None, :, None] == i, u[:, None, :], U)
        LSE = tl.where(offs_k[None, :] == i, lse[:, None], LSE)
        T = tl.where(offs_k[None, :] == i, t[:, None], T)
        P += u
    # walk the orders backwards
    G = tl.zeros([SAMPLES, D_PAD], tl.float32)  # sum of g_P_k over the orders k after the current one
    for j in range(K):
        i = K - 1 - j
        P = 1.0 + tl.sum(tl.where(offs_k[None, :, None] < i, U, 0.0), axis=1)
        gu = G
        if HAS_GU:
            gu += tl.load(gu_ptr + offs_u + i * d, mask=mask_u, other=0.0).to(tl.float32)
        this = offs_k[None, :] == i
        lse = tl.sum(tl.where(this, LSE, 0.0), axis=1)
        delta = tl.sum(tl.sum(tl.where(this[:, :, None], U, 0.0), axis=1) * gu, axis=1)
        delta += tl.sum(tl.where(this, T, 0.0), axis=1)
        tl.store(p_ptr + offs_u + i * d, P, mask=mask_u)
        tl.debug_barrier()  # the previous order's dx1 updates are visible to every thread
        for m0 in range(0, M, FIELD_BLOCK):
            x1, offs, mask, rows, fields = _field_chunk(x1_ptr, row0, m0, B, M, d, SAMPLES, FIELD_BLOCK,
                                                        D_PAD)
            X, s = _chunk_scores(x1, P, fields, i, w_ptr, b_ptr, c_ptr, d, a, SAMPLES, FIELD_BLOCK, D_PAD,
                                 A_PAD, A_BLOCK, PRECISION)
            alpha = tl.exp(s - lse[:, None])
            galpha = tl.sum(X * gu[:, None, :], axis=2)
            offs_alpha = (row0 + offs_s[:, None]) * (K * M) + i * M + m0 + offs_fb[None, :]
            if HAS_GA:
                galpha += tl.load(ga_ptr + offs_alpha, mask=rows, other=0.0).to(tl.float32)
            gs = alpha * (galpha - delta[:, None])
            tl.store(gs_ptr + offs_alpha, gs, mask=rows)
            rows_X = tl.reshape(X, [SAMPLES * FIELD_BLOCK, D_PAD])
            gHW = _grad_rows(rows_X, tl.reshape(gs, [SAMPLES * FIELD_BLOCK]), w_ptr, b_ptr, c_ptr, i, d, a,
                             D_PAD, A_PAD, A_BLOCK, PRECISION)
            gX = alpha[:, :, None] * gu[:, None, :] + tl.reshape(gHW, [SAMPLES, FIELD_BLOCK, D_PAD])
            G += tl.sum(gX * x1, axis=1)
            dx1 = tl.load(dx1_ptr + offs, mask=mask, other=0.0) + gX * P[:, None, :]
            tl.store(dx1_ptr + offs, dx1, mask=mask)


@triton.jit
def _hierarchical_aggregation_bwd_parameters_kernel(
        x1_ptr, w_ptr, b_ptr, c_ptr, p_ptr, gs_ptr, dw_ptr, db_ptr, dc_ptr, B, M, d, a, num_tiles,
        K: tl.constexpr, ROW_BLOCK: tl.constexpr, D_PAD: tl.constexpr, A_PAD: tl.constexpr,
        A_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """One program: order ``i`` and chunk ``a0 = c * A_BLOCK`` of attention units (``(i, c)`` =
    ``pid`` modulo ``K * A_PAD / A_BLOCK``), over the tiles ``g, g + groups, ...`` of ``ROW_BLOCK``
    rows of the flattened ``[B*M, d]`` ``x1`` (``g`` = its group). Per tile it rebuilds ``X_i =
    x1 * P_i`` and that chunk of ``H_i``, forms ``g_H = (g_s c_i^T) * [H_i > 0]`` and accumulates
    ``dW_i += X_i^T g_H``, ``db_i += 1^T g_H``, ``dc_i += relu(H_i)^T g_s`` on chip; stores them
    once, into slot ``g``."""
    pid = tl.program_id(0)
    work = K * (A_PAD // A_BLOCK)
    i, a0 = (pid % work) % K, ((pid % work) // K) * A_BLOCK
    group, groups = pid // work, tl.num_programs(0) // work
    offs_r = tl.arange(0, ROW_BLOCK)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, A_BLOCK)
    dw = tl.zeros([D_PAD, A_BLOCK], tl.float32)
    db = tl.zeros([A_BLOCK], tl.float32)
    dc = tl.zeros([A_BLOCK], tl.float32)
    for tile in range(group, num_tiles, groups):
        r = tl.cast(tile, tl.int64) * ROW_BLOCK + offs_r               # rows of [B*M]: (sample, field)
        valid = r < B * M
        sample, field = r // M, r % M
        mask = valid[:, None] & (offs_d < d)[None, :]
        x1 = tl.load(x1_ptr + r[:, None] * d + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        P = tl.load(p_ptr + sample[:, None] * (K * d) + i * d + offs_d[None, :], mask=mask, other=0.0)
        gs = tl.load(gs_ptr + sample * (K * M) + i * M + field, mask=valid, other=0.0)
        X = x1 * P
        H, w, ctx = _hidden_chunk(X, w_ptr, b_ptr, c_ptr, i, d, a, a0, D_PAD, A_BLOCK, PRECISION)
        gH = tl.where(H > 0.0, gs[:, None] * ctx[None, :], 0.0)
        dw += mm(tl.trans(X), gH, w.dtype, PRECISION)
        db += tl.sum(gH, axis=0)
        dc += tl.sum(tl.maximum(H, 0.0) * gs[:, None], axis=0)
    slot = tl.cast(group, tl.int64) * K + i
    tl.store(dw_ptr + slot * (D_PAD * A_PAD) + offs_d[:, None] * A_PAD + a0 + offs_c[None, :], dw)
    tl.store(db_ptr + slot * A_PAD + a0 + offs_c, db)
    tl.store(dc_ptr + slot * A_PAD + a0 + offs_c, dc)


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

KERNELS = ("fwd", "bwd_activations", "bwd_parameters")

# GPU tiles, from the static gate (sm_80 and sm_90, fp32/tf32/fp16/bf16, d <= 40, a <= 64, M <= 39):
# projection rows per dot (SAMPLES * FIELD_BLOCK, or ROW_BLOCK) and attention units per chunk. A
# dot keeps its operands' whole reduction dimension in registers per warp, twice over for the
# 3xTF32 / split parts; before the chunking (all M_PAD fields, all A_PAD units, K orders' weight
# gradients in one kernel) the backward spilled up to 5 KB at d = 40 on sm_80. 32 activation rows
# still spilled 20-88 B (fp32, d = 40), 16 do not; 32-unit chunks spilled the fp32 forward
# (4-244 B), 16-unit chunks do not.
_ROWS = {"fwd": 32, "bwd_activations": 16, "bwd_parameters": 32}
_A_BLOCK = 16


def _parameter_groups(num_tiles: int, work: int, target: Target) -> int:
    """Row-tile groups of the parameter kernel, whose grid is ``groups * work`` (``work``: orders x
    attention chunks; one weight-gradient slot per group and order): about
    ``_PARAMETER_PROGRAMS_PER_SM`` programs per SM on a GPU; under the interpreter half as many
    groups as tiles (tests exercise the tile loop and the slot reduction)."""
    if target.interpreter:
        return persistent_programs(num_tiles, target, 1)
    return max(1, min(num_tiles, _PARAMETER_PROGRAMS_PER_SM * target.sm_count // work))


def launch_config(kernel: str, batch: int, fields: int, dim: int, attention_dim: int, orders: int,
                  dtype: torch.dtype, target: Target, *, return_attention: bool = False,
                  grad_u: bool = True, grad_alpha: bool = False) -> LaunchConfig:
    """The launch of ``kernel`` (one of ``KERNELS``) for ``x1 [batch, fields, dim]`` in ``dtype``
    with ``orders`` orders of attention width ``attention_dim``; ``grad_u`` / ``grad_alpha``: which
    upstream gradients the activation kernel gets.

    On a GPU (``_ROWS``, ``_A_BLOCK``): a program's dots have ``_ROWS[kernel]`` rows (whole samples
    of ``M_PAD`` fields when they fit, else one sample in chunks of fields) and chunks of 16
    attention units; 4 warps with ``register_cap``; no pipelining (the chunk loops' loads are
    L1/L2 hits; Triton's 3 stages spilled the fp32 forward). Forward and activation grids: one
    program per tile of samples; parameter grid: orders x attention chunks x about
    ``_PARAMETER_PROGRAMS_PER_SM`` programs per SM. Interpreter: few programs, chunks of 16
    fields and 16 units (tests exercise both chunk loops), parameter tiles of 256 rows."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    m_pad, d_pad, a_pad = next_pow2(fields), next_pow2(dim), next_pow2(attention_dim)
    if target.interpreter:   # chunks of 16 fields and units: tests exercise both chunk loops
        samples, field_block, rows, a_block, num_warps = interpreter_samples(batch), 16, 256, 16, 4
    else:
        rows, a_block, num_warps = _ROWS[kernel], _A_BLOCK, 4
        samples, field_block = max(1, rows // m_pad), min(m_pad, rows)
    a_block = min(a_block, a_pad)
    meta = dict(K=orders, D_PAD=d_pad, A_PAD=a_pad, A_BLOCK=a_block, PRECISION=dot_precision(dtype))
    options = dict(num_warps=num_warps, num_stages=1, maxnreg=register_cap(num_warps))
    if kernel == "bwd_parameters":
        row_block = min(rows, next_pow2(batch * fields))
        num_tiles = triton.cdiv(batch * fields, row_block)
        work = orders * (a_pad // a_block)
        return LaunchConfig(_hierarchical_aggregation_bwd_parameters_kernel,
                            (work * _parameter_groups(num_tiles, work, target),),
                            {**meta, "ROW_BLOCK": row_block}, **options)
    meta.update(SAMPLES=samples, FIELD_BLOCK=field_block)
    grid = (triton.cdiv(batch, samples),)
    if kernel == "fwd":
        return LaunchConfig(_hierarchical_aggregation_fwd_kernel, grid,
                            {**meta, "STORE_SCORES": return_attention}, **options)
    return LaunchConfig(_hierarchical_aggregation_bwd_activations_kernel, grid,
                        {**meta, "K_PAD": triton.next_power_of_2(orders), "HAS_GU": grad_u,
                         "HAS_GA": grad_alpha}, **options)


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
    scores = torch.empty(B, K, M if return_attention else 0, dtype=torch.float32, device=x1.device)
    lse = torch.empty(B, K if return_attention else 0, dtype=torch.float32, device=x1.device)
    if B > 0:
        cfg = launch_config("fwd", B, M, d, a, K, x1.dtype, target_of(x1.device),
                            return_attention=return_attention)
        cfg.launch(x1, weight, bias, context, u, scores, lse, B, M, d, a)
    alpha = (scores - lse[..., None]).exp_().to(x1.dtype) if return_attention else x1.new_empty(0)
    return u, alpha


def backward(grad_u: torch.Tensor | None, grad_alpha: torch.Tensor | None, x1: torch.Tensor,
             weight: torch.Tensor, bias: torch.Tensor, context: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx1, dweight, dbias, dcontext)`` given ``grad_u [B, K, d]`` and
    ``grad_alpha [B, K, M]`` (either may be ``None`` = zero). Two launches: the activation kernel
    (``dx1``; per order the multipliers ``P [B, K, d]`` and score gradients ``g_s [B, K, M]``,
    fp32), then the parameter kernel (per-group partial weight gradients, summed by torch)."""
    x1, weight, bias, context, grad_u, grad_alpha = contiguous(x1, weight, bias, context, grad_u, grad_alpha)
    (B, M, d), (K, _, a) = x1.shape, weight.shape
    if B == 0 or (grad_u is None and grad_alpha is None):
        return tuple(torch.zeros_like(t) for t in (x1, weight, bias, context))
    target, device = target_of(x1.device), x1.device
    cfg = launch_config("bwd_activations", B, M, d, a, K, x1.dtype, target, grad_u=grad_u is not None,
                        grad_alpha=grad_alpha is not None)
    dx1 = torch.zeros(B, M, d, dtype=torch.float32, device=device)     # accumulated over the orders
    multipliers = torch.empty(B, K, d, dtype=torch.float32, device=device)
    grad_scores = torch.empty(B, K, M, dtype=torch.float32, device=device)
    cfg.launch(x1, weight, bias, context, x1 if grad_u is None else grad_u,
               x1 if grad_alpha is None else grad_alpha, dx1, multipliers, grad_scores, B, M, d, a)
    cfg = launch_config("bwd_parameters", B, M, d, a, K, x1.dtype, target)
    groups = cfg.grid[0] // (K * (cfg.meta["A_PAD"] // cfg.meta["A_BLOCK"]))
    d_pad, a_pad = cfg.meta["D_PAD"], cfg.meta["A_PAD"]
    dw = torch.empty(groups, K, d_pad, a_pad, dtype=torch.float32, device=device)  # every slot stored once
    db = torch.empty(groups, K, a_pad, dtype=torch.float32, device=device)
    dc = torch.empty(groups, K, a_pad, dtype=torch.float32, device=device)
    cfg.launch(x1, weight, bias, context, multipliers, grad_scores, dw, db, dc, B, M, d, a,
               triton.cdiv(B * M, cfg.meta["ROW_BLOCK"]))
    return (dx1.to(x1.dtype), *(reduce_partials(g)[..., :a].to(t.dtype).contiguous()
                                for g, t in ((dw[:, :, :d], weight), (db, bias), (dc, context))))
