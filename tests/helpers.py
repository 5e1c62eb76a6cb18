"""Shared helpers for kernel-vs-reference tests (DESIGN.md §5)."""
from __future__ import annotations

import torch

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# dtypes the kernels are tested in: bf16 is silently wrong under the CPU interpreter.
KERNEL_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if KERNEL_DEVICE == "cuda" else [])

_TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def tolerance(dtype: torch.dtype) -> float:
    """Relative-error bound for results computed in ``dtype`` (tf32 when enabled for fp32)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and KERNEL_DEVICE == "cuda":
        return 3e-4
    return _TOLERANCE[dtype]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (ref must not be all zero)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out64.shape == ref64.shape, f"shape {tuple(out64.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(out64).all(), "output has NaN/inf (unwritten or overflowed elements?)"
    denom = ref64.norm()
    assert denom > 0, "reference is all zero: the comparison would prove nothing"
    return float((out64 - ref64).norm() / denom)


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    err = rel_err(out, ref)
    tol = tolerance(dtype)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e} ({dtype})"


def randn(*shape: int, dtype=torch.float32, device="cpu", scale: float = 1.0, requires_grad=False):
    """Random normal tensor (never all zero), optionally a leaf requiring grad."""
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def as_reference(t: torch.Tensor | None) -> torch.Tensor | None:
    """float64 CPU leaf copy of ``t`` (keeps requires_grad) for the oracle computation."""
    if t is None:
        return None
    r = t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
    return r.requires_grad_(t.requires_grad)


def assert_compiled_grads_match(step, inputs, leaves=None) -> None:
    """``torch.compile(step, fullgraph=True)`` on the kernel backend gives eager's gradients with
    respect to ``leaves`` (default: ``inputs``); fullgraph fails on any graph break."""
    from fastint import use_backend

    leaves = list(inputs) if leaves is None else leaves
    torch._dynamo.reset()
    with use_backend("kernel"):
        compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(*inputs), leaves)
        eager = torch.autograd.grad(step(*inputs), leaves)
    for g, g_eager in zip(compiled, eager):
        torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-6)
