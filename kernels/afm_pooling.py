"""Triton kernels for AFM attention pooling over field pairs (never materialising ``[B, P, k]``).

Per sample ``e [M, k]`` and pair list ``(i_q, j_q)``, ``q < P``:

    p_q = e_i * e_j                     [k]
    H_q = p_q W + b                     [t]
    s_q = relu(H_q) . h
    a   = softmax over pairs(s)         [P]
    pooled = sum_q a_q p_q              [k]

Layout: the grid (axis 0) has a capped number of programs; program ``pid`` owns the contiguous
chunk of ``SAMPLES`` samples ``[pid * SAMPLES, (pid + 1) * SAMPLES)`` and, per sample, loops over
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

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastint._backend import triton_interpreting

_INTERPRETER_PROGRAMS = 4  # the interpreter runs programs one after another: few, long ones
_FORWARD_PROGRAMS_PER_SM = 16  # no partial buffers: enough programs in flight to hide latency
_BACKWARD_PROGRAMS_PER_SM = 4  # each owns a [K_PAD, T_PAD] fp32 weight-gradient partial


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(n))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class _Config(NamedTuple):
    programs: int     # grid size (axis 0)
    samples: int      # SAMPLES: consecutive samples per program
    pair_block: int   # PAIR_BLOCK: pairs per tile
    t_block: int      # T_BLOCK: hidden units per chunk of the attention MLP
    num_warps: int


def _launch_config(batch: int, pairs: int, k_pad: int, t_pad: int, e: torch.Tensor,
                   backward: bool) -> _Config:
    """On a GPU: 64 pairs per tile in the forward, 32 in the backward, halved for wide rows (k >= 128,
    or k >= 64 in fp32, whose ieee dots run on FMA units and hold more registers); hidden chunks of
    64 (32 for fp32 with k >= 128); a capped grid (each program loops over its ``SAMPLES`` samples).
    Sized with ptxas for sm_90 (no spills at k = t = 16, shared memory within 228 KiB up to 256).
    Under the interpreter: a handful of programs, one tile of up to 256 pairs, chunks of 16 (so
    that tests with ``t >= 32`` exercise the chunk loop)."""
    if triton_interpreting() or e.device.type != "cuda":
        programs = min(batch, _INTERPRETER_PROGRAMS)
        return _Config(programs, triton.cdiv(batch, programs), min(256, _pow2(pairs)), 16, 4)
    fp32 = e.dtype == torch.float32
    wide = k_pad >= 128 or (fp32 and k_pad >= 64)
    block = (32 if backward else 64) // (2 if wide else 1)
    t_block = min(t_pad, 32 if fp32 and k_pad >= 128 else 64)
    per_sm = _BACKWARD_PROGRAMS_PER_SM if backward else _FORWARD_PROGRAMS_PER_SM
    programs = min(batch, per_sm * _sm_count(e.device))
    return _Config(programs, triton.cdiv(batch, programs), min(block, _pow2(pairs)), t_block,
                   8 if k_pad >= 128 else 4)


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

    With half-precision weights ``p`` (fp32) enters as ``hi + lo`` half parts: a rounded ``p``
    flips ReLUs near zero and moves the scores enough for 1e-2 gradient errors; one more dot.
    """
    cols = t0 + offs_c
    mask_c = cols < t
    w = tl.load(w_ptr + offs_k[:, None] * t + cols[None, :],
                mask=(offs_k[:, None] < k) & mask_c[None, :], other=0.0)
    if w.dtype == tl.float32:
        H = tl.dot(p, w, input_precision=PRECISION)
    else:
        hi = p.to(w.dtype)
        H = tl.dot(hi, w)
        H = tl.dot((p - hi.to(tl.float32)).to(w.dtype), w, H)
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
def _forward_kernel(e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, out_ptr, stats_ptr, s_ptr,
                    B, M, k, t, P, SAMPLES,
                    PAIR_BLOCK: tl.constexpr, K_PAD: tl.constexpr, T_PAD: tl.constexpr,
                    T_BLOCK: tl.constexpr, RETURN_SCORES: tl.constexpr, PRECISION: tl.constexpr):
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_k = tl.arange(0, K_PAD)
    offs_c = tl.arange(0, T_BLOCK)
    first = tl.cast(tl.program_id(0), tl.int64) * SAMPLES
    for n in range(first, tl.minimum(first + SAMPLES, B)):
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
def _backward_kernel(e_ptr, w_ptr, b_ptr, h_ptr, i_ptr, j_ptr, stats_ptr, delta_ptr, g_ptr, ga_ptr,
                     de_ptr, dw_ptr, db_ptr, dh_ptr, B, M, k, t, P, SAMPLES,
                     PAIR_BLOCK: tl.constexpr, M_PAD: tl.constexpr, K_PAD: tl.constexpr,
                     T_PAD: tl.constexpr, T_BLOCK: tl.constexpr, HAS_G: tl.constexpr,
                     HAS_GA: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    offs_q = tl.arange(0, PAIR_BLOCK)
    offs_m = tl.arange(0, M_PAD)
    offs_k = tl.arange(0, K_PAD)
    offs_c = tl.arange(0, T_BLOCK)
    mask_k = offs_k < k
    # this program's partial weight-gradient slots (padded layout, zero-initialised: no masks)
    dw_slot = dw_ptr + tl.cast(pid, tl.int64) * (K_PAD * T_PAD) + offs_k[:, None] * T_PAD
    dv_slot = tl.cast(pid, tl.int64) * T_PAD
    first = tl.cast(pid, tl.int64) * SAMPLES
    for n in range(first, tl.minimum(first + SAMPLES, B)):
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
                db = tl.load(db_ptr + dv_slot + cols) + tl.sum(dH, axis=0)
                tl.store(db_ptr + dv_slot + cols, db)
                dh = tl.load(dh_ptr + dv_slot + cols) + tl.sum(tl.maximum(H, 0.0) * ds[:, None], axis=0)
                tl.store(dh_ptr + dv_slot + cols, dh)
                dp = tl.dot(dH_low, tl.trans(w), dp, input_precision=PRECISION)
            hot_i = ((offs_m[:, None] == fi[None, :]) & valid[None, :]).to(tl.float32)
            hot_j = ((offs_m[:, None] == fj[None, :]) & valid[None, :]).to(tl.float32)
            de = tl.dot(hot_i, dp * ej, de, input_precision="tf32x3")
            de = tl.dot(hot_j, dp * ei, de, input_precision="tf32x3")
        tl.store(de_ptr + n * M * k + offs_m[:, None] * k + offs_k[None, :],
                 de.to(de_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & mask_k[None, :])


def _pair_columns(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cols = pairs.to(torch.int32).T.contiguous()
    return cols[0], cols[1]


def forward(e: torch.Tensor, w: torch.Tensor, b: torch.Tensor, h: torch.Tensor, pairs: torch.Tensor,
            return_attention: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``e [B, M, k]``, ``w [k, t]``, ``b, h [t]``, ``pairs [P, 2]`` (valid, ``P >= 1``) ->
    ``pooled [B, k]``, ``a [B, P]`` (``[B, 0]`` unless ``return_attention``), ``stats [B, k + 1]``
    fp32 (unrounded pooled, log-sum-exp of the scores)."""
    e, w, b, h = (x.contiguous() for x in (e, w, b, h))
    (B, M, k), t, P = e.shape, w.shape[1], pairs.shape[0]
    pooled = torch.empty(B, k, dtype=e.dtype, device=e.device)
    stats = torch.empty(B, k + 1, dtype=torch.float32, device=e.device)
    scores = torch.empty(B, P if return_attention else 0, dtype=torch.float32, device=e.device)
    if B > 0:
        fi, fj = _pair_columns(pairs)
        k_pad, t_pad = _pow2(k), _pow2(t)
        cfg = _launch_config(B, P, k_pad, t_pad, e, backward=False)
        _forward_kernel[(cfg.programs,)](
            e, w, b, h, fi, fj, pooled, stats, scores, B, M, k, t, P, cfg.samples,
            PAIR_BLOCK=cfg.pair_block, K_PAD=k_pad, T_PAD=t_pad, T_BLOCK=cfg.t_block,
            RETURN_SCORES=return_attention, PRECISION=_precision(e.dtype), num_warps=cfg.num_warps)
    a = (scores - stats[:, k:]).exp_().to(e.dtype)
    return pooled, a, stats


def backward(grad_pooled: torch.Tensor | None, grad_a: torch.Tensor | None, e: torch.Tensor,
             w: torch.Tensor, b: torch.Tensor, h: torch.Tensor, pairs: torch.Tensor,
             a: torch.Tensor, stats: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(de, dw, db, dh)`` given ``grad_pooled [B, k]`` and ``grad_a [B, P]`` (either
    may be ``None`` = zero; ``a`` is the forward's attention output, needed only with grad_a)."""
    e, w, b, h = (x.contiguous() for x in (e, w, b, h))
    (B, M, k), t, P = e.shape, w.shape[1], pairs.shape[0]
    if B == 0 or (grad_pooled is None and grad_a is None):
        return torch.zeros_like(e), torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(h)
    delta = torch.zeros(B, dtype=torch.float32, device=e.device)
    if grad_pooled is not None:
        grad_pooled = grad_pooled.contiguous()
        delta += (stats[:, :k] * grad_pooled.float()).sum(1)
    if grad_a is not None:
        grad_a = grad_a.contiguous()
        delta += (a.float() * grad_a.float()).sum(1)
    fi, fj = _pair_columns(pairs)
    m_pad, k_pad, t_pad = _pow2(M), _pow2(k), _pow2(t)
    cfg = _launch_config(B, P, k_pad, t_pad, e, backward=True)
    de = torch.empty_like(e)
    dw = torch.zeros(cfg.programs, k_pad, t_pad, dtype=torch.float32, device=e.device)
    db = torch.zeros(cfg.programs, t_pad, dtype=torch.float32, device=e.device)
    dh = torch.zeros(cfg.programs, t_pad, dtype=torch.float32, device=e.device)
    _backward_kernel[(cfg.programs,)](
        e, w, b, h, fi, fj, stats, delta, grad_pooled if grad_pooled is not None else e,
        grad_a if grad_a is not None else e, de, dw, db, dh, B, M, k, t, P, cfg.samples,
        PAIR_BLOCK=cfg.pair_block, M_PAD=m_pad, K_PAD=k_pad, T_PAD=t_pad, T_BLOCK=cfg.t_block,
        HAS_G=grad_pooled is not None, HAS_GA=grad_a is not None, PRECISION=_precision(e.dtype),
        num_warps=cfg.num_warps)
    return (de, dw.sum(0)[:k, :t].to(w.dtype).contiguous(), db.sum(0)[:t].to(b.dtype),
            dh.sum(0)[:t].to(h.dtype))
