"""field_attention (AutoInt's interacting layer): fused Triton kernels vs eager reference vs
torch.compile(reference) vs a DeepCTR-Torch-style eager layer (per-head split / stack / matmul).

AutoInt's setting: d = 16, H = 2, dh = 32, M in {10, 23, 39} fields, batch 4k..64k; variants
"deepctr" (no bias, scale 1, W_res, ReLU: every provider) and "tf" (bias + ReLU on Q/K/V and the
residual, scale 1/sqrt(dh), ReLU, LayerNorm after: no DeepCTR formulation); forward, and
forward+backward (sum of Y) into x and every weight.
Run: ``pytest bench/test_bench_field_attention.py --benchmark-only``.
"""
import pytest
import torch

from bench.common import (BATCHES, DTYPES, FIELDS, forward_backward, forward_only, leaf, measure,
                          op_providers, require_gpu_for_kernels)
from fastint.ops.field_attention import field_attention
from fastint.reference.field_attention import field_attention as reference

DIM, HEADS, HEAD_DIM = 16, 2, 32
WIDTH = HEADS * HEAD_DIM

OPTIONS = {
    "deepctr": dict(num_heads=HEADS, scale=1.0, residual="project", out_relu=True),
    "tf": dict(num_heads=HEADS, qkv_relu=True, residual="project", res_relu=True, out_relu=True,
               layer_norm="after"),
}
PRESENT = {"deepctr": ("w_res",), "tf": ("b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")}


def deepctr_style(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, *, num_heads, **_):
    """DeepCTR-Torch's formulation: full-width projections, heads split and stacked on a new
    leading axis, einsum scores, softmax, matmul, heads concatenated back, residual, ReLU."""
    w_q, w_k, w_v = w_qkv.chunk(3, dim=1)
    head_dim = w_q.shape[1] // num_heads

    def heads(w):
        return torch.stack(torch.split(torch.tensordot(x, w, dims=([-1], [0])), head_dim, dim=2))

    q, k, v = heads(w_q), heads(w_k), heads(w_v)                       # [H, B, M, dh]
    attention = torch.softmax(torch.einsum("hbik,hbjk->hbij", q, k), dim=-1)
    out = torch.cat(torch.split(torch.matmul(attention, v), 1), dim=-1).squeeze(0)
    return torch.relu(out + torch.tensordot(x, w_res, dims=([-1], [0])))


PROVIDERS = {**op_providers(field_attention, reference), "deepctr_style": deepctr_style}


def _inputs(batch: int, fields: int, variant: str, dtype: str):
    optional = {"b_qkv": (3 * WIDTH,), "w_res": (DIM, WIDTH), "b_res": (WIDTH,), "ln_weight": (WIDTH,),
                "ln_bias": (WIDTH,)}
    scales = {"w_res": DIM ** -0.5, "ln_weight": 1.0}
    return [leaf(batch, fields, DIM, dtype=dtype), leaf(DIM, 3 * WIDTH, scale=DIM ** -0.5, dtype=dtype)] + [
        leaf(*shape, scale=scales.get(name, 0.1), dtype=dtype) if name in PRESENT[variant] else None
        for name, shape in optional.items()]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled", "deepctr_style"])
@pytest.mark.parametrize("variant", ["deepctr", "tf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("batch", BATCHES)
def test_field_attention(benchmark, batch, fields, dtype, variant, provider, mode):
    require_gpu_for_kernels(provider)
    if provider == "deepctr_style" and variant != "deepctr":
        pytest.skip("the DeepCTR-Torch formulation has no biases, Q/K/V ReLU or LayerNorm")
    inputs = _inputs(batch, fields, variant, dtype)
    fn, options = PROVIDERS[provider], OPTIONS[variant]

    def call():
        return fn(*inputs, **options)

    leaves = [t for t in inputs if t is not None]
    step = forward_only(call) if mode == "forward" else forward_backward(call, *leaves)
    measure(benchmark, step, op="field_attention", provider=provider, mode=mode, dtype=dtype,
            shape=dict(variant=variant, B=batch, M=fields, d=DIM, H=HEADS, dh=HEAD_DIM))
