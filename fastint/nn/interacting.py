"""InteractingLayer: AutoInt's multi-head self-attention over fields, as published in four variants.

``VARIANTS`` maps a name to the layer's structure; any entry can be overridden per layer:

========== ======== ======== ========== ========== ======== ======== ========== ========
variant    qkv_bias qkv_relu scale      residual   res_bias res_relu layer_norm init
========== ======== ======== ========== ========== ======== ======== ========== ========
tf         yes      yes      1/sqrt(dh) project    yes      yes      after      xavier
paper      no       no       1          project    no       no       none       xavier
deepctr    no       no       1          project    no       no       none       normal
fuxictr    no       no       1          auto       no       no       none       xavier
========== ======== ======== ========== ========== ======== ======== ========== ========

All four apply ReLU to the output (``out_relu``). ``tf`` is the authors' TensorFlow code (dense
layers with bias and ReLU for Q/K/V and the residual, scaled scores, LayerNorm after the ReLU);
``paper`` the CIKM'19 equations; ``deepctr`` DeepCTR-Torch (``head_dim = in_dim / num_heads``,
weights ~ N(0, 0.05^2)); ``fuxictr`` FuxiCTR's ``MultiHeadSelfAttention`` as it ships (identity residual when
``in_dim == H*dh``, else a projection: ``residual="auto"``; no LayerNorm, its default
``layer_norm=False``: pass ``layer_norm="before"`` for its ``layer_norm=True``, LayerNorm then
ReLU; its ``use_scale=True`` is ``scale=None``).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fastint.ops.field_attention import field_attention
from fastint.options import LAYER_NORMS, RESIDUALS, FieldAttentionOptions

VARIANTS: dict[str, dict] = {
    "tf": dict(qkv_bias=True, qkv_relu=True, scale=None, residual="project", res_bias=True,
               res_relu=True, out_relu=True, layer_norm="after", init="xavier"),
    "paper": dict(qkv_bias=False, qkv_relu=False, scale=1.0, residual="project", res_bias=False,
                  res_relu=False, out_relu=True, layer_norm="none", init="xavier"),
    "deepctr": dict(qkv_bias=False, qkv_relu=False, scale=1.0, residual="project", res_bias=False,
                    res_relu=False, out_relu=True, layer_norm="none", init="normal"),
    "fuxictr": dict(qkv_bias=False, qkv_relu=False, scale=1.0, residual="auto", res_bias=False,
                    res_relu=False, out_relu=True, layer_norm="none", init="xavier"),
}
_OPTIONS = set(VARIANTS["tf"]) | {"ln_affine", "ln_eps"}


class InteractingLayer(nn.Module):
    """``x [B, M, in_dim] -> Y [B, M, H*dh]`` (and ``A [B, H, M, M]``), see ``fastint.ops.field_attention``.

    Parameters: ``w_qkv`` ``[in_dim, 3*H*dh]`` (``[W_Q | W_K | W_V]``), ``b_qkv`` ``[3*H*dh]``,
    ``w_res`` ``[in_dim, H*dh]``, ``b_res`` ``[H*dh]``, ``ln_weight``/``ln_bias`` ``[H*dh]``; each
    is ``None`` where the variant has none. Weights: Xavier-uniform per projection (``init="xavier"``)
    or N(0, 0.05^2) (``"normal"``, biases too, as DeepCTR-Torch); otherwise biases 0, LayerNorm 1/0.
    """

    def __init__(self, in_dim: int, head_dim: int, num_heads: int, variant: str = "tf", *,
                 device=None, dtype=None, **overrides):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {tuple(VARIANTS)}")
        unknown = set(overrides) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown InteractingLayer options {sorted(unknown)}; expected {sorted(_OPTIONS)}")
        if min(in_dim, head_dim, num_heads) < 1:
            raise ValueError(f"in_dim, head_dim and num_heads must be >= 1, got {in_dim}, {head_dim}, {num_heads}")
        cfg = {**VARIANTS[variant], "ln_affine": True, "ln_eps": 1e-5, **overrides}
        width = num_heads * head_dim
        if variant == "deepctr" and width != in_dim:
            raise ValueError(f'variant "deepctr" needs head_dim * num_heads == in_dim, got '
                             f"{head_dim} * {num_heads} != {in_dim}")
        if cfg["residual"] == "auto":
            cfg["residual"] = "identity" if in_dim == width else "project"
        if cfg["residual"] not in RESIDUALS or cfg["layer_norm"] not in LAYER_NORMS:
            raise ValueError(f"residual must be in {RESIDUALS + ('auto',)} and layer_norm in {LAYER_NORMS}, "
                             f"got {cfg['residual']!r}, {cfg['layer_norm']!r}")
        if cfg["init"] not in ("xavier", "normal"):
            raise ValueError(f'init must be "xavier" or "normal", got {cfg["init"]!r}')
        self.in_dim, self.head_dim, self.num_heads, self.variant = in_dim, head_dim, num_heads, variant
        self.config = cfg
        self.options = FieldAttentionOptions(
            num_heads, scale=cfg["scale"], qkv_relu=cfg["qkv_relu"], residual=cfg["residual"],
            res_relu=cfg["res_relu"], out_relu=cfg["out_relu"], layer_norm=cfg["layer_norm"],
            ln_eps=cfg["ln_eps"])
        self._op_options = dataclasses.asdict(self.options)   # the op's keyword arguments
        project = cfg["residual"] == "project"
        norm = cfg["layer_norm"] != "none" and cfg["ln_affine"]

        def param(present: bool, *shape: int) -> nn.Parameter | None:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype)) if present else None

        self.w_qkv = param(True, in_dim, 3 * width)
        self.b_qkv = param(cfg["qkv_bias"], 3 * width)
        self.w_res = param(project, in_dim, width)
        self.b_res = param(project and cfg["res_bias"], width)
        self.ln_weight = param(norm, width)
        self.ln_bias = param(norm, width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        width = self.num_heads * self.head_dim
        weights = [self.w_qkv[:, i * width:(i + 1) * width] for i in range(3)]
        weights += [self.w_res] if self.w_res is not None else []
        biases = [b for b in (self.b_qkv, self.b_res) if b is not None]
        for w in weights:
            if self.config["init"] == "xavier":
                nn.init.xavier_uniform_(w)
            else:
                nn.init.normal_(w, std=0.05)
        for b in biases:
            if self.config["init"] == "xavier":
                nn.init.zeros_(b)
            else:
                nn.init.normal_(b, std=0.05)
        if self.ln_weight is not None:
            nn.init.ones_(self.ln_weight)
            nn.init.zeros_(self.ln_bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """``x [B, M, in_dim]`` -> ``Y [B, M, H*dh]``, or ``(Y, A [B, H, M, M])``."""
        return field_attention(x, self.w_qkv, self.b_qkv, self.w_res, self.b_res, self.ln_weight,
                               self.ln_bias, return_attention=return_attention, **self._op_options)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"in_dim={self.in_dim}, head_dim={self.head_dim}, num_heads={self.num_heads}, "
                f"variant={self.variant!r}, residual={cfg['residual']!r}, layer_norm={cfg['layer_norm']!r}")
