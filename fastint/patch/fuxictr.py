"""FuxiCTR (2.3.10 with its model zoo): AutoInt's ``MultiHeadSelfAttention`` ->
``field_attention``; AFM's attention pooling -> ``afm_pooling``; InterHAt's attentional
aggregation -> ``hierarchical_aggregation``.

The model-zoo classes are not importable from a package (users put ``model_zoo/<Model>/src`` on
``sys.path``), so they are recognised by name, by coming from a file that imports FuxiCTR's
``BaseModel``, and by the structure the fused forward relies on, which is checked first:

- AutoInt ``MultiHeadSelfAttention(input_dim, attention_dim, num_heads, dropout_rate,
  use_residual, use_scale, layer_norm)``: bias-free ``W_q, W_k, W_v`` (head split
  ``view(B, M, H, dh).transpose(1, 2)``, fastint's layout), scores divided by ``sqrt(dh)`` only
  with ``use_scale``, residual ``W_res(x)`` when ``input_dim != attention_dim`` else ``x`` (none
  without ``use_residual``), then ``LayerNorm`` if any, then ReLU: ``layer_norm="before"``.
  Left alone: ``dropout_rate > 0`` (dropout on the attention probabilities, which the fused op
  does not have).
- AFM's pooling lives in the model's ``forward``: the model's forward is replaced by the same
  computation with ``attention`` (``Linear(k, t) -> ReLU -> Linear(t, 1, bias=False) ->
  Softmax(dim=1)``) and the weighted sum fused; ``dropout2`` and ``weight_p`` stay FuxiCTR's.
  Left alone: ``use_attention=False`` (plain sum, nothing to fuse) and ``attention_dropout[0] >
  0`` (dropout on the attention weights).
- InterHAt's ``order`` aggregations ``X_{p+1} = u_p * X_1 + X_p`` and the final
  ``attentional_score`` over ``U`` run as two ``hierarchical_aggregation`` calls (orders
  ``1..K`` on ``X_1``, then one order on ``U``); the attention and feed-forward blocks stay
  FuxiCTR's. Its ``MultiHeadSelfAttention`` is not patched: it projects the attention output
  (``W_res``) before the residual, which ``field_attention`` does not express, and for
  ``num_heads > 1`` it splits heads with ``view(B * H, -1, dh)`` (no transpose: each "head"
  mixes fields and head slices). That is a bug of the model, and fastint keeps it as FuxiCTR
  computes it: the patched InterHAt gives exactly the unpatched model's outputs for any
  ``num_heads``, and the report lists the attention block as left alone.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from fastint.ops.afm_pooling import afm_pooling
from fastint.ops.field_attention import field_attention
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.patch._core import Patcher

LIBRARY = "FuxiCTR"


def _base_model() -> type | None:
    models = sys.modules.get("fuxictr.pytorch.models")
    return None if models is None else getattr(models, "BaseModel", None)


def _from_model_zoo(module: nn.Module, class_name: str) -> bool:
    """``module`` is an instance of a class ``class_name`` defined in a model-zoo file."""
    base = _base_model()
    cls = type(module)
    return (base is not None and cls.__name__ == class_name
            and getattr(sys.modules.get(cls.__module__), "BaseModel", None) is base)


def _is_bias_free_linear(layer, in_features: int | None = None, out_features: int | None = None) -> bool:
    return (type(layer) is nn.Linear and layer.bias is None
            and in_features in (None, layer.in_features) and out_features in (None, layer.out_features))


def _attention_mlp_problem(seq) -> str | None:
    """Why ``seq`` is not ``Linear(k, t) -> ReLU -> Linear(t, 1, bias=False) -> Softmax(dim=1)``."""
    if not (isinstance(seq, nn.Sequential) and len(seq) == 4):
        return "the attention network is not Linear -> ReLU -> Linear -> Softmax"
    first, act, second, softmax = seq
    if not (type(first) is nn.Linear and first.bias is not None and type(act) is nn.ReLU
            and _is_bias_free_linear(second, first.out_features, 1)
            and type(softmax) is nn.Softmax and softmax.dim == 1):
        return "the attention network is not Linear(k, t) -> ReLU -> Linear(t, 1, bias=False) -> Softmax(dim=1)"
    return None


# --- AutoInt's MultiHeadSelfAttention ---------------------------------------------------------

def _is_autoint_attention(module: nn.Module) -> bool:
    return _from_model_zoo(module, "MultiHeadSelfAttention") and hasattr(module, "dot_attention")


def _autoint_attention_problem(m: nn.Module) -> str | None:
    dropout = getattr(m.dot_attention, "dropout", None)
    if dropout is not None and dropout.p > 0:
        return f"dropout on the attention probabilities (dropout_rate={dropout.p}) is not fused"
    width = m.num_heads * m.head_dim
    if not all(_is_bias_free_linear(w, out_features=width) for w in (m.W_q, m.W_k, m.W_v)):
        return "W_q/W_k/W_v are not bias-free Linear layers of width num_heads * head_dim"
    if m.W_res is not None and not _is_bias_free_linear(m.W_res, m.W_q.in_features, width):
        return "W_res is not a bias-free Linear(input_dim, attention_dim)"
    ln = m.layer_norm
    if ln is not None and (type(ln) is not nn.LayerNorm or tuple(ln.normalized_shape) != (width,)):
        return "layer_norm is not a LayerNorm over the attention width"
    return None


def _autoint_attention_forward(self, X: torch.Tensor) -> torch.Tensor:
    """``[B, M, input_dim] -> [B, M, attention_dim]``, as the model zoo's forward."""
    w_qkv = torch.cat((self.W_q.weight, self.W_k.weight, self.W_v.weight), dim=0).t()
    projected = self.use_residual and self.W_res is not None
    residual = ("project" if projected else "identity") if self.use_residual else "none"
    ln = self.layer_norm
    return field_attention(
        X, w_qkv, w_res=self.W_res.weight.t() if projected else None,
        ln_weight=None if ln is None else ln.weight, ln_bias=None if ln is None else ln.bias,
        num_heads=self.num_heads, scale=1.0 / self.scale if self.scale else 1.0,
        residual=residual, out_relu=True, layer_norm="none" if ln is None else "before",
        ln_eps=1e-5 if ln is None else ln.eps)


