"""Shared helpers for kernel-vs-reference tests (DESIGN.md §5)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


# an element may be off by ELEMENT_FACTOR x the norm-wise bound, relative to |ref_i| + rms(ref)
ELEMENT_FACTOR = 10.0


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (ref must not be all zero)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out64.shape == ref64.shape, f"shape {tuple(out64.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(out64).all(), "output has NaN/inf (unwritten or overflowed elements?)"
    denom = ref64.norm()
    assert denom > 0, "reference is all zero: the comparison would prove nothing"
    return float((out64 - ref64).norm() / denom)


def worst_element(out: torch.Tensor, ref: torch.Tensor, bound: float) -> tuple[float, str]:
    """The largest ``|out_i - ref_i| / (bound * (|ref_i| + rms(ref)))`` and a description of that
    element (index, both values); NaN/inf elements count as infinitely wrong."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    rms = ref64.norm() / max(1, ref64.numel()) ** 0.5
    ratio = (out64 - ref64).abs() / (bound * (ref64.abs() + rms))
    ratio = torch.where(torch.isfinite(out64), ratio, torch.inf)
    flat = int(ratio.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape))
    worst = float(ratio.reshape(-1)[flat])
    return worst, f"element {list(index)}: {float(out64[index]):.6g} vs reference {float(ref64[index]):.6g}"


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Norm-wise ``rel_err < tolerance(dtype)`` and every element within ``ELEMENT_FACTOR *
    tolerance(dtype) * (|ref_i| + rms(ref))``: one wrong element of a large tensor fails too."""
    tol = tolerance(dtype)
    ratio, where = worst_element(out, ref, ELEMENT_FACTOR * tol)
    assert ratio <= 1.0, f"{what}: {where} ({ratio:.2g}x the elementwise bound, {dtype})"
    err = rel_err(out, ref)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e} ({dtype}); worst {where}"


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within the block ``torch.empty``/``empty_like`` fill floats with NaN (integers with their
    maximum), PyTorch's ``fill_uninitialized_memory``: an output element a kernel fails to write
    stays NaN and fails the comparison. (Deterministic mode warns, not raises, on other ops.)"""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def outputs_and_grads(fn, inputs, upstream):
    """``fn(*inputs)`` as a tuple of outputs, and the gradients of ``sum_i <out_i, upstream_i>``
    (``None`` upstream entries are left out) w.r.t. every input that is not ``None``."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * g.to(o.device, torch.float64)).sum() for o, g in zip(outs, upstream)
               if g is not None)
    leaves = [t for t in inputs if t is not None]
    return outs, torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


def check_kernel_against_reference(fn, reference, inputs, upstream, dtype, output_names, grad_names,
                                   zero_grads=()):
    """The kernel path of ``fn`` (outputs NaN-poisoned) vs ``reference`` on float64 CPU copies of
    ``inputs``: every output and every gradient of ``sum <out, upstream>`` is compared
    (``assert_rel_close``). Gradients named in ``zero_grads`` are mathematically zero (e.g. the
    attention weights' when the softmax has one entry): they must be below the tolerance, and so
    must any gradient whose reference is exactly zero. Returns the kernel path's outputs."""
    from fastint import use_backend

    with use_backend("kernel"), poisoned_outputs():
        outs, grads = outputs_and_grads(fn, inputs, upstream)
    ref_outs, ref_grads = outputs_and_grads(reference, [as_reference(t) for t in inputs], upstream)
    assert len(outs) == len(output_names) and len(grads) == len(grad_names)
    for name, out, ref in zip(output_names, outs, ref_outs):
        assert out.dtype == dtype and out.shape == ref.shape, name
        assert_rel_close(out, ref, dtype, name)
    for name, g, ref in zip(grad_names, grads, ref_grads):
        assert g.dtype == dtype and g.shape == ref.shape, f"d{name}"
        if name in zero_grads or float(ref.norm()) == 0.0:
            assert torch.isfinite(g).all() and float(g.abs().max()) < tolerance(dtype), f"d{name}"
        else:
            assert_rel_close(g, ref, dtype, f"d{name}")
    return outs


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
