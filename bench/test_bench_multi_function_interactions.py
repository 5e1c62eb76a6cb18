"""multi_function_interactions: fused Triton kernels vs eager reference vs torch.compile(reference).

AIM's Criteo setting: M = 39 fields, all P = 741 pairs, F = 4 function-wise tables and functions
(inner, kernel, scalar, outer), d = 20, batch 4,096 and 65,536; forward, and forward+backward
(upstream gradient into Z). Plus the retrained model's situation: the same call with 10% of the
(function, pair) entries active (``active=0.1``). The reference materialises the ``[B, P, d]``
products of every function (as the authors' code does): cases whose estimate exceeds half the
GPU's memory are skipped for it (peak memory goes to extra_info for the rest).
Goal (issue 10): forward+backward >= 5x eager at B = 65,536 with <= 20% of its peak memory.
Run: ``pytest bench/test_bench_multi_function_interactions.py --benchmark-only``.
"""
import pytest
import torch

from bench.common import (DEVICE, DTYPES, ON_GPU, QUICK, dtype_of, forward_backward, forward_only, leaf,
                          measure, op_providers, require_gpu_for_kernels, skip_reference_over_memory)
from fastint.ops.multi_function_interactions import multi_function_interactions
from fastint.reference.multi_function_interactions import all_tuples
from fastint.reference.multi_function_interactions import multi_function_interactions as reference

BATCHES = [4096, 65536] if ON_GPU else [256]
FIELDS, DIM, FUNCTIONS = 39, 20, 4
ACTIVE = [1.0] if QUICK or not ON_GPU else [1.0, 0.1]
PROVIDERS = op_providers(multi_function_interactions, reference)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("active", ACTIVE)
@pytest.mark.parametrize("batch", BATCHES)
def test_multi_function_interactions(benchmark, batch, active, dtype, provider, mode):
    require_gpu_for_kernels(provider)
    tuples = all_tuples(FIELDS, 2, device=DEVICE)
    pairs = tuples.shape[0]
    # the reference holds about 5 tensors of [B, P, d] per function (rows, products, their grads)
    skip_reference_over_memory(provider, 5 * FUNCTIONS, batch * pairs * DIM, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    mask = None if active == 1.0 else (torch.rand(FUNCTIONS, pairs, generator=generator) < active).to(DEVICE)
    inputs = (leaf(batch, FUNCTIONS, FIELDS, DIM, scale=DIM ** -0.25, dtype=dtype),
              leaf(pairs, DIM, dtype=dtype), leaf(pairs, dtype=dtype), leaf(2, DIM, scale=DIM ** -0.25, dtype=dtype))
    fn = PROVIDERS[provider]

    def call():
        return fn(inputs[0], tuples, *inputs[1:], mask=mask)

    grad = torch.randn(batch, FUNCTIONS, pairs, device=DEVICE, dtype=dtype_of(dtype))
    step = forward_only(call) if mode == "forward" else forward_backward(call, *inputs, grads=grad)
    measure(benchmark, step, op="multi_function_interactions", provider=provider, mode=mode, dtype=dtype,
            shape=dict(B=batch, M=FIELDS, P=pairs, F=FUNCTIONS, d=DIM, active=active))