# --- AFM ---------------------------------------------------------------------------------------

def _is_afm(module: nn.Module) -> bool:
    return _from_model_zoo(module, "AFM")


def _afm_problem(m: nn.Module) -> str | None:
    if not m.use_attention:
        return "use_attention=False: a plain sum of the pair products, nothing to fuse"
    if m.dropout1.p > 0:
        return f"dropout on the attention weights (attention_dropout[0]={m.dropout1.p}) is not fused"
    return _attention_mlp_problem(m.attention)


def _afm_forward(self, inputs) -> dict:
    """The model zoo's ``AFM.forward`` with the attention pooling fused."""
    X = self.get_inputs(inputs)
    feature_emb = self.embedding_layer(X)
    first, _, second, _ = self.attention
    pooled = afm_pooling(feature_emb, first.weight.t(), first.bias, second.weight.view(-1))
    y_pred = self.lr_layer(X) + self.weight_p(self.dropout2(pooled))
    return {"y_pred": self.output_activation(y_pred)}


# --- InterHAt ----------------------------------------------------------------------------------

def _is_interhat(module: nn.Module) -> bool:
    return _from_model_zoo(module, "InterHAt")


def _is_interhat_attention(module: nn.Module) -> bool:
    return _from_model_zoo(module, "MultiHeadSelfAttention") and hasattr(module, "dot_product_attention")


def _interhat_problem(m: nn.Module) -> str | None:
    aggregations = [*m.aggregation_layers, m.attentional_score]
    for aggregation in aggregations:
        problem = _attention_mlp_problem(getattr(aggregation, "agg", None))
        if problem is not None:
            return problem
    if len({a.agg[0].out_features for a in aggregations[:-1]}) > 1:
        return "the aggregation orders have different hidden sizes"
    return None


def _interhat_attention_problem(m: nn.Module) -> str:
    return ("InterHAt's attention projects its output (W_res) before the residual, which "
            "field_attention does not express; it stays FuxiCTR's own"
            + (f", num_heads={m.num_heads} head split included" if m.num_heads > 1 else ""))


def _stacked(aggregations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W [K, d, a]``, ``b [K, a]``, ``c [K, a]`` of ``K`` aggregations (views of their weights)."""
    weight = torch.stack([a.agg[0].weight.t() for a in aggregations])
    bias = torch.stack([a.agg[0].bias for a in aggregations])
    context = torch.stack([a.agg[2].weight[0] for a in aggregations])
    return weight, bias, context


def _interhat_forward(self, inputs) -> dict:
    """The model zoo's ``InterHAt.forward`` with the aggregations fused."""
    X = self.get_inputs(inputs)
    X1 = self.feedforward(self.multi_head_attention(self.embedding_layer(X)))
    U = hierarchical_aggregation(X1, *_stacked(self.aggregation_layers))        # [B, K, d]
    u_f = hierarchical_aggregation(U, *_stacked([self.attentional_score]))[:, 0]
    return {"y_pred": self.output_activation(self.mlp(u_f))}


PATCHERS = (
    Patcher(LIBRARY, "AutoInt MultiHeadSelfAttention", "field_attention", _is_autoint_attention,
            _autoint_attention_problem, _autoint_attention_forward),
    Patcher(LIBRARY, "AFM attention pooling", "afm_pooling", _is_afm, _afm_problem, _afm_forward),
    Patcher(LIBRARY, "InterHAt attentional aggregation", "hierarchical_aggregation", _is_interhat,
            _interhat_problem, _interhat_forward),
    Patcher(LIBRARY, "InterHAt MultiHeadSelfAttention", "field_attention", _is_interhat_attention,
            _interhat_attention_problem, forward=None),
)
