"""26 one-id fields: fastint's table-batched embedding_bag vs torchrec's EmbeddingBagCollection
sharded by DistributedModelParallel (FBGEMM's table-batched kernel, rowwise Adagrad fused into its
backward), on one rank, forward and forward+backward. fastint's backward produces the dense
gradient of the packed table (an optimizer step comes on top); torchrec's updates the touched rows
inside the backward (no gradient is materialised).

    pytest bench/test_bench_torchrec.py --benchmark-only
"""
import pytest
import torch
import torch.distributed as dist

pytest.importorskip("torchrec")
pytest.importorskip("fbgemm_gpu")

from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402

from bench.common import DEVICE, forward_backward, measure  # noqa: E402
from fastint.ops import embedding_bag  # noqa: E402
from fastint.torchrec.distributed import EMBEDDING_OPTIMIZERS  # noqa: E402

FIELDS, ROWS_PER_FIELD = 26, 10_000


@pytest.fixture(scope="module")
def process_group():
    """DMP needs a process group: one rank, unless the run already has one."""
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if own:
        dist.destroy_process_group()


def torchrec_ebc(dim: int):
    """A DMP-sharded EBC of one table per field (table-wise, fused kernel, rowwise Adagrad)."""
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed import DistributedModelParallel
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name=f"t{f}", embedding_dim=dim, num_embeddings=ROWS_PER_FIELD,
                                                     feature_names=[f"f{f}"]) for f in range(FIELDS)],
                                 device=torch.device(DEVICE))
    _apply_optimizer_in_backward(EMBEDDING_OPTIMIZERS["rowwise_adagrad"], ebc.parameters(), {"lr": 0.01})
    return DistributedModelParallel(ebc, device=torch.device(DEVICE))


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("provider", ["fastint", "torchrec_tbe"])
@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("batch", [4096, 65536])
def test_embedding_fastint_vs_torchrec(benchmark, process_group, batch, dim, provider, mode):
    local = torch.randint(0, ROWS_PER_FIELD, (batch, FIELDS), device=DEVICE)
    if provider == "fastint":
        weight = torch.randn(FIELDS * ROWS_PER_FIELD, dim, device=DEVICE, requires_grad=True)
        packed = local + torch.arange(FIELDS, device=DEVICE) * ROWS_PER_FIELD

        def fn():
            return embedding_bag(packed, weight)                            # [B, 26, D]
        leaves = [weight]
    else:
        net = torchrec_ebc(dim)
        kjt = KeyedJaggedTensor(keys=[f"f{f}" for f in range(FIELDS)], values=local.t().reshape(-1),
                                lengths=torch.ones(batch * FIELDS, dtype=torch.long, device=DEVICE))

        def fn():
            return net(kjt).values()                                        # [B, 26 * D]
        leaves = []
    run = fn if mode == "forward" else forward_backward(fn, *leaves)
    with torch.no_grad() if mode == "forward" else torch.enable_grad():
        rounds = 10 if DEVICE == "cuda" else 10 if batch <= 4096 else 3
        measure(benchmark, run, rounds=rounds, warmup=2, op="embedding_torchrec", provider=provider, mode=mode,
                dtype="float32", shape=dict(B=batch, M=FIELDS, D=dim))
