"""hierarchical_aggregation: fused Triton kernel vs eager reference vs torch.compile(reference).

InterHAt's setting: d = a = 16, K = 3 orders, M in {10, 23, 39} fields, batch up to 65,536;
forward, and forward+backward with upstream gradients into both outputs (U and alpha).
Run: ``pytest bench/test_bench_hierarchical_aggregation.py --benchmark-only``.
"""
import pytest
import torch

from bench.common import (BATCHES, DEVICE, DTYPES, FIELDS, dtype_of, forward_backward, forward_only,
                          leaf, measure, op_providers, require_gpu_for_kernels)
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as reference

DIM = ATT = 16
ORDERS = 3
PROVIDERS = op_providers(hierarchical_aggregation, reference)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("batch", BATCHES)
def test_hierarchical_aggregation(benchmark, batch, fields, dtype, provider, mode):
    require_gpu_for_kernels(provider)
    inputs = (leaf(batch, fields, DIM, scale=0.5, dtype=dtype),
              leaf(ORDERS, DIM, ATT, scale=DIM ** -0.5, dtype=dtype),
              leaf(ORDERS, ATT, scale=0.1, dtype=dtype), leaf(ORDERS, ATT, scale=0.5, dtype=dtype))
    fn = PROVIDERS[provider]
    grads = (torch.randn(batch, ORDERS, DIM, device=DEVICE, dtype=dtype_of(dtype)),
             torch.randn(batch, ORDERS, fields, device=DEVICE, dtype=dtype_of(dtype)))

    def call():
        return fn(*inputs, return_attention=True)

    step = forward_only(call) if mode == "forward" else forward_backward(call, *inputs, grads=grads)
    measure(benchmark, step, op="hierarchical_aggregation", provider=provider, mode=mode, dtype=dtype,
            shape=dict(B=batch, M=fields, d=DIM, a=ATT, K=ORDERS))
