"""Conventions at the boundary of the fused ops' torch.library custom ops, and their autocast rule.

Custom-op schemas cannot return ``None``: an output that was not requested (an attention map
without ``return_attention``) and the gradient of an absent optional parameter are *absent*,
an empty ``[0]`` tensor. The autograd glue turns absent upstream gradients back into ``None``.
"""
from __future__ import annotations

import torch
from torch import Tensor

_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def absent(like: Tensor) -> Tensor:
    """The absent output or gradient: ``[0]``, ``like``'s dtype and device."""
    return like.new_empty(0)


def none_if_absent(t: Tensor | None) -> Tensor | None:
    """``None`` for a missing or absent (empty) tensor, else ``t``. An empty real output (batch 0)
    maps to ``None`` too, which is the same zero contribution."""
    return None if t is None or t.numel() == 0 else t


def autocast_inputs(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Inside ``torch.autocast`` for the tensors' device type, the floating tensors cast to the
    autocast dtype (float64 excepted, as torch's autocast does), the way ``nn.Linear`` casts its
    weights: the fused ops then run their half-precision kernels (fp32 accumulation) and the cast
    carries the gradients back to fp32 parameters. Outside autocast the tensors are unchanged."""
    device = next(t for t in tensors if t is not None).device.type
    if device not in ("cuda", "cpu") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t for t in tensors)
