"""Plain-PyTorch field attention (AutoInt's interacting layer): the oracle and the CPU path."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _relu_if(t: Tensor, flag: bool) -> Tensor:
    return torch.relu(t) if flag else t


def field_attention(x: Tensor, w_qkv: Tensor, b_qkv: Tensor | None = None, w_res: Tensor | None = None,
                    b_res: Tensor | None = None, ln_weight: Tensor | None = None,
                    ln_bias: Tensor | None = None, *, num_heads: int, scale: float | None = None,
                    qkv_relu: bool = False, residual: str = "project", res_relu: bool = False,
                    out_relu: bool = True, layer_norm: str = "none", ln_eps: float = 1e-5,
                    return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as ``fastint.ops.field_attention`` (arguments are not validated here).

    ``[Q|K|V] = act(x W_qkv + b_qkv)`` -> per head ``A_h = softmax(scale Q_h K_h^T)`` ->
    ``O = concat_h(A_h V_h)`` -> ``Z = O + R`` -> ``Y`` (ReLU / LayerNorm as configured).
    Batched matmuls over ``[B, H, M, dh]``; differentiable by autograd.
    """
    batch, fields, _ = x.shape
    width = w_qkv.shape[1] // 3
    head_dim = width // num_heads
    qkv = _relu_if(F.linear(x, w_qkv.T, b_qkv), qkv_relu)                      # [B, M, 3*H*dh]
    q, k, v = qkv.view(batch, fields, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # [B, H, M, dh]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    attention = torch.softmax(scale * (q @ k.transpose(-1, -2)), dim=-1)          # [B, H, M, M]
    z = (attention @ v).transpose(1, 2).reshape(batch, fields, width)
    if residual == "project":
        z = z + _relu_if(F.linear(x, w_res.T, b_res), res_relu)
    elif residual == "identity":
        z = z + x
    if layer_norm == "before":
        z = F.layer_norm(z, (width,), ln_weight, ln_bias, ln_eps)
    y = _relu_if(z, out_relu)
    if layer_norm == "after":
        y = F.layer_norm(y, (width,), ln_weight, ln_bias, ln_eps)
    return (y, attention) if return_attention else y
