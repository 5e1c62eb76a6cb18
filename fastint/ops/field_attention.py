"""Field attention: AutoInt's interacting layer (multi-head self-attention over fields), fused."""
from __future__ import annotations

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels import field_attention as kernels
from fastint.ops._checks import FLOAT_DTYPES, check_same_device, check_same_dtype, check_tensor
from fastint.reference import field_attention as _reference

RESIDUALS = tuple(kernels.RESIDUALS)
LAYER_NORMS = tuple(kernels.LAYER_NORMS)


@torch.library.custom_op("fastint::field_attention_forward", mutates_args=())
def _forward(x: Tensor, w_qkv: Tensor, b_qkv: Tensor | None, w_res: Tensor | None,
             b_res: Tensor | None, ln_weight: Tensor | None, ln_bias: Tensor | None, num_heads: int,
             scale: float, qkv_relu: bool, residual: str, res_relu: bool, out_relu: bool,
             layer_norm: str, ln_eps: float, return_attention: bool) -> tuple[Tensor, Tensor]:
    """``(Y, A)``; ``A`` is an empty ``[0]`` tensor unless ``return_attention``."""
    return kernels.forward(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, num_heads=num_heads,
                           scale=scale, qkv_relu=qkv_relu, residual=residual, res_relu=res_relu,
                           out_relu=out_relu, layer_norm=layer_norm, ln_eps=ln_eps,
                           return_attention=return_attention)


@_forward.register_fake
def _(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, num_heads, scale, qkv_relu, residual,
      res_relu, out_relu, layer_norm, ln_eps, return_attention):
    (batch, fields, _), width = x.shape, w_qkv.shape[1] // 3
    attention = (batch, num_heads, fields, fields) if return_attention else (0,)
    return x.new_empty(batch, fields, width), x.new_empty(attention)


@torch.library.custom_op("fastint::field_attention_backward", mutates_args=())
def _backward(grad_y: Tensor | None, grad_a: Tensor | None, x: Tensor, w_qkv: Tensor,
              b_qkv: Tensor | None, w_res: Tensor | None, b_res: Tensor | None,
              ln_weight: Tensor | None, ln_bias: Tensor | None, num_heads: int, scale: float,
              qkv_relu: bool, residual: str, res_relu: bool, out_relu: bool, layer_norm: str,
              ln_eps: float) -> list[Tensor]:
    """Gradients of ``x`` and of each parameter that is present (absent ones are skipped)."""
    grads = kernels.backward(grad_y, grad_a, x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias,
                             num_heads=num_heads, scale=scale, qkv_relu=qkv_relu, residual=residual,
                             res_relu=res_relu, out_relu=out_relu, layer_norm=layer_norm, ln_eps=ln_eps)
    return [g for g in grads if g is not None]


@_backward.register_fake
def _(grad_y, grad_a, x, *params_and_flags):
    return [t.new_empty(t.shape) for t in (x, *params_and_flags[:6]) if t is not None]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])                        # x and the weights only
    ctx.flags = inputs[7:15]                                  # num_heads .. ln_eps (not return_attention)
    ctx.present = [t is not None for t in inputs[1:7]]


