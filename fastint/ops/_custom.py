"""Conventions at the boundary of the fused ops' torch.library custom ops.

Custom-op schemas cannot return ``None``: an output that was not requested (an attention map
without ``return_attention``) and the gradient of an absent optional parameter are *absent*,
an empty ``[0]`` tensor. The autograd glue turns absent upstream gradients back into ``None``.
"""
from __future__ import annotations

from torch import Tensor


def absent(like: Tensor) -> Tensor:
    """The absent output or gradient: ``[0]``, ``like``'s dtype and device."""
    return like.new_empty(0)


def none_if_absent(t: Tensor | None) -> Tensor | None:
    """``None`` for a missing or absent (empty) tensor, else ``t``. An empty real output (batch 0)
    maps to ``None`` too, which is the same zero contribution."""
    return None if t is None or t.numel() == 0 else t
