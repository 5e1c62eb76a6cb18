"""One training step (forward, backward, Adam) of each model on a Criteo-shaped batch
(13 numeric + 26 categorical fields): fastint kernels vs the eager reference path vs
torch.compile of the reference path.

    pytest bench/test_bench_models.py --benchmark-only
"""
import pytest
import torch

from bench.common import DEVICE, measure, require_gpu_for_kernels
from fastint import Batch, Field, Schema, use_backend
from fastint.models import build_model

SCHEMA = Schema(tuple(Field(f"I{i}", "numeric") for i in range(1, 14))
                + tuple(Field(f"C{i}", "categorical", vocab_size=10_000) for i in range(1, 27)))
BATCH = 16384 if DEVICE == "cuda" else 1024
HPARAMS = {
    "autoint": dict(embed_dim=16, num_layers=3, num_heads=2, head_dim=32),
    "afm": dict(embed_dim=16, attention_dim=16),
    "interhat": dict(embed_dim=16, attention_dim=16, num_orders=3),
    # the retrained AIM of a Criteo-sized search (AIM's d=20): all 741 pairs x 4 functions gated,
    # a seeded third of the (function, pair) entries surviving, plus the MLP
    "aim": dict(stage="retrain", embed_dim=20, mlp_hidden_units=(400, 400, 400)),
}


def _aim_selection() -> dict:
    """A retrain selection for ``SCHEMA``: every pair, a third of the (function, pair) gates kept."""
    from fastint.reference.multi_function_interactions import all_tuples

    pairs = all_tuples(SCHEMA.num_fields, 2)
    generator = torch.Generator().manual_seed(0)
    gates = torch.rand(pairs.shape[0], 4, generator=generator)
    gates = torch.where(gates < 1 / 3, 0.1 + gates, torch.zeros(()))
    keep = gates.any(1)
    return dict(tuples=pairs[keep].tolist(), gates=gates[keep].tolist())


def _hparams(name: str) -> dict:
    return {**HPARAMS[name], **(_aim_selection() if name == "aim" else {})}


def criteo_like_batch(n: int) -> Batch:
    return Batch(categorical=torch.randint(0, 10_000, (n, 26)), numeric=torch.rand(n, 13),
                 label=torch.randint(0, 2, (n,)).float()).to(DEVICE)


@pytest.mark.parametrize("provider", ["fastint", "eager", "compiled"])
@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_train_step(benchmark, name, provider):
    require_gpu_for_kernels(provider)
    model = build_model(name, SCHEMA, **_hparams(name)).to(DEVICE)
    forward = torch.compile(model) if provider == "compiled" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = criteo_like_batch(BATCH)
    backend = "auto" if provider == "fastint" else "reference"

    def step():
        with use_backend(backend):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(batch), batch.label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    measure(benchmark, step, rounds=10, op=f"model:{name}", provider=provider, mode="train_step",
            dtype="float32", shape=dict(B=BATCH, **HPARAMS[name]))