def _autograd_backward(ctx, grad_y, grad_a):
    if grad_a is not None and grad_a.numel() == 0:            # A was not requested
        grad_a = None
    grads = iter(_backward(grad_y, grad_a, *ctx.saved_tensors, *ctx.flags))
    dx = next(grads)
    return (dx, *(next(grads) if present else None for present in ctx.present)) + (None,) * 9


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, *, num_heads, residual, layer_norm) -> int:
    """Validate the arguments; returns the head width ``dh``."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    if layer_norm not in LAYER_NORMS:
        raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("w_qkv", w_qkv, ndim=2, dtypes=FLOAT_DTYPES)
    batch, fields, dim = x.shape
    if fields == 0:
        raise ValueError(f"x must have at least one field, got shape {list(x.shape)}")
    if w_qkv.shape[1] == 0 or w_qkv.shape[1] % (3 * num_heads):
        raise ValueError(f"w_qkv must have shape [d, 3*num_heads*head_dim] with num_heads={num_heads}, "
                         f"got {list(w_qkv.shape)}")
    width = w_qkv.shape[1] // 3
    check_tensor("w_qkv", w_qkv, shape=(dim, 3 * width))
    optional = {"b_qkv": (b_qkv, (3 * width,)), "w_res": (w_res, (dim, width)), "b_res": (b_res, (width,)),
                "ln_weight": (ln_weight, (width,)), "ln_bias": (ln_bias, (width,))}
    for name, (t, shape) in optional.items():
        if t is not None:
            check_tensor(name, t, dtypes=FLOAT_DTYPES, shape=shape)
    if residual == "project" and w_res is None:
        raise ValueError('residual="project" needs w_res [d, H*dh]')
    if residual != "project" and (w_res is not None or b_res is not None):
        raise ValueError(f'w_res/b_res are only used with residual="project", got residual={residual!r}')
    if residual == "identity" and dim != width:
        raise ValueError(f'residual="identity" needs d == num_heads*head_dim, got d={dim}, '
                         f"num_heads*head_dim={width}")
    if layer_norm == "none" and (ln_weight is not None or ln_bias is not None):
        raise ValueError('ln_weight/ln_bias are only used with layer_norm="after" or "before"')
    tensors = dict(x=x, w_qkv=w_qkv, b_qkv=b_qkv, w_res=w_res, b_res=b_res, ln_weight=ln_weight,
                   ln_bias=ln_bias)
    check_same_device(**tensors)
    check_same_dtype(**tensors)
    return width // num_heads


def field_attention(x: Tensor, w_qkv: Tensor, b_qkv: Tensor | None = None, w_res: Tensor | None = None,
                    b_res: Tensor | None = None, ln_weight: Tensor | None = None,
                    ln_bias: Tensor | None = None, *, num_heads: int, scale: float | None = None,
                    qkv_relu: bool = False, residual: str = "project", res_relu: bool = False,
                    out_relu: bool = True, layer_norm: str = "none", ln_eps: float = 1e-5,
                    return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """AutoInt's interacting layer (Song et al., CIKM 2019): multi-head self-attention over fields.

    Args:
        x: ``[B, M, d]`` field embeddings.
        w_qkv: ``[d, 3*H*dh]``, columns ``[Q heads | K heads | V heads]`` (head ``h`` of Q is
            columns ``h*dh:(h+1)*dh``); ``b_qkv``: optional ``[3*H*dh]``.
        w_res, b_res: ``[d, H*dh]`` and optional ``[H*dh]``, used by ``residual="project"`` only.
        ln_weight, ln_bias: optional ``[H*dh]`` LayerNorm affine (``layer_norm != "none"`` only).
        num_heads: ``H``. scale: score scale, ``None`` -> ``1/sqrt(dh)``.
        qkv_relu / res_relu / out_relu: ReLU on Q/K/V, on the projected residual, on the output.
        residual: ``"project"`` (``R = act(x W_res + b_res)``), ``"identity"`` (``R = x``, needs
            ``d == H*dh``) or ``"none"``.
        layer_norm: ``"none"``, ``"after"`` (``LN(act_out(Z))``) or ``"before"`` (``act_out(LN(Z))``),
            over the last dim with epsilon ``ln_eps``.
        return_attention: also return the attention probabilities.

    ``[Q|K|V] = act(x W_qkv + b_qkv)``; per head ``A_h = softmax_keys(scale Q_h K_h^T)``;
    ``O = concat_h(A_h V_h)``; ``Z = O + R``; ``Y`` as chosen by ``layer_norm`` and ``out_relu``.

    Returns:
        ``Y [B, M, H*dh]``, and ``A [B, H, M, M]`` (row = query field) when ``return_attention``;
        in ``x``'s dtype, differentiable w.r.t. ``x`` and every weight.
    """
    head_dim = _check(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, num_heads=num_heads,
                      residual=residual, layer_norm=layer_norm)
    tensors = (x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias)
    if use_triton(x):
        scale = head_dim ** -0.5 if scale is None else float(scale)
        y, attention = _forward(*tensors, num_heads, scale, bool(qkv_relu), residual, bool(res_relu),
                                bool(out_relu), layer_norm, float(ln_eps), bool(return_attention))
        return (y, attention) if return_attention else y
    return _reference.field_attention(
        *tensors, num_heads=num_heads, scale=scale, qkv_relu=qkv_relu, residual=residual,
        res_relu=res_relu, out_relu=out_relu, layer_norm=layer_norm, ln_eps=ln_eps,
        return_attention=return_attention)
