"""Triton kernels for AFM attention pooling over field pairs (never materialising ``[B, P, k]``).

Per sample ``e [M, k]`` and pair list ``(i_q, j_q)``, ``q < P``:

    p_q = e_i * e_j                     [k]
    H_q = p_q W + b                     [t]
    s_q = relu(H_q) . h
    a   = softmax over pairs(s)         [P]
    pooled = sum_q a_q p_q              [k]

Layout: the grid (axis 0) has a capped number of programs; program ``pid`` owns the contiguous
chunk of ``samples_per_program`` consecutive samples and, per sample, loops over
tiles of ``PAIR_BLOCK`` pairs. A tile gathers the two rows of every pair from ``e`` (the ``M x k``
rows of one sample stay in L1/L2), forms ``p [PAIR_BLOCK, K_PAD]`` in registers and runs the
attention MLP on tensor cores in chunks of ``T_BLOCK`` hidden units: ``tl.dot`` ``[PAIR_BLOCK,
K_PAD] x [K_PAD, T_BLOCK]`` (fp32 accumulation, operands in the weights' dtype; k and t padded
to powers of two >= 16 and masked; the W chunk is re-read per tile from L2, so k = t = 256 fits
in shared memory). The softmax is online (running max, sum and ``[K_PAD]`` accumulator). Padded
pairs get score ``-inf``.

Forward outputs: ``pooled [B, k]`` (e's dtype), ``stats [B, k + 1]`` fp32 (``pooled`` unrounded
and the log-sum-exp ``lse`` of the scores) and, on request, the raw scores ``[B, P]`` in fp32 (the
launcher turns them into ``a = exp(s - lse)``).

Backward (one pass; saved: e, weights, stats): with upstream ``g [k]`` (pooled) and ``ga [P]``
(attention), ``delta = <pooled, g> + <a, ga>`` is computed by torch up front (from the fp32
``pooled``: a rounded one leaves a bias ``a_q * err`` in every ``ds_q``, which with one pair is the
whole weight gradient); per tile

    a_q   = exp(s_q - lse)
    ds_q  = a_q (p_q . g + ga_q - delta)
    dH_q  = ds_q h * [H_q > 0];   dh += ds_q relu(H_q);   db += dH_q;   dW += p_q^T dH_q
    dp_q  = a_q g + dH_q W^T;     de_i += dp_q * e_j;     de_j += dp_q * e_i

``de`` of a sample accumulates on chip in ``[M_PAD, K_PAD]`` by one-hot ``tl.dot``s (a pair's
fields are in the same program: no scatter, no atomics), stored once per sample. The one-hot
operand is exact in tf32, so these dots run as 3xTF32 on tensor cores (fp32-level accuracy:
only the ``lo * lo`` term of the values is dropped). ``dW, db, dh``
are added chunk by chunk into the program's own fp32 partial slot ``[programs, ...]`` (read-modify-
write by that program only), summed afterwards by torch: deterministic, no atomics. The backward
computes the MLP twice per tile (scores first, then the chunks' gradients)."""
from __future__ import annotations

from collections.abc import Collection

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, accumulate_slot, contiguous, dot_precision,
                                     next_pow2, partial_slots, persistent_programs, reduce_partials,
                                     register_cap, split_dot, target_of)

_FORWARD_PROGRAMS_PER_SM = 16  # no partial buffers: enough programs in flight to hide latency
_BACKWARD_PROGRAMS_PER_SM = 4  # each owns a [K_PAD, T_PAD] fp32 weight-gradient partial


