"""Field attention: AutoInt's interacting layer (multi-head self-attention over fields), fused."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fastint._backend import use_triton
from fastint.kernels import field_attention as kernels
from fastint.ops._checks import check_float_tensor, check_same_device, check_same_dtype, check_tensor
from fastint.ops._custom import absent, autocast_inputs, none_if_absent
from fastint.options import FieldAttentionOptions, schema_arguments
from fastint.reference import field_attention as _reference

PARAMETERS = kernels.PARAMETERS                      # w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias
_NUM_OPTIONS = len(dataclasses.fields(FieldAttentionOptions))
_PARAMS_SCHEMA = "Tensor w_qkv, Tensor? b_qkv, Tensor? w_res, Tensor? b_res, Tensor? ln_weight, Tensor? ln_bias"
_OPTIONS_SCHEMA = schema_arguments(FieldAttentionOptions)


def _unflatten(args: tuple) -> tuple[tuple[Tensor | None, ...], FieldAttentionOptions]:
    """The parameters and the options from the flat custom-op arguments that follow ``x``."""
    return args[:len(PARAMETERS)], FieldAttentionOptions(*args[len(PARAMETERS):][:_NUM_OPTIONS])


def _forward_impl(x, *args):
    """``(Y, A)``; ``A`` is absent (``[0]``) unless ``return_attention`` (the last argument)."""
    params, options = _unflatten(args)
    return kernels.forward(x, params, options, return_attention=args[-1])


def _forward_fake(x, *args):
    (params, options), return_attention = _unflatten(args), args[-1]
    batch, fields, _ = x.shape
    attention = x.new_empty(batch, options.num_heads, fields, fields) if return_attention else absent(x)
    return x.new_empty(batch, fields, params[0].shape[1] // 3), attention


_forward = torch.library.custom_op(
    "fastint::field_attention_forward", _forward_impl, mutates_args=(),
    schema=f"(Tensor x, {_PARAMS_SCHEMA}, {_OPTIONS_SCHEMA}, bool return_attention) -> (Tensor, Tensor)")
_forward.register_fake(_forward_fake)


def _backward_impl(grad_y, grad_a, x, *args):
    """``dx`` and one gradient per parameter, absent (``[0]``) where the parameter is."""
    params, options = _unflatten(args)
    dx, grads = kernels.backward(grad_y, grad_a, x, params, options)
    return (dx, *(absent(x) if g is None else g for g in grads))


def _backward_fake(grad_y, grad_a, x, *args):
    return (torch.empty_like(x), *(absent(x) if p is None else torch.empty_like(p)
                                   for p in args[:len(PARAMETERS)]))


_backward = torch.library.custom_op(
    "fastint::field_attention_backward", _backward_impl, mutates_args=(),
    schema=f"(Tensor? grad_y, Tensor? grad_a, Tensor x, {_PARAMS_SCHEMA}, {_OPTIONS_SCHEMA}) -> "
           f"({', '.join(['Tensor'] * (1 + len(PARAMETERS)))})")
_backward.register_fake(_backward_fake)


def _setup_context(ctx, inputs, output):
    tensors = 1 + len(PARAMETERS)
    ctx.save_for_backward(*inputs[:tensors])                  # x and the weights only
    ctx.options = inputs[tensors:tensors + _NUM_OPTIONS]
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_y, grad_a):
    x, *params = ctx.saved_tensors
    dx, *grads = _backward(grad_y, none_if_absent(grad_a), x, *params, *ctx.options)
    return (dx, *(None if p is None else g for p, g in zip(params, grads))) + (None,) * (_NUM_OPTIONS + 1)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(x: Tensor, params: tuple[Tensor | None, ...], options: FieldAttentionOptions) -> None:
    """Validate the tensors against each other and the options."""
    w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias = params
    check_float_tensor("x", x, ndim=3)
    check_float_tensor("w_qkv", w_qkv, ndim=2)
    batch, fields, dim = x.shape
    num_heads = options.num_heads
    if fields == 0:
        raise ValueError(f"x must have at least one field, got shape {list(x.shape)}")
    if w_qkv.shape[1] == 0 or w_qkv.shape[1] % (3 * num_heads):
        raise ValueError(f"w_qkv must have shape [d, 3*num_heads*head_dim] with num_heads={num_heads}, "
                         f"got {list(w_qkv.shape)}")
    width = w_qkv.shape[1] // 3
    check_tensor("w_qkv", w_qkv, shape=(dim, 3 * width))
    shapes = {"b_qkv": (3 * width,), "w_res": (dim, width), "b_res": (width,), "ln_weight": (width,),
              "ln_bias": (width,)}
    for name, t in zip(PARAMETERS[1:], params[1:]):
        if t is not None:
            check_float_tensor(name, t, shape=shapes[name])
    if options.residual == "project" and w_res is None:
        raise ValueError('residual="project" needs w_res [d, H*dh]')
    if options.residual != "project" and (w_res is not None or b_res is not None):
        raise ValueError(f'w_res/b_res are only used with residual="project", got residual={options.residual!r}')
    if options.residual == "identity" and dim != width:
        raise ValueError(f'residual="identity" needs d == num_heads*head_dim, got d={dim}, '
                         f"num_heads*head_dim={width}")
    if options.layer_norm == "none" and (ln_weight is not None or ln_bias is not None):
        raise ValueError('ln_weight/ln_bias are only used with layer_norm="after" or "before"')
    tensors = dict(x=x, **dict(zip(PARAMETERS, params)))
    check_same_device(**tensors)
    check_same_dtype(**tensors)


def field_attention(x: Tensor, w_qkv: Tensor, b_qkv: Tensor | None = None, w_res: Tensor | None = None,
                    b_res: Tensor | None = None, ln_weight: Tensor | None = None,
                    ln_bias: Tensor | None = None, *, return_attention: bool = False,
                    **options) -> Tensor | tuple[Tensor, Tensor]:
    """AutoInt's interacting layer (Song et al., CIKM 2019): multi-head self-attention over fields.

    Args:
        x: ``[B, M, d]`` field embeddings.
        w_qkv: ``[d, 3*H*dh]``, columns ``[Q heads | K heads | V heads]`` (head ``h`` of Q is
            columns ``h*dh:(h+1)*dh``); ``b_qkv``: optional ``[3*H*dh]``.
        w_res, b_res: ``[d, H*dh]`` and optional ``[H*dh]``, used by ``residual="project"`` only.
        ln_weight, ln_bias: optional ``[H*dh]`` LayerNorm affine (``layer_norm != "none"`` only).
        return_attention: also return the attention probabilities.
        **options: the fields of ``fastint.options.FieldAttentionOptions``: ``num_heads`` (``H``,
            required), ``scale`` (``None``: ``1/sqrt(dh)``), ``qkv_relu`` / ``res_relu`` /
            ``out_relu`` (ReLU on Q/K/V, on the projected residual, on the output),
            ``residual`` (``"project"``: ``R = act(x W_res + b_res)``; ``"identity"``: ``R = x``,
            needs ``d == H*dh``; ``"none"``), ``layer_norm`` (``"none"``, ``"after"``:
            ``LN(act_out(Z))``, ``"before"``: ``act_out(LN(Z))``) and its ``ln_eps``.

    ``[Q|K|V] = act(x W_qkv + b_qkv)``; per head ``A_h = softmax_keys(scale Q_h K_h^T)``;
    ``O = concat_h(A_h V_h)``; ``Z = O + R``; ``Y`` as chosen by ``layer_norm`` and ``out_relu``.

    Returns:
        ``Y [B, M, H*dh]``, or ``(Y, A [B, H, M, M])`` (row = query field) with
        ``return_attention``; in ``x``'s dtype, differentiable w.r.t. ``x`` and every weight.
        The fused kernels take fp32/fp16/bf16; float64 runs the reference (e.g. for gradcheck).
        Under ``torch.autocast`` the tensors are cast to its dtype first (half-precision kernels).
    """
    opts = FieldAttentionOptions(**options)
    x, *params = autocast_inputs(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias)
    params = tuple(params)
    _check(x, params, opts)
    if use_triton(x):
        y, attention = _forward(x, *params, *opts.astuple(), return_attention)
        return (y, attention) if return_attention else y
    return _reference.field_attention(x, *params, return_attention=return_attention, **options)
