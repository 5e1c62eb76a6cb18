"""Sharding a fastint model's torchrec tables with ``DistributedModelParallel`` (DMP), and its
sharded checkpoints. See the package docstring (``fastint.torchrec``) for the design."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec import optim as trec_optim
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingType

from fastint.torchrec.embedding import TorchrecFieldEmbedding

# "auto" (the planner's choice per table) or one of torchrec's sharding types
SHARDINGS = ("auto", *(t.value for t in ShardingType if t != ShardingType.DATA_PARALLEL))
# the optimizers FBGEMM fuses into the embedding backward (rows not in the batch are not touched);
# its CPU kernels have no Adam
EMBEDDING_OPTIMIZERS = {"rowwise_adagrad": trec_optim.RowWiseAdagrad, "adam": trec_optim.Adam, "sgd": trec_optim.SGD}
CUDA_ONLY = ("adam",)


class _Sharder(EmbeddingBagCollectionSharder):
    """torchrec's sharder, also offering row-wise sharding on CPU (torchrec lists it for CUDA only;
    FBGEMM's CPU kernels run it, and the 2-rank gloo test checks it against one process)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        extra = [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
        return types + [t for t in extra if t not in types] if compute_device_type == "cpu" else types


def torchrec_embeddings(model: nn.Module) -> list[TorchrecFieldEmbedding]:
    """The ``TorchrecFieldEmbedding`` modules inside ``model``."""
    return [m for m in model.modules() if isinstance(m, TorchrecFieldEmbedding)]


def shard_model(model: nn.Module, device: torch.device, *, sharding: str = "auto",
                optimizer: str = "rowwise_adagrad", lr: float = 0.01) -> DistributedModelParallel:
    """``DistributedModelParallel(model)`` over the default process group: every table of the model's
    ``TorchrecFieldEmbedding``s sharded ``sharding``-wise (``auto``: torchrec's planner chooses per
    table; ``row_wise`` leaves tables of fewer rows than ranks whole) with FBGEMM's fused kernel,
    ``optimizer`` (learning rate ``lr``) applied inside its backward; the rest of the model
    data-parallel (DDP). Rank 0's weights, embeddings included, are the initial weights of all
    ranks. ``model`` is sharded in place (its tables become the local shards); call the returned
    module to train.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    if optimizer not in EMBEDDING_OPTIMIZERS:
        raise ValueError(f"embedding optimizer must be one of {', '.join(EMBEDDING_OPTIMIZERS)}, got {optimizer!r}")
    if optimizer in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"embedding optimizer {optimizer} is fused on CUDA only (FBGEMM's CPU kernels have "
                         f"{', '.join(o for o in EMBEDDING_OPTIMIZERS if o not in CUDA_ONLY)})")
    embeddings = torchrec_embeddings(model)
    if not embeddings:
        raise ValueError("the model has no torchrec embeddings (build it with embedding='torchrec')")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for value in initial.values():
        dist.broadcast(value, src=0)
    _apply_optimizer_in_backward(EMBEDDING_OPTIMIZERS[optimizer],
                                 [p for e in embeddings for p in e.ebcs.parameters()], {"lr": lr, "eps": 1e-8})
    world = dist.get_world_size()
    # a table with fewer rows than ranks stays whole (FBGEMM's CPU kernel fails on an empty shard)
    constraints = None if sharding == "auto" else {
        c.name: ParameterConstraints(compute_kernels=["fused"], sharding_types=[
            "table_wise" if sharding == "row_wise" and c.num_embeddings < world else sharding])
        for e in embeddings for ebc in e.ebcs.values() for c in ebc.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type,
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world))),
        constraints=constraints)
    sharders = [_Sharder()]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    net = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders,
                                   env=ShardingEnv.from_process_group(dist.GroupMember.WORLD))
    net.load_state_dict(initial)
    return net


def save_sharded(net: DistributedModelParallel, path: str, weights_only: bool) -> dict:
    """Write the sharded tables (and, unless ``weights_only``, the fused optimizer's state) of
    ``net`` with ``torch.distributed.checkpoint`` into the directory ``path`` (every rank writes its
    shards; a collective). Returns the dense weights, the rest of the model's state dict (for rank 0
    to save with the dense optimizers)."""
    weights = net.state_dict()
    sharded = {k: v for k, v in weights.items() if isinstance(v, (ShardedTensor, DTensor))}
    state = {"model": sharded}
    if not weights_only:
        state["fused_optimizer"] = net.fused_optimizer.state_dict()
    dcp.save(state, checkpoint_id=path)
    return {k: v for k, v in weights.items() if k not in sharded}


def load_sharded(module: nn.Module, dense: dict, path: str, fused_optimizer=None) -> None:
    """Inverse of ``save_sharded``: the dense weights from ``dense``, the tables from the directory
    ``path``, and ``fused_optimizer``'s state when given. ``module`` is a DMP (a collective: each
    rank reads its shards, DCP reshards) or an unsharded model (one process reads whole tables)."""
    state = {"model": {k: v for k, v in module.state_dict().items() if k not in dense}}
    if fused_optimizer is not None:
        state["fused_optimizer"] = fused_optimizer.state_dict()
    dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    module.load_state_dict({**dense, **state["model"]})
    if fused_optimizer is not None:
        fused_optimizer.load_state_dict(state["fused_optimizer"])