@triton.jit
def _pair_tile(e_row, i_ptr, j_ptr, start, P, k, offs_q, offs_k):
    """Rows ``e_i, e_j [PAIR_BLOCK, K_PAD]`` (fp32) of pairs ``start + offs_q`` of one sample,
    their field indices and the valid-pair mask."""
    idx = start + offs_q
    valid = idx < P
    fi = tl.load(i_ptr + idx, mask=valid, other=0)
    fj = tl.load(j_ptr + idx, mask=valid, other=0)
    mask = valid[:, None] & (offs_k[None, :] < k)
    ei = tl.load(e_row + fi[:, None] * k + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    ej = tl.load(e_row + fj[:, None] * k + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    return ei, ej, fi, fj, valid


@triton.jit
def _hidden_chunk(p, w_ptr, b_ptr, k, t, t0, offs_k, offs_c, PRECISION: tl.constexpr):
    """Pre-activations ``H [PAIR_BLOCK, T_BLOCK]`` of columns ``t0 + offs_c``, with that chunk of
    ``W [K_PAD, T_BLOCK]`` (storage dtype; re-read per tile, an L2 hit) and the column mask.
    ``p`` (fp32) enters as ``hi + lo`` half parts with half-precision weights (``split_dot``)."""
    cols = t0 + offs_c
    mask_c = cols < t
    w = tl.load(w_ptr + offs_k[:, None] * t + cols[None, :],
                mask=(offs_k[:, None] < k) & mask_c[None, :], other=0.0)
    H = split_dot(p, w, PRECISION)
    H += tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    return H, w, cols, mask_c


@triton.jit
def _scores(p, w_ptr, b_ptr, h_ptr, k, t, valid, offs_k, offs_c, T_PAD: tl.constexpr,
            T_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Scores ``s [PAIR_BLOCK]`` (``-inf`` on padded pairs), the attention MLP in chunks of
    ``T_BLOCK`` hidden units (W never needs to fit on chip whole)."""
    s = tl.zeros([p.shape[0]], tl.float32)
    for t0 in range(0, T_PAD, T_BLOCK):
        H, _, cols, mask_c = _hidden_chunk(p, w_ptr, b_ptr, k, t, t0, offs_k, offs_c, PRECISION)
        hvec = tl.load(h_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
        s += tl.sum(tl.maximum(H, 0.0) * hvec[None, :], axis=1)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _afm_pooling_fwd_kernel(e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, out_ptr, stats_ptr, s_ptr,
                            B, M, k, t, P, samples_per_program,
                            PAIR_BLOCK: tl.constexpr, K_PAD: tl.constexpr, T_PAD: tl.constexpr,
                            T_BLOCK: tl.constexpr, RETURN_SCORES: tl.constexpr,
                            PRECISION: tl.constexpr):
    """One program: samples ``[pid*samples_per_program, ...)``, one after another. Per sample it
    walks the pairs in tiles of ``PAIR_BLOCK`` with an online softmax and stores ``pooled [k]``,
    the fp32 statistics ``[k + 1]`` and, with ``RETURN_SCORES``, the raw scores ``[P]``."""
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_k = tl.arange(0, K_PAD)
    offs_c = tl.arange(0, T_BLOCK)
    first = tl.cast(tl.program_id(0), tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * M * k
        m = tl.full([], float("-inf"), tl.float32)
        total = tl.zeros([], tl.float32)
        acc = tl.zeros([K_PAD], tl.float32)
        for start in range(0, P, PAIR_BLOCK):
            ei, ej, _, _, valid = _pair_tile(e_row, i_ptr, j_ptr, start, P, k, offs_q, offs_k)
            p = ei * ej
            s = _scores(p, w_ptr, b_ptr, h_ptr, k, t, valid, offs_k, offs_c, T_PAD, T_BLOCK, PRECISION)
            if RETURN_SCORES:
                tl.store(s_ptr + n * P + start + offs_q, s, mask=valid)
            m_new = tl.maximum(m, tl.max(s, axis=0))
            scale = tl.exp(m - m_new)
            weight = tl.exp(s - m_new)
            total = total * scale + tl.sum(weight, axis=0)
            acc = acc * scale + tl.sum(weight[:, None] * p, axis=0)
            m = m_new
        pooled = acc / total
        tl.store(out_ptr + n * k + offs_k, pooled.to(out_ptr.dtype.element_ty), mask=offs_k < k)
        tl.store(stats_ptr + n * (k + 1) + offs_k, pooled, mask=offs_k < k)
        tl.store(stats_ptr + n * (k + 1) + k, m + tl.log(total))


@triton.jit
def _afm_pooling_bwd_kernel(e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, stats_ptr, delta_ptr, g_ptr,
                            ga_ptr, de_ptr, dw_ptr, db_ptr, dh_ptr, B, M, k, t, P, samples_per_program,
                            PAIR_BLOCK: tl.constexpr, M_PAD: tl.constexpr, K_PAD: tl.constexpr,
                            T_PAD: tl.constexpr, T_BLOCK: tl.constexpr, HAS_G: tl.constexpr,
                            HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    """One program: samples ``[pid*samples_per_program, ...)``. Per sample and tile of pairs it
    recomputes the scores, back-propagates into ``de`` (accumulated on chip, ``[M_PAD, K_PAD]``,
    stored once per sample) and adds ``dW, db, dh`` into its own partial slots."""
    pid = tl.program_id(0)
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_m = tl.arange(0, M_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_c = tl.arange(0, T_BLOCK)
    mask_k = offs_k < k
    # this program's partial weight-gradient slots (padded layout, zero-initialised: no masks)
    dw_slot = dw_ptr + tl.cast(pid, tl.int64) * (K_PAD * T_PAD) + offs_k[:, None] * T_PAD
    dv_slot = tl.cast(pid, tl.int64) * T_PAD
    first = tl.cast(pid, tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * M * k
        lse = tl.load(stats_ptr + n * (k + 1) + k)
        delta = tl.load(delta_ptr + n)
        if HAS_G:
            g = tl.load(g_ptr + n * k + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        else:
            g = tl.zeros([K_PAD], tl.float32)
        de = tl.zeros([M_PAD, K_PAD], tl.float32)
        for start in range(0, P, PAIR_BLOCK):
            ei, ej, fi, fj, valid = _pair_tile(e_row, i_ptr, j_ptr, start, P, k, offs_q, offs_k)
            p = ei * ej
            s = _scores(p, w_ptr, b_ptr, h_ptr, k, t, valid, offs_k, offs_c, T_PAD, T_BLOCK, PRECISION)
            a = tl.exp(s - lse)
            da = tl.sum(p * g[None, :], axis=1)
            if HAS_GA:
                da += tl.load(ga_ptr + n * P + start + offs_q, mask=valid, other=0.0).to(tl.float32)
            ds = a * (da - delta)
            dp = a[:, None] * g[None, :]
            for t0 in range(0, T_PAD, T_BLOCK):
                H, w, cols, mask_c = _hidden_chunk(p, w_ptr, b_ptr, k, t, t0, offs_k, offs_c, PRECISION)
                hvec = tl.load(h_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
                dH = tl.where(H > 0.0, ds[:, None] * hvec[None, :], 0.0)
                dH_low = dH.to(w.dtype)
                dw = tl.load(dw_slot + cols[None, :])
                dw = tl.dot(tl.trans(p.to(w.dtype)), dH_low, dw, input_precision=PRECISION)
                tl.store(dw_slot + cols[None, :], dw)
                accumulate_slot(db_ptr + dv_slot + cols, tl.sum(dH, axis=0))
                accumulate_slot(dh_ptr + dv_slot + cols, tl.sum(tl.maximum(H, 0.0) * ds[:, None], axis=0))
                dp = tl.dot(dH_low, tl.trans(w), dp, input_precision=PRECISION)
            hot_i = ((offs_m[:, None] == fi[None, :]) & valid[None, :]).to(tl.float32)
            hot_j = ((offs_m[:, None] == fj[None, :]) & valid[None, :]).to(tl.float32)
            de = tl.dot(hot_i, dp * ej, de, input_precision="tf32x3")
            de = tl.dot(hot_j, dp * ei, de, input_precision="tf32x3")
        tl.store(de_ptr + n * M * k + offs_m[:, None] * k + offs_k[None, :],
                 de.to(de_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & mask_k[None, :])


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

def launch_config(batch: int, fields: int, dim: int, attention_dim: int, num_pairs: int,
                  dtype: torch.dtype, target: Target, *, backward: bool = False,
                  return_attention: bool = False, grads: Collection[str] = ("pooled",)) -> LaunchConfig:
    """The launch of the forward (or ``backward``) kernel for ``e [batch, fields, dim]`` in
    ``dtype``, ``W [dim, attention_dim]`` and ``num_pairs`` pairs; ``grads``: which upstream
    gradients the backward gets (``"pooled"``, ``"attention"``).

    The grid is capped (``persistent_programs``: 16 programs per SM forward, 4 backward); each
    program loops over its ``samples_per_program`` samples (a runtime argument: the batch size
    does not recompile). On a GPU: 64 pairs per tile forward, 32 backward, halved for wide rows
    (k >= 128, or k >= 64 in fp32, whose split dots hold more registers); hidden chunks of 64
    (32 for k >= 64); the backward without pipelining (its loop-invariant loads gain nothing from
    it) and every launch with ``register_cap``. Interpreter: one tile of up to 256 pairs, chunks
    of 16 (so that tests with ``t >= 32`` exercise the chunk loop)."""
    k_pad, t_pad = next_pow2(dim), next_pow2(attention_dim)
    per_sm = _BACKWARD_PROGRAMS_PER_SM if backward else _FORWARD_PROGRAMS_PER_SM
    programs = persistent_programs(batch, target, per_sm)
    if target.interpreter:
        pair_block, t_block, num_warps = min(256, next_pow2(num_pairs)), 16, 4
    else:
        fp32 = dtype == torch.float32
        wide = k_pad >= 128 or (fp32 and k_pad >= 64)
        pair_block = min((32 if backward else 64) // (2 if wide else 1), next_pow2(num_pairs))
        t_block = min(t_pad, 32 if k_pad >= 64 else 64)
        num_warps = 8 if k_pad >= 128 else 4
    meta = dict(PAIR_BLOCK=pair_block, K_PAD=k_pad, T_PAD=t_pad, T_BLOCK=t_block,
                PRECISION=dot_precision(dtype))
    if backward:
        return LaunchConfig(_afm_pooling_bwd_kernel, (programs,),
                            {**meta, "M_PAD": next_pow2(fields), "HAS_G": "pooled" in grads,
                             "HAS_GA": "attention" in grads}, num_warps, num_stages=1,
                            maxnreg=register_cap(num_warps))
    return LaunchConfig(_afm_pooling_fwd_kernel, (programs,), {**meta, "RETURN_SCORES": return_attention},
                        num_warps, maxnreg=register_cap(num_warps))


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
        cfg = launch_config(B, M, k, t, P, e.dtype, target_of(e.device), return_attention=return_attention)
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
    needed only with ``grad_a``)."""
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
    cfg = launch_config(B, M, k, t, P, e.dtype, target_of(e.device), backward=True, grads=grads)
    programs, k_pad, t_pad = cfg.grid[0], cfg.meta["K_PAD"], cfg.meta["T_PAD"]
    de = torch.empty_like(e)
    dw = partial_slots(programs, k_pad, t_pad, device=e.device)
    db = partial_slots(programs, t_pad, device=e.device)
    dh = partial_slots(programs, t_pad, device=e.device)
    cfg.launch(e, weight, bias, projection, *_pair_columns(pairs), stats, delta,
               e if grad_pooled is None else grad_pooled, e if grad_a is None else grad_a,
               de, dw, db, dh, B, M, k, t, P, triton.cdiv(B, programs))
    return (de, reduce_partials(dw)[:k, :t].to(weight.dtype).contiguous(),
            reduce_partials(db)[:t].to(bias.dtype), reduce_partials(dh)[:t].to(projection.dtype))
