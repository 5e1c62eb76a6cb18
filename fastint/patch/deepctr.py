"""DeepCTR-Torch (0.3.0): ``InteractingLayer`` (AutoInt) -> ``field_attention``, ``AFMLayer``
(AFM) -> ``afm_pooling``.

Both layers keep their parameters; the fused forwards read them on every call:

- ``InteractingLayer(embedding_size, head_num, use_res, scaling)``: ``x @ [W_Query | W_key |
  W_Value]`` (head ``h`` = columns ``h*dh:(h+1)*dh``, ``dh = embedding_size / head_num``),
  scores scaled by ``1/sqrt(dh)`` only with ``scaling``, ``+ x @ W_Res`` with ``use_res``, ReLU.
  Every option is expressible. ``normalized_att_scores`` (``[H, B, M, M]``) is set only with
  ``keep_attention=True``.
- ``AFMLayer(in_features, attention_factor, l2_reg_w, dropout_rate)``: the list of ``[B, 1, k]``
  embeddings is concatenated to ``[B, M, k]``; ``pooled = afm_pooling(e, attention_W,
  attention_b, projection_h)``; then DeepCTR's own dropout on the pooled vector and
  ``pooled @ projection_p``. The L2 term on ``attention_W`` lives in the model's
  ``regularization_weight`` list, which holds the same ``Parameter``: it keeps working.
  ``normalized_att_score`` (``[B, P, 1]``) is set only with ``keep_attention=True``.

DeepCTR-Torch is never imported here: a model built with it has imported it already.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from fastint.ops.afm_pooling import afm_pooling
from fastint.ops.field_attention import field_attention
from fastint.patch._core import Patcher, state_of

LIBRARY = "DeepCTR-Torch"
_LAYERS_MODULE = "deepctr_torch.layers.interaction"


def _is_layer(name: str):
    def matches(module: nn.Module) -> bool:
        layers = sys.modules.get(_LAYERS_MODULE)
        return layers is not None and isinstance(module, getattr(layers, name))
    return matches


def _always_supported(module: nn.Module) -> None:
    return None


def _interacting_forward(self, inputs: torch.Tensor) -> torch.Tensor:
    """``[B, M, d] -> [B, M, d]``, as ``InteractingLayer.forward``."""
    if inputs.dim() != 3:
        raise ValueError(f"Unexpected inputs dimensions {inputs.dim()}, expect to be 3 dimensions")
    keep = state_of(self).keep_attention
    out = field_attention(
        inputs, torch.cat((self.W_Query, self.W_key, self.W_Value), dim=1),
        w_res=self.W_Res if self.use_res else None, num_heads=self.head_num,
        scale=None if self.scaling else 1.0, residual="project" if self.use_res else "none",
        out_relu=True, return_attention=keep)
    if not keep:
        return out
    out, attention = out
    self.normalized_att_scores = attention.transpose(0, 1)          # DeepCTR's [H, B, M, M]
    return out


def _afm_forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
    """``M`` tensors ``[B, 1, k]`` -> ``[B, 1]``, as ``AFMLayer.forward``."""
    keep = state_of(self).keep_attention
    pooled = afm_pooling(torch.cat(list(inputs), dim=1), self.attention_W, self.attention_b,
                         self.projection_h.view(-1), return_attention=keep)
    if keep:
        pooled, attention = pooled
        self.normalized_att_score = attention.unsqueeze(-1)          # DeepCTR's [B, P, 1]
    return torch.tensordot(self.dropout(pooled), self.projection_p, dims=([-1], [0]))


PATCHERS = (
    Patcher(LIBRARY, "InteractingLayer", "field_attention", _is_layer("InteractingLayer"),
            _always_supported, _interacting_forward, attention_attribute="normalized_att_scores"),
    Patcher(LIBRARY, "AFMLayer", "afm_pooling", _is_layer("AFMLayer"),
            _always_supported, _afm_forward, attention_attribute="normalized_att_score"),
)
