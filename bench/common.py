"""What every benchmark suite shares: the device, the swept sizes and dtypes, random leaves, the
standard providers and ``measure``, which records the case in the form ``fastint.bench_report``
reads.

``measure(benchmark, fn, op=..., provider=..., mode=..., dtype=..., shape={...})`` times ``fn``
with pytest-benchmark; on CUDA each call is synchronised, so the time is the kernels' time, and
the peak memory of one call (``torch.cuda.max_memory_allocated`` above the memory live before it)
is recorded. ``extra_info`` then holds ``op, provider, mode, dtype, shape, device,
peak_memory_bytes``, all strings but the peak (bytes, or ``None`` on the CPU).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

# the sweep of the papers' settings on a GPU; one small case on the CPU (a smoke run).
# FASTINT_BENCH_SIZE=quick (make gpu-check): the goal cases only, B = 4096 and 65,536 at M = 39.
QUICK = os.environ.get("FASTINT_BENCH_SIZE", "full") == "quick"
BATCHES = ([4096, 65536] if QUICK else [4096, 16384, 65536]) if ON_GPU else [256]
FIELDS = [39] if QUICK else [10, 23, 39]
DTYPES = ["float32", "bfloat16"] if ON_GPU else ["float32"]   # names: JSON-serialisable parameters
ROUNDS, WARMUP = (20, 3) if ON_GPU else (3, 1)


def dtype_of(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``."""
    return getattr(torch, name)


def leaf(*shape: int, scale: float = 1.0, dtype: str = "float32") -> torch.Tensor:
    """A random normal leaf on ``DEVICE`` requiring grad (std ``scale``, dtype by name)."""
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype_of(dtype)).requires_grad_()


def require_gpu_for_kernels(provider: str) -> None:
    """Skip Triton kernel providers without a GPU (the interpreter says nothing about speed)."""
    if provider == "fastint" and not ON_GPU:
        pytest.skip("Triton kernels are benchmarked on CUDA only")


def skip_reference_over_memory(provider: str, tensors: int, elements: int, dtype: str) -> None:
    """Skip a non-fastint provider on a GPU when ``tensors`` live tensors of ``elements`` values in
    ``dtype`` (the reference's intermediates) would exceed half the GPU's memory."""
    if provider == "fastint" or not ON_GPU:
        return
    need = tensors * elements * torch.finfo(dtype_of(dtype)).bits // 8
    if need > torch.cuda.get_device_properties(0).total_memory // 2:
        pytest.skip(f"the reference would need ~{need / 2 ** 30:.0f} GiB")


def op_providers(op, reference) -> dict:
    """The standard providers of an op benchmark: ``fastint`` (the op on its kernel backend),
    ``eager`` (the plain-PyTorch reference) and ``compiled`` (``torch.compile`` of it)."""
    from fastint import use_backend

    def fastint(*args, **kwargs):
        with use_backend("kernel"):
            return op(*args, **kwargs)

    return {"fastint": fastint, "eager": reference, "compiled": torch.compile(reference)}


def forward_only(fn):
    """A callable running ``fn()`` without autograd."""
    def step():
        with torch.no_grad():
            return fn()
    return step


def forward_backward(fn, *leaves: torch.Tensor, grads=None):
    """A callable running ``fn()`` then backward: of its outputs with ``grads`` when given, else of
    the sum of its (first) output; clears the leaves' gradients first."""
    def step():
        for t in leaves:
            t.grad = None
        out = fn()
        if grads is not None:
            torch.autograd.backward(out, grads)
        else:
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()
    return step


def peak_memory_bytes(fn) -> int | None:
    if not ON_GPU:
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _synchronised(fn):
    @functools.wraps(fn)
    def run():
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out
    return run


def measure(benchmark, fn, *, op: str, provider: str, mode: str, dtype: str, shape: dict,
            rounds: int = ROUNDS, warmup: int = WARMUP) -> None:
    """Benchmark ``fn`` (no arguments) as one case of ``op`` (see the module docstring)."""
    run = _synchronised(fn)
    for _ in range(warmup):
        run()
    case = " ".join(f"{k}={v}" for k, v in shape.items())
    benchmark.group = f"{op} {mode} {case} {dtype}"
    benchmark.extra_info.update(
        op=op, provider=provider, mode=mode, dtype=dtype, shape=case,
        device=torch.cuda.get_device_name() if ON_GPU else "cpu", peak_memory_bytes=peak_memory_bytes(run))
    benchmark.pedantic(run, rounds=rounds, iterations=1)
