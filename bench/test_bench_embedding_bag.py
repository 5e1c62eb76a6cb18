"""Embedding bag over 26 fields: fastint's table-batched op vs what peers do (one nn.EmbeddingBag
per field, in a Python loop) vs one F.embedding_bag over a packed table.

    pytest bench/test_bench_embedding_bag.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

from bench.common import DEVICE, forward_backward, measure
from fastint.ops import embedding_bag

FIELDS, ROWS_PER_FIELD = 26, 10_000


def make_inputs(batch: int, dim: int, pooling: int):
    """CSR bags (sample-major, ``pooling`` ids each) into a packed table of 26 x 10k rows."""
    weight = torch.randn(FIELDS * ROWS_PER_FIELD, dim, device=DEVICE, requires_grad=True)
    local = torch.randint(0, ROWS_PER_FIELD, (batch, FIELDS, pooling), device=DEVICE)
    packed = local + torch.arange(FIELDS, device=DEVICE).view(1, -1, 1) * ROWS_PER_FIELD
    offsets = torch.arange(0, batch * FIELDS * pooling + 1, pooling, device=DEVICE)
    return weight, local, packed, offsets


def providers(weight, local, packed, offsets, pooling):
    batch, dim = local.shape[0], weight.shape[1]
    tables = [torch.nn.EmbeddingBag(ROWS_PER_FIELD, dim, mode="sum").to(DEVICE) for _ in range(FIELDS)]
    per_field_offsets = torch.arange(0, batch * pooling, pooling, device=DEVICE)
    flat, starts = packed.reshape(-1), offsets[:-1]
    return {
        "fastint": (lambda: embedding_bag(flat, weight, offsets, num_fields=FIELDS), [weight]),
        "per_field_nn_embedding_bag": (
            lambda: torch.stack([tables[f](local[:, f].reshape(-1), per_field_offsets)
                                 for f in range(FIELDS)], 1),
            [t.weight for t in tables]),
        "packed_F_embedding_bag": (
            lambda: F.embedding_bag(flat, weight, starts, mode="sum").view(batch, FIELDS, dim), [weight]),
    }


BATCHES = [4096, 65536]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "per_field_nn_embedding_bag", "packed_F_embedding_bag"])
@pytest.mark.parametrize("pooling", [1, 8])
@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("batch", BATCHES)
def test_embedding_bag(benchmark, batch, dim, pooling, provider, mode):
    if DEVICE == "cpu" and batch * pooling > 65536:
        pytest.skip("CPU run capped at 65,536 ids per field to keep it short")
    inputs = make_inputs(batch, dim, pooling)
    fn, leaves = providers(*inputs, pooling)[provider]
    run = fn if mode == "forward" else forward_backward(fn, *leaves)
    with torch.no_grad() if mode == "forward" else torch.enable_grad():
        rounds = 10 if DEVICE == "cuda" else 20 if batch <= 4096 else 5  # small CPU cases are noisy
        measure(benchmark, run, rounds=rounds, warmup=2, op="embedding_bag", provider=provider, mode=mode,
                dtype="float32", shape=dict(B=batch, M=FIELDS, D=dim, pooling=pooling))
