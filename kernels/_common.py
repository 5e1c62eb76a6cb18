"""The one launch policy and the shared building blocks of every fastint Triton kernel.

Conventions every kernel file follows:

* Kernels are named ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel`` (a profiler trace names the op);
  UPPER_CASE arguments are ``tl.constexpr`` (tile sizes, presence flags), lower_case ones are
  runtime values (sizes, scalars, loop counts).
* The batch is on grid axis 0 only (axes 1 and 2 are capped at 65,535).
* Each op module exposes ``launch_config(...)``: a pure function of the shapes, the dtype and a
  :class:`Target` that returns the :class:`LaunchConfig` its launcher uses, so the configuration
  can be inspected, tested and compiled ahead of time without a GPU.
* An absent optional tensor is passed as a dummy pointer (:func:`or_dummy`); the kernel is
  specialised on its presence by a ``HAS_*`` constexpr and never reads it.
* Weight gradients are reduced over the batch deterministically: each program adds into its own
  fp32 slot of a :func:`partial_slots` buffer, and :func:`reduce_partials` sums the slots in a
  fixed order afterwards (no float atomics).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping

import torch
import triton
import triton.language as tl

# Under the interpreter every program runs one after another in Python (~4 ms each before any
# work): launch a handful of large programs instead of a GPU-sized grid.
INTERPRETER_PROGRAMS = 4


# ----------------------------------------------------------------------------------------------
# where a kernel runs
# ----------------------------------------------------------------------------------------------

def interpreter_enabled() -> bool:
    """True when Triton runs kernels on its CPU interpreter (``TRITON_INTERPRET=1``, which must be
    set before ``triton`` is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclasses.dataclass(frozen=True)
class Target:
    """What a launch configuration depends on besides the shapes and the dtype.

    ``interpreter``: the CPU interpreter (sizes chosen for few, large programs); otherwise a CUDA
    device of compute ``capability`` with ``sm_count`` multiprocessors (persistent grids are a few
    programs per SM). Build one by hand to inspect or compile a configuration ahead of time, e.g.
    ``Target(interpreter=False, sm_count=132, capability=(9, 0))`` for an H100/H200.
    """
    interpreter: bool
    sm_count: int = 1
    capability: tuple[int, int] = (0, 0)


INTERPRETER = Target(interpreter=True)


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(interpreter=False, sm_count=props.multi_processor_count,
                  capability=(props.major, props.minor))


def target_of(device: torch.device) -> Target:
    """The :class:`Target` for tensors on ``device`` (the one interpreter policy): the interpreter
    for non-CUDA tensors or when ``TRITON_INTERPRET=1``, else that CUDA device (cached)."""
    if device.type != "cuda" or interpreter_enabled():
        return INTERPRETER
    return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())


# ----------------------------------------------------------------------------------------------
# sizes, precision, grids
# ----------------------------------------------------------------------------------------------

