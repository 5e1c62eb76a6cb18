"""Triton kernels for AIM's gated multi-function interactions (never materialising ``[B, P, d]``).

Per sample, embedding table ``t``, tuple ``q = (q_0, ..., q_{p-1})`` and function ``f`` (which
reads table ``t_f``), with rows ``x_r = E[t_f, q_r] [d]`` and ``prod = x_0 * ... * x_{p-1}``:

    inner   z = sum_k prod[k]
    kernel  z = sum_k kappa_q[k] prod[k]
    scalar  z = s_q sum_k prod[k]
    outer   z = prod_r u_r,   u_r = w_r . x_r

The host turns the active mask ``[F, P]`` into a *plan*: the list of active entries ``(f, q)``,
sorted by table, each with its fields, table, function code, output offset ``f P + q`` and tuple
``q`` (:func:`build_plan`). Pruned entries are not in the plan: they cost nothing.

Forward: program ``pid`` owns ``samples_per_program`` consecutive samples; per sample it walks the
plan in tiles of ``ENTRY_BLOCK`` entries, gathers the ``p`` rows of every entry into registers
``[ENTRY_BLOCK, D_PAD]`` (a sample's ``T M d`` values stay in L1/L2) and stores one ``z`` per entry.

Backward, two kernels (saved: only the inputs; the products are recomputed):

* ``_multi_function_interactions_bwd_embeddings_kernel`` — per sample and table, over that table's entries: with
  ``c = dz * kappa_q * s_q`` (the factors that apply),
  ``dx_r = c * prod_{r' != r} x_r'`` (outer entries: ``dz * prod_{r' != r} u_r' * w_r``).
  ``dE`` of a (sample, table) accumulates on chip in ``[M_PAD, D_PAD]`` by one-hot ``tl.dot``s
  (an entry's fields are in the same program: no scatter, no atomics) and is stored once; the
  one-hot operand is exact in tf32, so the dots run as 3xTF32 (fp32-level accuracy).
* ``_multi_function_interactions_bwd_parameters_kernel`` — program ``(chunk, tile)`` owns one tile of the entries that
  have parameters (kernel, scalar, outer) and loops over one chunk of the batch, accumulating in
  registers ``sum_b dz prod`` (-> ``dkappa_q``, and ``ds_q`` after summing over ``k``) and the
  outer entries' ``sum_b dz prod_{r' != r} u_r' x_r`` (-> ``dw_r``). Each program stores its own
  fp32 slot once (a tuple has at most one kernel and one scalar entry); torch sums the slots in a
  fixed order: deterministic, no atomics.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from fastint.kernels._common import (LaunchConfig, Target, contiguous, next_pow2,
                                     or_dummy, persistent_programs, reduce_partials, register_cap,
                                     target_of)

# function codes, in the order of fastint.reference.multi_function_interactions.FUNCTIONS
# (constexprs: the kernels read them; int() of one is the plain number)
INNER, KERNEL, SCALAR, OUTER = (tl.constexpr(c) for c in range(4))
MAX_ORDER = tl.constexpr(4)
# rows of a plan: the fields q_0..q_3 (unused ones 0), then the table, code, output offset, tuple
_TABLE, _CODE, _OUTPUT, _TUPLE = (tl.constexpr(r) for r in range(4, 8))
_PROGRAMS_PER_SM = 16          # forward and dE: no partial buffers
_PARAMETER_PROGRAMS_PER_SM = 4


# ----------------------------------------------------------------------------------------------
# the plan of active entries (host side)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """The active ``(f, q)`` entries of one call, as int32 device tensors.

    ``entries [8, A]``: rows 0-3 the tuple's fields (unused ones 0), 4 the table, 5 the function
    code, 6 the output offset ``f P + q``, 7 the tuple ``q``; sorted by table.
    ``table_starts [T + 1]``: table ``t``'s entries are ``table_starts[t] .. table_starts[t+1]``.
    ``parametric [8, A']``: the entries of functions with parameters (kernel, scalar, outer).
    """
    entries: torch.Tensor
    table_starts: torch.Tensor
    parametric: torch.Tensor
    functions: int
    tuples: int
    order: int
    tables: int

    @property
    def active(self) -> int:
        return self.entries.shape[1]


def build_plan(tuples: torch.Tensor, mask: torch.Tensor | None, codes: list[int], tables: int) -> Plan:
    """The plan of ``tuples [P, p]`` (valid fields), ``mask [F, P]`` (``None``: all active),
    function ``codes`` (``len F``) and ``tables`` (1 or F). Holes in ``mask`` cost one host sync."""
    num_tuples, order = tuples.shape
    functions, device = len(codes), tuples.device
    if mask is None:
        f, q = torch.meshgrid(torch.arange(functions, device=device),
                              torch.arange(num_tuples, device=device), indexing="ij")
        f, q = f.reshape(-1), q.reshape(-1)
    else:
        f, q = mask.nonzero(as_tuple=True)                     # row-major: sorted by f, then q
    table = f if tables > 1 else torch.zeros_like(f)           # t_f is monotonic in f
    code = torch.tensor(codes, device=device)[f]
    fields = torch.zeros(int(MAX_ORDER), f.numel(), dtype=torch.long, device=device)
    fields[:order] = tuples.long()[q].T
    entries = torch.cat([fields, torch.stack([table, code, f * num_tuples + q, q])]).to(torch.int32)
    counts = torch.bincount(table, minlength=tables)
    table_starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    parametric = entries[:, entries[int(_CODE)] != int(INNER)].contiguous()
    return Plan(entries.contiguous(), table_starts, parametric, functions, num_tuples, order, tables)


# ----------------------------------------------------------------------------------------------
# @triton.jit building blocks
# ----------------------------------------------------------------------------------------------

@triton.jit
def _row(base, plan_ptr, A, idx, valid, mask, r: tl.constexpr, d, ORDER: tl.constexpr):
    """Field ``f_r`` and row ``x_r [ENTRY_BLOCK, D_PAD]`` (fp32) of entries ``idx``; for
    ``r >= ORDER`` field 0 (never read) and ones (no factor in the products)."""
    field = tl.load(plan_ptr + r * A + idx, mask=valid & (r < ORDER), other=0)
    if r < ORDER:
        x = tl.load(base + field[:, None] * d, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros(mask.shape, tl.float32) + 1.0
    return field, x


@triton.jit
def _gather_rows(e_row, plan_ptr, A, idx, valid, M, d, offs_k, ORDER: tl.constexpr):
    """The ``ORDER`` rows ``x_r [ENTRY_BLOCK, D_PAD]`` (fp32; absent orders are ones) of entries
    ``idx`` of one sample, their fields ``f_r`` and the function codes."""
    mask = valid[:, None] & (offs_k[None, :] < d)
    table = tl.load(plan_ptr + _TABLE * A + idx, mask=valid, other=0)
    base = e_row + (table * M)[:, None] * d + offs_k[None, :]
    f0, x0 = _row(base, plan_ptr, A, idx, valid, mask, 0, d, ORDER)
    f1, x1 = _row(base, plan_ptr, A, idx, valid, mask, 1, d, ORDER)
    f2, x2 = _row(base, plan_ptr, A, idx, valid, mask, 2, d, ORDER)
    f3, x3 = _row(base, plan_ptr, A, idx, valid, mask, 3, d, ORDER)
    code = tl.load(plan_ptr + _CODE * A + idx, mask=valid, other=INNER)
    return x0, x1, x2, x3, f0, f1, f2, f3, code


@triton.jit
def _weights(kappa_ptr, s_ptr, plan_ptr, A, idx, valid, code, d, offs_k, ones,
             HAS_KAPPA: tl.constexpr, HAS_S: tl.constexpr):
    """``[ENTRY_BLOCK, D_PAD]`` factors of ``prod`` in ``z``: ``kappa_q`` on kernel entries,
    ``s_q`` on scalar entries, 1 elsewhere (``ones`` is a tile of ones)."""
    weights = ones
    if HAS_KAPPA or HAS_S:
        q = tl.load(plan_ptr + _TUPLE * A + idx, mask=valid, other=0)
        if HAS_KAPPA:
            is_kernel = valid & (code == KERNEL)
            weights = tl.load(kappa_ptr + q[:, None] * d + offs_k[None, :],
                              mask=is_kernel[:, None] & (offs_k[None, :] < d), other=1.0).to(tl.float32)
        if HAS_S:
            scale = tl.load(s_ptr + q, mask=valid & (code == SCALAR), other=1.0).to(tl.float32)
            weights = weights * scale[:, None]
    return weights


@triton.jit
def _projection(w_ptr, x, r: tl.constexpr, d, offs_k, ORDER: tl.constexpr):
    """``u_r = w_r . x_r`` ``[ENTRY_BLOCK]`` and ``w_r [D_PAD]`` (fp32, 0 beyond ``d``); for
    ``r >= ORDER`` ones (no factor in the products) and zeros."""
    w = tl.load(w_ptr + r * d + offs_k, mask=(offs_k < d) & (r < ORDER), other=0.0).to(tl.float32)
    if r < ORDER:
        u = tl.sum(x * w[None, :], axis=1)
    else:
        u = tl.sum(x, axis=1) * 0.0 + 1.0
    return u, w


@triton.jit
def _projections(w_ptr, x0, x1, x2, x3, d, offs_k, ORDER: tl.constexpr):
    """The outer function's ``u_r = w_r . x_r`` ``[ENTRY_BLOCK]`` (absent orders 1) and the
    rows ``w_r [D_PAD]`` (fp32, 0 beyond ``d``)."""
    u0, w0 = _projection(w_ptr, x0, 0, d, offs_k, ORDER)
    u1, w1 = _projection(w_ptr, x1, 1, d, offs_k, ORDER)
    u2, w2 = _projection(w_ptr, x2, 2, d, offs_k, ORDER)
    u3, w3 = _projection(w_ptr, x3, 3, d, offs_k, ORDER)
    return u0, u1, u2, u3, w0, w1, w2, w3


@triton.jit
def _accumulate_rows(de, fields, grad, valid, offs_m):
    """``de[fields[i]] += grad[i]`` for the valid entries ``i`` of a tile, as one-hot ``tl.dot``s
    ``[M_PAD, ENTRY_BLOCK] x [ENTRY_BLOCK, D_PAD]``. The one-hot factor is exact in TF32, so two TF32
    dots, of ``grad``'s TF32 part and of its remainder, are as accurate as 3xTF32 (whose third
    product, of the one-hot's zero remainder, is skipped)."""
    hot = ((offs_m[:, None] == fields[None, :]) & valid[None, :]).to(tl.float32)
    high = (grad.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    de = tl.dot(hot, high, de, input_precision="tf32")
    return tl.dot(hot, grad - high, de, input_precision="tf32")


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _multi_function_interactions_fwd_kernel(e_ptr, plan_ptr, kappa_ptr, s_ptr, w_ptr, z_ptr, B, T, M, d, A, FP,
                    samples_per_program, ENTRY_BLOCK: tl.constexpr, D_PAD: tl.constexpr,
                    ORDER: tl.constexpr, HAS_KAPPA: tl.constexpr, HAS_S: tl.constexpr,
                    HAS_W: tl.constexpr):
    """One program: samples ``[pid*samples_per_program, ...)``; per sample, every active entry in
    tiles of ``ENTRY_BLOCK``: gather, multiply, reduce, store ``z`` at its ``f P + q``."""
    offs_a = tl.arange(0, ENTRY_BLOCK)
    offs_k = tl.arange(0, D_PAD)
    first = tl.cast(tl.program_id(0), tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * T * M * d
        for start in range(0, A, ENTRY_BLOCK):
            idx = start + offs_a
            valid = idx < A
            x0, x1, x2, x3, _, _, _, _, code = _gather_rows(e_row, plan_ptr, A, idx, valid, M, d,
                                                            offs_k, ORDER)
            weights = _weights(kappa_ptr, s_ptr, plan_ptr, A, idx, valid, code, d, offs_k,
                               tl.zeros_like(x0) + 1.0, HAS_KAPPA, HAS_S)
            z = tl.sum(x0 * x1 * x2 * x3 * weights, axis=1)
            if HAS_W:
                u0, u1, u2, u3, _, _, _, _ = _projections(w_ptr, x0, x1, x2, x3, d, offs_k, ORDER)
                z = tl.where(code == OUTER, u0 * u1 * u2 * u3, z)
            out = tl.load(plan_ptr + _OUTPUT * A + idx, mask=valid, other=0)
            tl.store(z_ptr + n * FP + out, z.to(z_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _multi_function_interactions_bwd_embeddings_kernel(e_ptr, plan_ptr, starts_ptr, kappa_ptr, s_ptr, w_ptr, dz_ptr, de_ptr,
                                B, T, M, d, A, FP, samples_per_program, ENTRY_BLOCK: tl.constexpr,
                                M_PAD: tl.constexpr, D_PAD: tl.constexpr, ORDER: tl.constexpr,
                                HAS_KAPPA: tl.constexpr, HAS_S: tl.constexpr, HAS_W: tl.constexpr):
    """One program: samples ``[pid*samples_per_program, ...)``; per sample and table, the table's
    entries in tiles: ``dE [M_PAD, D_PAD]`` accumulated on chip, stored once."""
    offs_a = tl.arange(0, ENTRY_BLOCK)
    offs_m = tl.arange(0, M_PAD)
    offs_k = tl.arange(0, D_PAD)
    store_mask = (offs_m[:, None] < M) & (offs_k[None, :] < d)
    first = tl.cast(tl.program_id(0), tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        e_row = e_ptr + n * T * M * d
        for t in range(0, T):
            end = tl.load(starts_ptr + t + 1)
            de = tl.zeros([M_PAD, D_PAD], tl.float32)
            for start in range(tl.load(starts_ptr + t), end, ENTRY_BLOCK):
                idx = start + offs_a
                valid = idx < end
                x0, x1, x2, x3, f0, f1, f2, f3, code = _gather_rows(e_row, plan_ptr, A, idx, valid, M, d,
                                                                    offs_k, ORDER)
                dz = tl.load(dz_ptr + n * FP + tl.load(plan_ptr + _OUTPUT * A + idx, mask=valid, other=0),
                             mask=valid, other=0.0).to(tl.float32)
                c = _weights(kappa_ptr, s_ptr, plan_ptr, A, idx, valid, code, d, offs_k,
                             tl.zeros_like(x0) + 1.0, HAS_KAPPA, HAS_S) * dz[:, None]
                g0, g1, g2, g3 = c * (x1 * x2 * x3), c * (x0 * x2 * x3), c * (x0 * x1 * x3), c * (x0 * x1 * x2)
                if HAS_W:
                    u0, u1, u2, u3, w0, w1, w2, w3 = _projections(w_ptr, x0, x1, x2, x3, d, offs_k, ORDER)
                    outer = (code == OUTER)[:, None]
                    g0 = tl.where(outer, (dz * u1 * u2 * u3)[:, None] * w0[None, :], g0)
                    g1 = tl.where(outer, (dz * u0 * u2 * u3)[:, None] * w1[None, :], g1)
                    g2 = tl.where(outer, (dz * u0 * u1 * u3)[:, None] * w2[None, :], g2)
                    g3 = tl.where(outer, (dz * u0 * u1 * u2)[:, None] * w3[None, :], g3)
                de = _accumulate_rows(de, f0, g0, valid, offs_m)
                de = _accumulate_rows(de, f1, g1, valid, offs_m)
                if ORDER > 2:
                    de = _accumulate_rows(de, f2, g2, valid, offs_m)
                if ORDER > 3:
                    de = _accumulate_rows(de, f3, g3, valid, offs_m)
            tl.store(de_ptr + (n * T + t) * M * d + offs_m[:, None] * d + offs_k[None, :],
                     de.to(de_ptr.dtype.element_ty), mask=store_mask)


@triton.jit
def _multi_function_interactions_bwd_parameters_kernel(e_ptr, plan_ptr, kappa_ptr, s_ptr, w_ptr, dz_ptr, dkappa_ptr, ds_ptr,
                                dw_ptr, B, T, M, d, A, P, FP, samples_per_program,
                                ENTRY_BLOCK: tl.constexpr, D_PAD: tl.constexpr, ORDER: tl.constexpr,
                                HAS_KAPPA: tl.constexpr, HAS_S: tl.constexpr, HAS_W: tl.constexpr):
    """One program ``(chunk, tile)``: the parametric entries of one tile over the samples of one
    chunk; stores the chunk's ``dkappa`` rows, ``ds`` entries and ``dw`` partial (its own slots)."""
    chunk = tl.program_id(0)
    tile = tl.program_id(1)
    offs_a = tl.arange(0, ENTRY_BLOCK)
    offs_k = tl.arange(0, D_PAD)
    mask_k = offs_k < d
    idx = tile * ENTRY_BLOCK + offs_a
    valid = idx < A
    out = tl.load(plan_ptr + _OUTPUT * A + idx, mask=valid, other=0)
    acc = tl.zeros([ENTRY_BLOCK, D_PAD], tl.float32)
    dw0 = tl.zeros([D_PAD], tl.float32)
    dw1 = tl.zeros([D_PAD], tl.float32)
    dw2 = tl.zeros([D_PAD], tl.float32)
    dw3 = tl.zeros([D_PAD], tl.float32)
    first = tl.cast(chunk, tl.int64) * samples_per_program
    for n in range(first, tl.minimum(first + samples_per_program, B)):
        x0, x1, x2, x3, _, _, _, _, code = _gather_rows(e_ptr + n * T * M * d, plan_ptr, A, idx, valid,
                                                        M, d, offs_k, ORDER)
        dz = tl.load(dz_ptr + n * FP + out, mask=valid, other=0.0).to(tl.float32)
        acc += dz[:, None] * (x0 * x1 * x2 * x3)
        if HAS_W:
            u0, u1, u2, u3, _, _, _, _ = _projections(w_ptr, x0, x1, x2, x3, d, offs_k, ORDER)
            dzo = tl.where(code == OUTER, dz, 0.0)
            dw0 += tl.sum((dzo * u1 * u2 * u3)[:, None] * x0, axis=0)
            dw1 += tl.sum((dzo * u0 * u2 * u3)[:, None] * x1, axis=0)
            dw2 += tl.sum((dzo * u0 * u1 * u3)[:, None] * x2, axis=0)
            dw3 += tl.sum((dzo * u0 * u1 * u2)[:, None] * x3, axis=0)
    code = tl.load(plan_ptr + _CODE * A + idx, mask=valid, other=INNER)
    q = tl.load(plan_ptr + _TUPLE * A + idx, mask=valid, other=0)
    if HAS_KAPPA:
        is_kernel = valid & (code == KERNEL)
        tl.store(dkappa_ptr + (chunk * P + q)[:, None] * d + offs_k[None, :], acc,
                 mask=is_kernel[:, None] & mask_k[None, :])
    if HAS_S:
        tl.store(ds_ptr + chunk * P + q, tl.sum(acc, axis=1), mask=valid & (code == SCALAR))
    if HAS_W:
        slot = dw_ptr + (tl.cast(chunk, tl.int64) * tl.num_programs(1) + tile) * MAX_ORDER * d + offs_k
        tl.store(slot, dw0, mask=mask_k)
        tl.store(slot + d, dw1, mask=mask_k)
        if ORDER > 2:
            tl.store(slot + 2 * d, dw2, mask=mask_k)
        if ORDER > 3:
            tl.store(slot + 3 * d, dw3, mask=mask_k)


# ----------------------------------------------------------------------------------------------
# launch configuration (pure Python: inspectable and compilable without a GPU)
# ----------------------------------------------------------------------------------------------

KERNELS = ("fwd", "bwd_embeddings", "bwd_parameters")


def launch_config(kernel: str, batch: int, fields: int, dim: int, order: int, active: int,
                  dtype: torch.dtype, target: Target, *, has_kappa: bool, has_s: bool,
                  has_w: bool) -> LaunchConfig:
    """The launch of ``kernel`` (one of ``KERNELS``) for ``E [batch, T, fields, dim]`` in ``dtype``,
    tuples of ``order`` and ``active`` planned entries (for ``bwd_parameters``: the parametric
    ones); ``has_*``: which function parameters are present.

    GPU (sizes from the static gate: the smallest that do not spill): forward and dE grids are
    persistent (16 programs per SM) over the samples; forward tiles of 64 entries, 32 when
    "wide" (order >= 3 or ``D_PAD >= 64``: more rows per entry in registers); dE tiles of 16 (its
    one-hot dots hold ``[M_PAD, D_PAD]`` accumulators), with 8 warps when wide; parameter tiles of
    32, 16 when wide, on a ``(chunks, tiles)`` grid of about 4 programs per SM. Every launch with
    ``register_cap``; the backward kernels without pipelining. Interpreter: few programs, tiles of
    up to 256 entries (64 for the parameter kernel), two batch chunks (so that tests exercise the
    slot reduction)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    d_pad = next_pow2(dim)
    meta = dict(D_PAD=d_pad, ORDER=order, HAS_KAPPA=has_kappa, HAS_S=has_s, HAS_W=has_w)
    wide = order > 2 or d_pad >= 64
    num_warps = 4
    if target.interpreter:
        block = min(64 if kernel == "bwd_parameters" else 256, next_pow2(active))
    elif kernel == "fwd":
        block = min(32 if wide else 64, next_pow2(active))
    else:
        block = min(16 if kernel == "bwd_embeddings" or wide else 32, next_pow2(active))
        num_warps = 8 if kernel == "bwd_embeddings" and wide else 4
    options = dict(num_warps=num_warps, maxnreg=register_cap(num_warps))
    if kernel == "fwd":
        return LaunchConfig(_multi_function_interactions_fwd_kernel, (persistent_programs(batch, target, _PROGRAMS_PER_SM),),
                            {**meta, "ENTRY_BLOCK": block}, **options)
    if kernel == "bwd_embeddings":
        return LaunchConfig(_multi_function_interactions_bwd_embeddings_kernel,
                            (persistent_programs(batch, target, _PROGRAMS_PER_SM),),
                            {**meta, "ENTRY_BLOCK": block, "M_PAD": next_pow2(fields)}, num_stages=1,
                            **options)
    tiles = triton.cdiv(active, block)
    if target.interpreter:
        chunks = min(2, max(batch, 1))
    else:
        chunks = max(1, min(triton.cdiv(_PARAMETER_PROGRAMS_PER_SM * target.sm_count, tiles),
                            triton.cdiv(batch, 64)))
    return LaunchConfig(_multi_function_interactions_bwd_parameters_kernel, (chunks, tiles), {**meta, "ENTRY_BLOCK": block},
                        num_stages=1, **options)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _config(kernel: str, embeddings: torch.Tensor, plan: Plan, active: int, kappa, s, w) -> LaunchConfig:
    B, _, M, d = embeddings.shape
    return launch_config(kernel, B, M, d, plan.order, active, embeddings.dtype, target_of(embeddings.device),
                         has_kappa=kappa is not None, has_s=s is not None, has_w=w is not None)


def forward(embeddings: torch.Tensor, plan: Plan, kappa: torch.Tensor | None, s: torch.Tensor | None,
            w: torch.Tensor | None) -> torch.Tensor:
    """``embeddings [B, T, M, d]``, the ``plan`` of the active entries and the functions'
    parameters (``None`` when absent) -> ``Z [B, F, P]`` (0 on inactive entries)."""
    embeddings, kappa, s, w = contiguous(embeddings, kappa, s, w)
    B, T, M, d = embeddings.shape
    F, P = plan.functions, plan.tuples
    complete = plan.active == F * P
    z = (torch.empty if complete else torch.zeros)(B, F, P, dtype=embeddings.dtype, device=embeddings.device)
    if B > 0 and plan.active > 0:
        cfg = _config("fwd", embeddings, plan, plan.active, kappa, s, w)
        cfg.launch(embeddings, plan.entries, *or_dummy(kappa, s, w, dummy=embeddings), z,
                   B, T, M, d, plan.active, F * P, triton.cdiv(B, cfg.grid[0]))
    return z


def backward(grad_z: torch.Tensor, embeddings: torch.Tensor, plan: Plan, kappa: torch.Tensor | None,
             s: torch.Tensor | None, w: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dE [B, T, M, d], dkappa [P, d], ds [P], dw [p, d])`` of ``sum(Z * grad_z)``
    (``None`` for absent parameters), each in its input's dtype."""
    grad_z, embeddings, kappa, s, w = contiguous(grad_z, embeddings, kappa, s, w)
    B, T, M, d = embeddings.shape
    F, P, order = plan.functions, plan.tuples, plan.order
    device = embeddings.device
    grad_e = torch.empty_like(embeddings)
    params = or_dummy(kappa, s, w, dummy=embeddings)
    if B == 0 or plan.active == 0:
        grad_e.zero_()
    else:
        cfg = _config("bwd_embeddings", embeddings, plan, plan.active, kappa, s, w)
        cfg.launch(embeddings, plan.entries, plan.table_starts, *params, grad_z, grad_e,
                   B, T, M, d, plan.active, F * P, triton.cdiv(B, cfg.grid[0]))
    if kappa is None and s is None and w is None:
        return grad_e, None, None, None
    parametric = plan.parametric.shape[1]
    cfg = _config("bwd_parameters", embeddings, plan, max(parametric, 1), kappa, s, w)
    chunks, tiles = cfg.grid
    dkappa = torch.zeros(chunks, P, d, dtype=torch.float32, device=device)
    ds = torch.zeros(chunks, P, dtype=torch.float32, device=device)
    dw = torch.zeros(chunks, tiles, int(MAX_ORDER), d, dtype=torch.float32, device=device)
    if B > 0 and parametric > 0:
        cfg.launch(embeddings, plan.parametric, *params, grad_z, dkappa, ds, dw,
                   B, T, M, d, parametric, P, F * P, triton.cdiv(B, chunks))
    return (grad_e,
            None if kappa is None else reduce_partials(dkappa).to(kappa.dtype),
            None if s is None else reduce_partials(ds).to(s.dtype),
            None if w is None else reduce_partials(dw.flatten(0, 1))[:order].to(w.dtype))
