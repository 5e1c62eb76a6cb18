"""Frozen option objects of the fused ops: one definition carried by the public op, its custom op,
its kernels and its reference, so that adding an option touches one class."""
from __future__ import annotations

import dataclasses
import math

RESIDUALS = ("none", "identity", "project")
LAYER_NORMS = ("none", "after", "before")

# dataclass field annotation (a string under postponed evaluation) -> torch.library schema type
_SCHEMA_TYPES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "float | None": "float?"}


def schema_arguments(options_type: type) -> str:
    """The options as torch.library schema arguments, e.g. ``"int num_heads, float? scale, ..."``,
    in field order: custom ops take them flat and rebuild the object with ``options_type(*args)``."""
    return ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in dataclasses.fields(options_type))


@dataclasses.dataclass(frozen=True)
class FieldAttentionOptions:
    """Structure of one AutoInt interacting layer (see ``fastint.ops.field_attention``).

    ``num_heads`` ``H``; ``scale`` of the scores (``None``: ``1/sqrt(dh)``); ReLU on Q/K/V
    (``qkv_relu``), on the projected residual (``res_relu``) and on the output (``out_relu``);
    ``residual`` ``"project"`` (``act(x W_res + b_res)``), ``"identity"`` (``x``) or ``"none"``;
    ``layer_norm`` ``"none"``, ``"after"`` (``LN(act_out(Z))``) or ``"before"``
    (``act_out(LN(Z))``) with epsilon ``ln_eps``.
    """
    num_heads: int
    scale: float | None = None
    qkv_relu: bool = False
    residual: str = "project"
    res_relu: bool = False
    out_relu: bool = True
    layer_norm: str = "none"
    ln_eps: float = 1e-5

    def __post_init__(self):
        if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        if self.layer_norm not in LAYER_NORMS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {self.layer_norm!r}")
        # normalise the types the custom-op schema declares (e.g. numpy ints, 1 for True)
        for name, kind in (("qkv_relu", bool), ("res_relu", bool), ("out_relu", bool), ("ln_eps", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.scale is not None:
            object.__setattr__(self, "scale", float(self.scale))

    def score_scale(self, head_dim: int) -> float:
        """The scale applied to ``Q K^T``: ``scale``, or ``1/sqrt(head_dim)`` when it is ``None``."""
        return 1.0 / math.sqrt(head_dim) if self.scale is None else self.scale

    def astuple(self) -> tuple:
        """The fields in order (the flat form custom ops take)."""
        return dataclasses.astuple(self)
