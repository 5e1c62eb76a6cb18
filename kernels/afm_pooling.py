"""Triton kernels for AFM attention pooling over field pairs (never materialising ``[B, P, k]``).

Per sample ``e [M, k]`` and pair list ``(i_q, j_q)``, ``q < P``:

    p_q = e_i * e_j                     [k]
    H_q = p_q W + b                     [t]
    s_q = relu(H_q) . h
    a   = softmax over pairs(s)         [P]
    pooled = sum_q a_q p_q              [k]

Layout: the grid (axis 0) has a capped number of programs; program ``pid`` owns the contiguous
chunk of ``samples_per_program`` consecutive samples and, per sample, loops over tiles of
``PAIR_BLOCK`` pairs. A tile gathers the two rows of every pair from ``e`` (the ``M x k`` rows of
one sample stay in L1/L2) and forms ``p [PAIR_BLOCK, K_PAD]`` in registers. The attention MLP
runs on tensor cores in chunks of ``T_BLOCK`` hidden units, each a sum over chunks of ``K_BLOCK``
embedding columns: ``tl.dot`` ``[PAIR_BLOCK, K_BLOCK] x [K_BLOCK, T_BLOCK]`` (fp32 accumulation,
operands in the weights' dtype; k and t padded to powers of two >= 16 and masked). A dot holds its
left operand's whole reduction dimension in registers (16 rows x ``K_BLOCK`` per warp, twice for
the ``hi + lo`` parts of ``split_dot``), so the column chunks of ``p`` are re-formed from the
gathered rows (L1 hits) rather than taken from the tile; the chunks of ``W`` are re-read per tile
from L2. The softmax is online (running max, sum and ``[K_PAD]`` accumulator). Padded pairs get
score ``-inf``.

Forward outputs: ``pooled [B, k]`` (e's dtype), ``stats [B, k + 1]`` fp32 (``pooled`` unrounded
and the log-sum-exp ``lse`` of the scores) and, on request, the raw scores ``[B, P]`` in fp32 (the
launcher turns them into ``a = exp(s - lse)``).

Backward (saved: e, weights, stats), two kernels. With upstream ``g [k]`` (pooled) and ``ga [P]``
(attention), ``delta = <pooled, g> + <a, ga>`` is computed by torch up front (from the fp32
``pooled``: a rounded one leaves a bias ``a_q * err`` in every ``ds_q``, which with one pair is the
whole weight gradient). The activation kernel, per tile:

    a_q   = exp(s_q - lse);   ds_q = a_q (p_q . g + ga_q - delta)      (stored, fp32 [B, P])
    dH_q  = ds_q h * [H_q > 0];   dp_q = a_q g + dH_q W^T
    de_i += dp_q * e_j;   de_j += dp_q * e_i

``de`` of a sample accumulates on chip in ``[M_PAD, K_PAD]`` by one-hot ``tl.dot``s (a pair's
fields are in the same program: no scatter, no atomics), stored once per sample. The one-hot
operand is exact in tf32, so these dots run as 3xTF32 on tensor cores (fp32-level accuracy:
only the ``lo * lo`` term of the values is dropped). Where ``[M_PAD, K_PAD]`` accumulators do not
fit (k = 256 with 39 fields), a program owns a part of ``de``'s columns, recomputing the MLP of its
tiles per part. The parameter kernel gives each program one chunk of ``T_BLOCK`` hidden units and
a group of samples; it recomputes that chunk of ``H`` per tile from the stored ``ds`` and
accumulates

    dW[:, chunk] += p^T dH;   db[chunk] += 1^T dH;   dh[chunk] += relu(H)^T ds

on chip over all its tiles, stored once into the group's fp32 slot ``[groups, ...]`` (one writer
per slot element), summed afterwards by torch: deterministic, no atomics, no per-tile traffic."""
from __future__ import annotations

from collections.abc import Collection

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, contiguous, dot_precision, next_pow2,
                                     persistent_programs, reduce_partials, register_cap, split_dot,
                                     target_of)

_FORWARD_PROGRAMS_PER_SM = 16  # forward and activation kernel (no partial buffers): hide latency
_BACKWARD_PROGRAMS_PER_SM = 4  # the parameter kernel: each program owns a [K_PAD, T_BLOCK] slot
_DE_ELEMENTS = 8192            # most de accumulator elements [M_PAD, K_PART] per activation program,
_DE_COLUMNS = 128              # and columns (K_PART): 256 spilled 16-40 B at M = 10


