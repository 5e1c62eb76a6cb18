"""Timing helpers shared by the benchmark suites.

``measure(benchmark, fn, device)`` times ``fn`` with pytest-benchmark; on CUDA each call is
synchronised so the time is the kernels' time, and the peak memory of one call
(``torch.cuda.max_memory_allocated`` above the memory live before it) goes to ``extra_info``.
"""
from __future__ import annotations

import functools

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def require_gpu_for_kernels(provider: str) -> None:
    """Skip Triton kernel providers without a GPU (the interpreter says nothing about speed)."""
    if provider == "fastint" and DEVICE != "cuda":
        pytest.skip("Triton kernels are benchmarked on CUDA only")


def peak_memory_bytes(fn) -> int | None:
    if DEVICE != "cuda":
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
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def measure(benchmark, fn, *, rounds: int = 20, warmup: int = 3, **info) -> None:
    """Benchmark ``fn`` (no arguments); record device, peak memory and ``info`` in extra_info."""
    run = _synchronised(fn)
    for _ in range(warmup):
        run()
    benchmark.extra_info.update(info)
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    benchmark.extra_info["peak_memory_bytes"] = peak_memory_bytes(run)
    benchmark.pedantic(run, rounds=rounds, iterations=1)


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


def op_providers(op, reference) -> dict:
    """The standard providers of an op benchmark: ``fastint`` (the op on its kernel backend),
    ``eager`` (the plain-PyTorch reference) and ``compiled`` (``torch.compile`` of it)."""
    from fastint import use_backend

    def fastint(*args, **kwargs):
        with use_backend("kernel"):
            return op(*args, **kwargs)

    return {"fastint": fastint, "eager": reference, "compiled": torch.compile(reference)}
