"""Plain-PyTorch field attention (AutoInt's interacting layer): the oracle and the CPU path."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastint.options import FieldAttentionOptions


def _relu_if(t: Tensor, flag: bool) -> Tensor:
    return torch.relu(t) if flag else t


def field_attention(x: Tensor, w_qkv: Tensor, b_qkv: Tensor | None = None, w_res: Tensor | None = None,
                    b_res: Tensor | None = None, ln_weight: Tensor | None = None,
                    ln_bias: Tensor | None = None, *, return_attention: bool = False,
                    **options) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as ``fastint.ops.field_attention`` (tensors are not validated here);
    ``options`` are the fields of ``FieldAttentionOptions``.

    ``[Q|K|V] = act(x W_qkv + b_qkv)`` -> per head ``A_h = softmax(scale Q_h K_h^T)`` ->
    ``O = concat_h(A_h V_h)`` -> ``Z = O + R`` -> ``Y`` (ReLU / LayerNorm as configured).
    Batched matmuls over ``[B, H, M, dh]``; differentiable by autograd.
    """
    opts = FieldAttentionOptions(**options)
    num_heads = opts.num_heads
    batch, fields, _ = x.shape
    width = w_qkv.shape[1] // 3
    head_dim = width // num_heads
    qkv = _relu_if(F.linear(x, w_qkv.T, b_qkv), opts.qkv_relu)                      # [B, M, 3*H*dh]
    q, k, v = qkv.view(batch, fields, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # [B, H, M, dh]
    scores = q @ k.transpose(-1, -2)                                                  # [B, H, M, M]
    scale = opts.score_scale(head_dim)
    attention = torch.softmax(scores if scale == 1.0 else scale * scores, dim=-1)
    z = (attention @ v).transpose(1, 2).reshape(batch, fields, width)
    if opts.residual == "project":
        z = z + _relu_if(F.linear(x, w_res.T, b_res), opts.res_relu)
    elif opts.residual == "identity":
        z = z + x
    if opts.layer_norm == "before":
        z = F.layer_norm(z, (width,), ln_weight, ln_bias, opts.ln_eps)
    y = _relu_if(z, opts.out_relu)
    if opts.layer_norm == "after":
        y = F.layer_norm(y, (width,), ln_weight, ln_bias, opts.ln_eps)
    return (y, attention) if return_attention else y