@triton.jit
def _pair_fields(i_ptr, j_ptr, start, P, offs_q):
    """Field indices ``fi, fj`` of pairs ``start + offs_q`` and the valid-pair mask."""
    idx = start + offs_q
    valid = idx < P
    return tl.load(i_ptr + idx, mask=valid, other=0), tl.load(j_ptr + idx, mask=valid, other=0), valid


@triton.jit
def _pair_rows(e_row, fi, fj, valid, k, cols):
    """Columns ``cols`` of the rows ``e_i, e_j`` ``[PAIR_BLOCK, len(cols)]`` (fp32) of the pairs."""
    mask = valid[:, None] & (cols[None, :] < k)
    ei = tl.load(e_row + fi[:, None] * k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    ej = tl.load(e_row + fj[:, None] * k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return ei, ej


@triton.jit
def _hidden_chunk(e_row, fi, fj, valid, w_ptr, b_ptr, k, t, t0, K_PAD: tl.constexpr,
                  K_BLOCK: tl.constexpr, T_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Pre-activations ``H [PAIR_BLOCK, T_BLOCK]`` of hidden units ``t0 + offs`` of the tile's pairs:
    ``sum over column chunks of p[:, chunk] W[chunk, cols]`` (``p`` re-formed per chunk from the
    pairs' rows; ``hi + lo`` half parts with half-precision weights: ``split_dot``), and the
    column mask."""
    cols = t0 + tl.arange(0, T_BLOCK)
    mask_c = cols < t
    H = tl.zeros([fi.shape[0], T_BLOCK], tl.float32)
    for k0 in range(0, K_PAD, K_BLOCK):
        rows = k0 + tl.arange(0, K_BLOCK)
        ei, ej = _pair_rows(e_row, fi, fj, valid, k, rows)
        w = tl.load(w_ptr + rows[:, None] * t + cols[None, :], mask=(rows[:, None] < k) & mask_c[None, :],
                    other=0.0)
        H += split_dot(ei * ej, w, PRECISION)
    return H + tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :], cols, mask_c


@triton.jit
def _scores(e_row, fi, fj, valid, w_ptr, b_ptr, h_ptr, k, t, K_PAD: tl.constexpr,
            K_BLOCK: tl.constexpr, T_PAD: tl.constexpr, T_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Scores ``s [PAIR_BLOCK]`` (``-inf`` on padded pairs), the attention MLP in chunks of
    ``T_BLOCK`` hidden units (W never needs to fit on chip whole)."""
    s = tl.zeros([fi.shape[0]], tl.float32)
    for t0 in range(0, T_PAD, T_BLOCK):
        H, cols, mask_c = _hidden_chunk(e_row, fi, fj, valid, w_ptr, b_ptr, k, t, t0, K_PAD, K_BLOCK,
                                        T_BLOCK, PRECISION)
        hvec = tl.load(h_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
        s += tl.sum(tl.maximum(H, 0.0) * hvec[None, :], axis=1)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _afm_pooling_fwd_kernel(e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, out_ptr, stats_ptr, s_ptr,
                            B, M, k, t, P, samples_per_program,
                            PAIR_BLOCK: tl.constexpr, K_PAD: tl.constexpr, K_BLOCK: tl.constexpr,
                            T_PAD: tl.constexpr, T_BLOCK: tl.constexpr, RETURN_SCORES: tl.constexpr,
                            PRECISION: tl.constexpr):
    """One program: samples ``[pid*samples_per_program, ...)``, one after another. Per sample it
    walks the pairs in tiles of ``PAIR_BLOCK`` with an online softmax and stores ``pooled [k]``,
    the fp32 statistics ``[k + 1]`` and, with ``RETURN_SCORES``, the raw scores ``[P]``."""
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_k = tl.arange(0, K_PAD)
    first = tl.cast(tl.program_id(0), tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * M * k
        m = tl.full([], float("-inf"), tl.float32)
        total = tl.zeros([], tl.float32)
        acc = tl.zeros([K_PAD], tl.float32)
        for start in range(0, P, PAIR_BLOCK):
            fi, fj, valid = _pair_fields(i_ptr, j_ptr, start, P, offs_q)
            s = _scores(e_row, fi, fj, valid, w_ptr, b_ptr, h_ptr, k, t, K_PAD, K_BLOCK, T_PAD, T_BLOCK,
                        PRECISION)
            if RETURN_SCORES:
                tl.store(s_ptr + n * P + start + offs_q, s, mask=valid)
            ei, ej = _pair_rows(e_row, fi, fj, valid, k, offs_k)
            m_new = tl.maximum(m, tl.max(s, axis=0))
            scale = tl.exp(m - m_new)
            weight = tl.exp(s - m_new)
            total = total * scale + tl.sum(weight, axis=0)
            acc = acc * scale + tl.sum(weight[:, None] * (ei * ej), axis=0)
            m = m_new
        pooled = acc / total
        tl.store(out_ptr + n * k + offs_k, pooled.to(out_ptr.dtype.element_ty), mask=offs_k < k)
        tl.store(stats_ptr + n * (k + 1) + offs_k, pooled, mask=offs_k < k)
        tl.store(stats_ptr + n * (k + 1) + k, m + tl.log(total))


@triton.jit
def _afm_pooling_bwd_activations_kernel(
        e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, stats_ptr, delta_ptr, g_ptr, ga_ptr, de_ptr, ds_ptr,
        B, M, k, t, P, samples_per_program,
        PAIR_BLOCK: tl.constexpr, M_PAD: tl.constexpr, K_PAD: tl.constexpr, K_BLOCK: tl.constexpr,
        K_PART: tl.constexpr, T_PAD: tl.constexpr, T_BLOCK: tl.constexpr, HAS_G: tl.constexpr,
        HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: embedding columns ``c0 = (pid % parts) * K_PART ..`` of ``de`` (``parts =
    K_PAD / K_PART``) for the samples ``[g*samples_per_program, ...)`` of group ``g = pid // parts``.
    Per sample and tile of pairs it recomputes the scores, stores ``ds`` (fp32; part 0) and
    back-propagates into its columns of ``de`` (accumulated on chip, ``[M_PAD, K_PART]``, stored once
    per sample). More than one part only where ``[M_PAD, K_PAD]`` would not fit (recomputing the
    MLP per part)."""
    parts = K_PAD // K_PART
    pid = tl.program_id(0)
    part, group = pid % parts, pid // parts
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_m = tl.arange(0, M_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_p = part * K_PART + tl.arange(0, K_PART)     # this program's columns
    mask_p = offs_p < k
    first = tl.cast(group, tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * M * k
        lse = tl.load(stats_ptr + n * (k + 1) + k)
        delta = tl.load(delta_ptr + n)
        if HAS_G:
            g = tl.load(g_ptr + n * k + offs_k, mask=offs_k < k, other=0.0).to(tl.float32)
            g_part = tl.load(g_ptr + n * k + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            g = tl.zeros([K_PAD], tl.float32)
            g_part = tl.zeros([K_PART], tl.float32)
        de = tl.zeros([M_PAD, K_PART], tl.float32)
        for start in range(0, P, PAIR_BLOCK):
            fi, fj, valid = _pair_fields(i_ptr, j_ptr, start, P, offs_q)
            s = _scores(e_row, fi, fj, valid, w_ptr, b_ptr, h_ptr, k, t, K_PAD, K_BLOCK, T_PAD, T_BLOCK,
                        PRECISION)
            ei, ej = _pair_rows(e_row, fi, fj, valid, k, offs_k)
            a = tl.exp(s - lse)
            da = tl.sum(ei * ej * g[None, :], axis=1)
            if HAS_GA:
                da += tl.load(ga_ptr + n * P + start + offs_q, mask=valid, other=0.0).to(tl.float32)
            ds = a * (da - delta)
            if part == 0:
                tl.store(ds_ptr + n * P + start + offs_q, ds, mask=valid)
            dp = a[:, None] * g_part[None, :]
            for t0 in range(0, T_PAD, T_BLOCK):
                H, cols, mask_c = _hidden_chunk(e_row, fi, fj, valid, w_ptr, b_ptr, k, t, t0, K_PAD,
                                                K_BLOCK, T_BLOCK, PRECISION)
                hvec = tl.load(h_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + offs_p[:, None] * t + cols[None, :],
                            mask=mask_p[:, None] & mask_c[None, :], other=0.0)
                dH = tl.where(H > 0.0, ds[:, None] * hvec[None, :], 0.0)
                dp = tl.dot(dH.to(w.dtype), tl.trans(w), dp, input_precision=PRECISION)
            ei, ej = _pair_rows(e_row, fi, fj, valid, k, offs_p)   # re-read: not live in the MLP
            hot_i = ((offs_m[:, None] == fi[None, :]) & valid[None, :]).to(tl.float32)
            hot_j = ((offs_m[:, None] == fj[None, :]) & valid[None, :]).to(tl.float32)
            de = tl.dot(hot_i, dp * ej, de, input_precision="tf32x3")
            de = tl.dot(hot_j, dp * ei, de, input_precision="tf32x3")
        tl.store(de_ptr + n * M * k + offs_m[:, None] * k + offs_p[None, :],
                 de.to(de_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & mask_p[None, :])


@triton.jit
def _afm_pooling_bwd_parameters_kernel(
        e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, ds_ptr, dw_ptr, db_ptr, dh_ptr,
        B, M, k, t, P, samples_per_program,
        PAIR_BLOCK: tl.constexpr, K_PAD: tl.constexpr, K_BLOCK: tl.constexpr, T_PAD: tl.constexpr,
        T_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """One program: hidden units ``t0 = (pid % chunks) * T_BLOCK ..`` for the samples of group
    ``g = pid // chunks`` (``[g*samples_per_program, ...)``). Per tile of pairs it recomputes that
    chunk of ``H``, forms ``dH = ds h * [H > 0]`` from the stored ``ds`` and accumulates ``dW, db,
    dh`` of the chunk on chip; stores them once, into slot ``g``."""
    chunks = T_PAD // T_BLOCK
    pid = tl.program_id(0)
    t0, group = (pid % chunks) * T_BLOCK, pid // chunks
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_k = tl.arange(0, K_PAD)
    offs_c = tl.arange(0, T_BLOCK)
    hvec = tl.load(h_ptr + t0 + offs_c, mask=t0 + offs_c < t, other=0.0).to(tl.float32)
    dw = tl.zeros([K_PAD, T_BLOCK], tl.float32)
    db = tl.zeros([T_BLOCK], tl.float32)
    dh = tl.zeros([T_BLOCK], tl.float32)
    first = tl.cast(group, tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * M * k
        for start in range(0, P, PAIR_BLOCK):
            fi, fj, valid = _pair_fields(i_ptr, j_ptr, start, P, offs_q)
            H, _, _ = _hidden_chunk(e_row, fi, fj, valid, w_ptr, b_ptr, k, t, t0, K_PAD, K_BLOCK, T_BLOCK,
                                    PRECISION)
            ds = tl.load(ds_ptr + n * P + start + offs_q, mask=valid, other=0.0)
            ei, ej = _pair_rows(e_row, fi, fj, valid, k, offs_k)
            dH = tl.where(H > 0.0, ds[:, None] * hvec[None, :], 0.0)
            dtype = w_ptr.dtype.element_ty
            dw = tl.dot(tl.trans((ei * ej).to(dtype)), dH.to(dtype), dw, input_precision=PRECISION)
            db += tl.sum(dH, axis=0)
            dh += tl.sum(tl.maximum(H, 0.0) * ds[:, None], axis=0)
    slot = tl.cast(group, tl.int64)
    tl.store(dw_ptr + slot * (K_PAD * T_PAD) + offs_k[:, None] * T_PAD + t0 + offs_c[None, :], dw)
    tl.store(db_ptr + slot * T_PAD + t0 + offs_c, db)
    tl.store(dh_ptr + slot * T_PAD + t0 + offs_c, dh)


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

KERNELS = ("fwd", "bwd_activations", "bwd_parameters")


def launch_config(kernel: str, batch: int, fields: int, dim: int, attention_dim: int, num_pairs: int,
                  dtype: torch.dtype, target: Target, *, return_attention: bool = False,
                  grads: Collection[str] = ("pooled",)) -> LaunchConfig:
    """The launch of ``kernel`` (one of ``KERNELS``) for ``e [batch, fields, dim]`` in ``dtype``,
    ``W [dim, attention_dim]`` and ``num_pairs`` pairs; ``grads``: which upstream gradients the
    activation kernel gets (``"pooled"``, ``"attention"``).

    Grids are capped (``persistent_programs``: 16 programs per SM for the forward and the
    activation kernel, 4 for the parameter kernel, whose grid is hidden-unit chunks x sample
    groups); each program loops over its ``samples_per_program`` samples (a runtime argument: the
    batch size does not recompile). On a GPU: tiles of pairs, column chunks and warps as
    ``_gpu_tiles``, chunks of 32 hidden units, the activation kernel's ``de`` in column parts of
    at most ``_DE_COLUMNS`` columns and ``_DE_ELEMENTS`` accumulators (two parts at k = 256: one
    part spilled 50-100 B at M = 39, 16-40 B at M = 10), no pipelining (Triton's 3 stages spilled
    the fp32 forward at k = 256, 212 B) and ``register_cap``. Interpreter: one tile of up to 256
    pairs, chunks of 16 columns and units, ``de`` in two parts from k = 32 on (so that tests
    exercise every chunk loop)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    k_pad, t_pad = next_pow2(dim), next_pow2(attention_dim)
    if target.interpreter:   # chunks of 16 columns and units: tests exercise both chunk loops
        pair_block, k_block, t_block, num_warps = min(256, next_pow2(num_pairs)), 16, 16, 4
    else:
        (pair_block, k_block, num_warps), t_block = _gpu_tiles(kernel, k_pad, num_pairs), 32
    meta = dict(PAIR_BLOCK=pair_block, K_PAD=k_pad, K_BLOCK=min(k_block, k_pad), T_PAD=t_pad,
                T_BLOCK=min(t_block, t_pad), PRECISION=dot_precision(dtype))
    options = dict(num_warps=num_warps, num_stages=1, maxnreg=register_cap(num_warps))
    if kernel == "fwd":
        return LaunchConfig(_afm_pooling_fwd_kernel,
                            (persistent_programs(batch, target, _FORWARD_PROGRAMS_PER_SM),),
                            {**meta, "RETURN_SCORES": return_attention}, **options)
    if kernel == "bwd_activations":
        m_pad = next_pow2(fields)
        if target.interpreter:   # two parts from k_pad = 32 on, so that tests exercise them
            k_part = max(16, k_pad // 2)
        else:
            k_part = min(k_pad, _DE_COLUMNS, _DE_ELEMENTS // m_pad)
        parts = k_pad // k_part
        groups = max(1, persistent_programs(batch, target, _FORWARD_PROGRAMS_PER_SM) // parts)
        return LaunchConfig(_afm_pooling_bwd_activations_kernel, (parts * groups,),
                            {**meta, "M_PAD": m_pad, "K_PART": k_part, "HAS_G": "pooled" in grads,
                             "HAS_GA": "attention" in grads}, **options)
    chunks = t_pad // meta["T_BLOCK"]
    groups = max(1, persistent_programs(batch, target, _BACKWARD_PROGRAMS_PER_SM) // chunks)
    return LaunchConfig(_afm_pooling_bwd_parameters_kernel, (chunks * groups,), meta, **options)


def _gpu_tiles(kernel: str, k_pad: int, num_pairs: int) -> tuple[int, int, int]:
    """``(PAIR_BLOCK, K_BLOCK, num_warps)`` on a GPU, from the static gate (sm_80/sm_90, k = t in
    {16, 64, 256}, M in {10, 39}). The activation kernel holds ``de`` and ``dp`` besides the MLP
    chunk: 16 pairs, 8 warps from k = 64 on (4 spilled 16-32 B), column chunks of 32 from k = 128
    on (64 spilled 12-40 B in half precision on sm_90). The parameter kernel: 32 pairs, 16 from
    k = 64 on (32 spilled 4 B, bf16 on sm_90; 16 need 168-220 registers instead of 230-255), 8
    warps for its ``[K_PAD, T_BLOCK]`` accumulator from k = 128 on. The forward: 32 pairs, 16 from
    k = 128 on (254 -> 180 registers at k = 256)."""
    wide = k_pad >= 128
    if kernel == "bwd_activations":
        return min(16, next_pow2(num_pairs)), 32 if wide else 64, 8 if k_pad >= 64 else 4
    if kernel == "bwd_parameters":
        return min(16 if k_pad >= 64 else 32, next_pow2(num_pairs)), 64, 8 if wide else 4
    return min(16 if wide else 32, next_pow2(num_pairs)), 64, 4


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _pair_columns(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cols = pairs.to(torch.int32).T.contiguous()
    return cols[0], cols[1]


def forward(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, projection: torch.Tensor,
            pairs: torch.Tensor, return_attention: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``e [B, M, k]``, ``weight [k, t]``, ``bias, projection [t]``, ``pairs [P, 2]`` (valid,
    ``P >= 1``) -> ``pooled [B, k]``, ``a [B, P]`` (absent, ``[0]``, unless ``return_attention``)
    and ``stats [B, k + 1]`` fp32 (unrounded pooled, log-sum-exp of the scores)."""
    e, weight, bias, projection = contiguous(e, weight, bias, projection)
    (B, M, k), t, P = e.shape, weight.shape[1], pairs.shape[0]
    pooled = torch.empty(B, k, dtype=e.dtype, device=e.device)
    stats = torch.empty(B, k + 1, dtype=torch.float32, device=e.device)
    scores = torch.empty(B, P if return_attention else 0, dtype=torch.float32, device=e.device)
    if B > 0:
        cfg = launch_config("fwd", B, M, k, t, P, e.dtype, target_of(e.device),
                            return_attention=return_attention)
        cfg.launch(e, weight, bias, projection, *_pair_columns(pairs), pooled, stats, scores,
                   B, M, k, t, P, triton.cdiv(B, cfg.grid[0]))
    a = (scores - stats[:, k:]).exp_().to(e.dtype) if return_attention else e.new_empty(0)
    return pooled, a, stats


def backward(grad_pooled: torch.Tensor | None, grad_a: torch.Tensor | None, e: torch.Tensor,
             weight: torch.Tensor, bias: torch.Tensor, projection: torch.Tensor, pairs: torch.Tensor,
             a: torch.Tensor, stats: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(de, dweight, dbias, dprojection)`` given ``grad_pooled [B, k]`` and
    ``grad_a [B, P]`` (either may be ``None`` = zero; ``a`` is the forward's attention output,
    needed only with ``grad_a``). Two launches: the activation kernel (``de`` and the score
    gradients ``ds [B, P]`` fp32), then the parameter kernel (per-group partials, summed by torch)."""
    e, weight, bias, projection, grad_pooled, grad_a = contiguous(e, weight, bias, projection,
                                                                  grad_pooled, grad_a)
    (B, M, k), t, P = e.shape, weight.shape[1], pairs.shape[0]
    if B == 0 or (grad_pooled is None and grad_a is None):
        return tuple(torch.zeros_like(x) for x in (e, weight, bias, projection))
    delta = torch.zeros(B, dtype=torch.float32, device=e.device)
    if grad_pooled is not None:
        delta += (stats[:, :k] * grad_pooled.float()).sum(1)
    if grad_a is not None:
        delta += (a.float() * grad_a.float()).sum(1)
    grads = [name for name, g in (("pooled", grad_pooled), ("attention", grad_a)) if g is not None]
    target, columns = target_of(e.device), _pair_columns(pairs)
    cfg = launch_config("bwd_activations", B, M, k, t, P, e.dtype, target, grads=grads)
    de = torch.empty_like(e)
    ds = torch.empty(B, P, dtype=torch.float32, device=e.device)
    groups = cfg.grid[0] // (cfg.meta["K_PAD"] // cfg.meta["K_PART"])
    cfg.launch(e, weight, bias, projection, *columns, stats, delta,
               e if grad_pooled is None else grad_pooled, e if grad_a is None else grad_a,
               de, ds, B, M, k, t, P, triton.cdiv(B, groups))
    cfg = launch_config("bwd_parameters", B, M, k, t, P, e.dtype, target)
    k_pad, t_pad = cfg.meta["K_PAD"], cfg.meta["T_PAD"]
    groups = cfg.grid[0] // (t_pad // cfg.meta["T_BLOCK"])
    dw = torch.empty(groups, k_pad, t_pad, dtype=torch.float32, device=e.device)  # every slot stored once
    db = torch.empty(groups, t_pad, dtype=torch.float32, device=e.device)
    dh = torch.empty(groups, t_pad, dtype=torch.float32, device=e.device)
    cfg.launch(e, weight, bias, projection, *columns, ds, dw, db, dh, B, M, k, t, P, triton.cdiv(B, groups))
    return (de, reduce_partials(dw)[:k, :t].to(weight.dtype).contiguous(),
            reduce_partials(db)[:t].to(bias.dtype), reduce_partials(dh)[:t].to(projection.dtype))
