"""Argument checks shared by the public ops: each raises a ValueError/TypeError naming the problem."""
from __future__ import annotations

from collections.abc import Sequence

import torch

# the interaction ops accept float64 too: it runs the reference (e.g. for gradcheck)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
) -> None:
    """Check type, rank, dtype and (``None`` = any) sizes of one tensor argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).removeprefix('torch.')}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def check_float_tensor(name: str, t: torch.Tensor, *, ndim: int | None = None,
                       shape: Sequence[int | None] | None = None) -> None:
    """``check_tensor`` for a floating input of an interaction op (``FLOAT_DTYPES``)."""
    check_tensor(name, t, ndim=ndim, dtypes=FLOAT_DTYPES, shape=shape)


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given (non-None) tensors live on one device."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on the same device, got {where}")


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    """All given (non-None) floating tensors share one dtype."""
    present = {k: v for k, v in tensors.items() if v is not None}
    if len({v.dtype for v in present.values()}) > 1:
        what = ", ".join(f"{k} {str(v.dtype).removeprefix('torch.')}" for k, v in present.items())
        raise TypeError(f"floating tensors must share one dtype, got {what}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN/inf (used for numeric feature values, not for activations in hot paths)."""
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
