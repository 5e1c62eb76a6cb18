"""Backend selection: which implementation an op runs.

``auto`` (default) runs the fused kernels for CUDA tensors and the plain-PyTorch reference for
CPU tensors (the C++ CPU kernel for ``embedding_bag``). ``kernel`` forces the fused kernels: on
CPU the Triton kernels then run under the interpreter, which needs ``TRITON_INTERPRET=1`` set
before ``triton`` is first imported. ``reference`` forces the reference everywhere.

Choose with the environment variable ``FASTINT_BACKEND`` or, scoped, ``use_backend(name)``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from fastint.kernels._common import interpreter_enabled

BACKENDS = ("auto", "kernel", "reference")
# A plain module global (not a ContextVar: dynamo cannot trace ContextVar.get, and guards on a
# global, recompiling when use_backend changes it). ``use_backend`` is therefore process-wide.
_override: str | None = None


def _checked(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastint backend {name!r}; expected one of {BACKENDS}")
    return name


def current_backend() -> str:
    """The backend in force: the innermost ``use_backend`` or else ``$FASTINT_BACKEND``."""
    name = _override
    if name is None:
        name = os.environ.get("FASTINT_BACKEND", "auto") or "auto"
    return _checked(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with backend ``name`` (``auto``, ``kernel`` or ``reference``)."""
    global _override
    previous, _override = _override, _checked(name)
    try:
        yield
    finally:
        _override = previous


# the dtypes of the fused Triton kernels (float64 inputs run the reference: e.g. gradcheck)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op whose main input is ``t`` should run its Triton kernel.

    Raises a clear error when ``kernel`` is forced where the kernels cannot run: CPU tensors
    without the Triton interpreter, or a dtype the kernels do not take (float64).
    """
    backend = current_backend()
    if backend == "reference":
        return False
    if t.dtype not in KERNEL_DTYPES:
        if backend == "kernel":
            raise TypeError(f"FASTINT_BACKEND=kernel: the fused kernels take float32/float16/bfloat16, "
                            f"got {str(t.dtype).removeprefix('torch.')} (use the reference backend)")
        return False
    if t.is_cuda:
        return True
    if backend == "kernel":
        if not interpreter_enabled():
            raise RuntimeError(
                "FASTINT_BACKEND=kernel on CPU tensors needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 before triton is imported (or move the tensors to CUDA)"
            )
        return True
    return False