def next_pow2(n: int, floor: int = 16) -> int:
    """The next power of two ``>= n``, at least ``floor`` (``tl.dot`` needs dimensions >= 16)."""
    return max(floor, triton.next_power_of_2(n))


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of fp32 ``tl.dot``: ``"tf32"`` when
    ``torch.backends.cuda.matmul.allow_tf32`` is set (as for torch's matmuls), else ``"tf32x3"``:
    three TF32 tensor-core products per dot (``hi*hi + hi*lo + lo*hi``), fp32 accumulation, about
    5e-7 relative error per product, instead of ``"ieee"`` FMA loops that hold whole operands in
    registers and spill (static audit). Half-precision dots ignore it (exact products)."""
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
    return "ieee"


def register_cap(num_warps: int) -> int:
    """``maxnreg`` for a program of ``num_warps`` warps: the most registers per thread (at most
    255) with which one program still fits an SM's 64K registers. Without a cap ptxas sometimes
    settles for 32 registers and spills kilobytes per thread (static audit)."""
    return min(255, 65536 // (32 * num_warps))


def interpreter_samples(batch: int, cap: int = 64) -> int:
    """Samples per program under the interpreter: about ``INTERPRETER_PROGRAMS`` programs in all
    (a power of two, at most ``cap``)."""
    return min(cap, triton.next_power_of_2(triton.cdiv(max(batch, 1), INTERPRETER_PROGRAMS)))


def persistent_programs(num_tiles: int, target: Target, per_sm: int) -> int:
    """Grid of a kernel whose programs loop over ``num_tiles`` tiles: ``per_sm`` programs per SM
    on a GPU; under the interpreter half as many programs as tiles, so that tests exercise both
    the tile loop and the per-program accumulation."""
    if target.interpreter:
        return max(1, triton.cdiv(num_tiles, 2))
    return max(1, min(num_tiles, per_sm * target.sm_count))


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """One kernel launch, fully determined before launching: ``kernel[grid](*args, **meta,
    num_warps=..., num_stages=..., maxnreg=...)``. ``meta`` holds the kernel's constexpr arguments
    (tile sizes, presence flags, ``PRECISION``); ``num_stages`` ``None`` keeps Triton's default
    pipelining, ``maxnreg`` ``None`` leaves the register count to ptxas."""
    kernel: triton.JITFunction
    grid: tuple[int, ...]
    meta: Mapping[str, int | bool | str]
    num_warps: int
    num_stages: int | None = None
    maxnreg: int | None = None

    def compile_options(self) -> dict[str, int]:
        """The launch's compiler options (``num_warps`` and the ones that are set)."""
        options = {"num_warps": self.num_warps}
        for name in ("num_stages", "maxnreg"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options

    def launch(self, *args) -> None:
        """Launch ``kernel`` on the runtime arguments ``args`` (tensors and scalars, in order)."""
        self.kernel[self.grid](*args, **self.meta, **self.compile_options())

    def describe(self) -> str:
        """One line for logs and tables: kernel name, grid, compiler options and meta-parameters."""
        options = " ".join(f"{k}={v}" for k, v in self.compile_options().items())
        meta = " ".join(f"{k}={v}" for k, v in self.meta.items())
        return f"{self.kernel.__name__} grid={self.grid} {options} {meta}"


# ----------------------------------------------------------------------------------------------
# host-side helpers
# ----------------------------------------------------------------------------------------------

def contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each tensor made contiguous (kernels index with dense strides); ``None`` stays ``None``."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def or_dummy(*tensors: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Absent optional tensors become ``dummy`` (never read: the kernel is specialised on presence)."""
    return tuple(dummy if t is None else t for t in tensors)


def partial_slots(programs: int, *shape: int, device: torch.device) -> torch.Tensor:
    """Zeroed fp32 weight-gradient partials ``[programs, *shape]``: program ``p`` owns slot ``p``.

    ``shape`` is the padded tile shape the kernel adds (``accumulate_slot``), so every offset a
    program touches is inside its own slot and no mask is needed."""
    return torch.zeros(programs, *shape, dtype=torch.float32, device=device)


def reduce_partials(slots: torch.Tensor) -> torch.Tensor:
    """Sum of the per-program slots (a fixed-order reduction: bit-identical across runs)."""
    return slots.sum(0)


# ----------------------------------------------------------------------------------------------
# shared @triton.jit building blocks
# ----------------------------------------------------------------------------------------------

@triton.jit
def mm(a, b, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` (2-D, or batched 3-D) with both operands cast to ``DTYPE``, fp32 accumulation;
    fp32 operands use ``PRECISION`` (``"ieee"``, ``"tf32"`` or ``"tf32x3"``)."""
    if DTYPE == tl.float32:
        return tl.dot(a.to(DTYPE), b.to(DTYPE), input_precision=PRECISION)
    return tl.dot(a.to(DTYPE), b.to(DTYPE))


@triton.jit
def split_dot(a, b, PRECISION: tl.constexpr):
    """``a @ b`` for fp32 ``a`` and ``b`` in its storage dtype, fp32 accumulation.

    fp32 ``b``: one dot at ``PRECISION``. Half-precision ``b``: ``a`` enters as ``hi + lo``
    half-precision parts (two dots), so rounding ``a`` to half precision does not flip the ReLUs
    and softmax weights that follow the projections (one dot more, gradients ~10x more accurate).
    """
    if b.dtype == tl.float32:
        return tl.dot(a, b, input_precision=PRECISION)
    hi = a.to(b.dtype)
    acc = tl.dot(hi, b)
    return tl.dot((a - hi.to(tl.float32)).to(b.dtype), b, acc)


@triton.jit
def masked_softmax(scores, mask, AXIS: tl.constexpr):
    """Softmax of fp32 ``scores`` along ``AXIS`` over the entries where ``mask`` (broadcast to
    ``scores``) is true; masked entries get probability 0. Every slice needs one true entry."""
    scores = tl.where(mask, scores, float("-inf"))
    p = tl.exp(scores - tl.expand_dims(tl.max(scores, axis=AXIS), AXIS))
    return p / tl.expand_dims(tl.sum(p, axis=AXIS), AXIS)


@triton.jit
def accumulate_slot(ptrs, value):
    """``*ptrs += value`` on this program's own fp32 partial slot (see :func:`partial_slots`:
    the slot has exactly the padded tile shape, so the offsets are in bounds; one writer per slot)."""
    tl.store(ptrs, tl.load(ptrs) + value)
