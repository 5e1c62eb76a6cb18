"""hierarchical_aggregation: fused Triton kernel vs eager reference vs torch.compile(reference).

InterHAt's setting: d = a = 16, K = 3 orders, M in {10, 23, 39} fields, batch up to 65,536;
forward, and forward+backward with upstream gradients into both outputs (U and alpha).
Run: ``pytest bench/test_bench_hierarchical_aggregation.py --benchmark-only``.
"""
import pytest
import torch

from bench.common import DEVICE, forward_backward, forward_only, measure, op_providers, require_gpu_for_kernels
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as reference

BATCHES = [4096, 16384, 65536] if DEVICE == "cuda" else [512]
FIELDS = [10, 23, 39]
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
DIM = ATT = 16
ORDERS = 3



PROVIDERS = op_providers(hierarchical_aggregation, reference)


def _inputs(batch: int, fields: int, dtype: torch.dtype):
    def leaf(*shape, scale):
        return (torch.randn(*shape, device=DEVICE) * scale).to(dtype).requires_grad_()
    return (leaf(batch, fields, DIM, scale=0.5), leaf(ORDERS, DIM, ATT, scale=DIM ** -0.5),
            leaf(ORDERS, ATT, scale=0.1), leaf(ORDERS, ATT, scale=0.5))


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("batch", BATCHES)
def test_hierarchical_aggregation(benchmark, batch, fields, dtype, provider, mode):
    require_gpu_for_kernels(provider)
    inputs = _inputs(batch, fields, dtype)
    fn = PROVIDERS[provider]
    grads = (torch.randn(batch, ORDERS, DIM, device=DEVICE, dtype=dtype),
             torch.randn(batch, ORDERS, fields, device=DEVICE, dtype=dtype))
    step = (forward_only(lambda: fn(*inputs)) if mode == "forward"
            else forward_backward(lambda: fn(*inputs), *inputs, grads=grads))
    group = f"hierarchical_aggregation-{mode}-B{batch}-M{fields}-{str(dtype).removeprefix('torch.')}"
    benchmark.group = group
    measure(benchmark, step, rounds=20 if DEVICE == "cuda" else 3, warmup=3 if DEVICE == "cuda" else 1,
            op="hierarchical_aggregation", provider=provider, mode=mode, batch=batch, fields=fields,
            dim=DIM, attention_dim=ATT, orders=ORDERS, dtype=str(dtype))
