"""afm_pooling: fused Triton kernel vs eager reference vs torch.compile(reference).

AFM's setting: M in {10, 23, 39} fields (P = 45, 253, 741 pairs), k in {16, 64, 256}, t = k,
batch up to 65,536; forward, and forward+backward (upstream gradient into the pooled output).
The reference materialises ``[B, P, k]`` and ``[B, P, t]``: cases whose estimate exceeds half the
GPU's memory are skipped for it (peak memory goes to extra_info for the rest).
Run: ``pytest bench/test_bench_afm_pooling.py --benchmark-only``.
"""
import pytest
import torch

from bench.common import (BATCHES, DEVICE, DTYPES, FIELDS, ON_GPU, dtype_of, forward_backward,
                          forward_only, leaf, measure, op_providers, require_gpu_for_kernels,
                          skip_reference_over_memory)
from fastint.ops.afm_pooling import afm_pooling
from fastint.reference.afm_pooling import afm_pooling as reference

DIMS = [16, 64, 256] if ON_GPU else [16, 64]
PROVIDERS = op_providers(afm_pooling, reference)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("batch", BATCHES)
def test_afm_pooling(benchmark, batch, fields, dim, dtype, provider, mode):
    require_gpu_for_kernels(provider)
    # the reference holds about 4 tensors of [B, P, k] (p, hidden, relu, grads) at once
    skip_reference_over_memory(provider, 4, batch * fields * (fields - 1) // 2 * dim, dtype)
    inputs = (leaf(batch, fields, dim, dtype=dtype), leaf(dim, dim, scale=dim ** -0.5, dtype=dtype),
              leaf(dim, scale=0.1, dtype=dtype), leaf(dim, dtype=dtype))
    fn = PROVIDERS[provider]
    grad = torch.randn(batch, dim, device=DEVICE, dtype=dtype_of(dtype))
    step = (forward_only(lambda: fn(*inputs)) if mode == "forward"
            else forward_backward(lambda: fn(*inputs), *inputs, grads=grad))
    measure(benchmark, step, op="afm_pooling", provider=provider, mode=mode, dtype=dtype,
            shape=dict(B=batch, M=fields, P=fields * (fields - 1) // 2, k=dim, t=dim))
