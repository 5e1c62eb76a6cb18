"""One training step (forward, DeepCTR's loss and regulariser, backward, Adam) of DeepCTR-Torch's own
AutoInt and AFM on a Criteo-shaped batch (39 categorical fields), unpatched vs patched with
``fastint.patch``, and fastint's own model of the same structure beside them. Providers, as
``fastint.bench_report`` names them: ``fastint`` (the patched model), ``eager`` (DeepCTR's own,
unpatched) and ``fastint-model``.

    pytest bench/test_bench_patch.py --benchmark-only

On the CPU the patched layers run fastint's PyTorch reference (the fused kernels need CUDA): the
point there is that the patch does not slow a model down. Skipped when deepctr-torch is absent.
"""
import copy

import pytest
import torch

import fastint.patch
from bench.common import DEVICE, ON_GPU, QUICK, measure
from fastint import Batch, Field, Schema
from fastint.models import build_model
from tests.patch import peers

FIELDS, VOCAB, DIM = 39, 10_000, 16
BATCHES = [4096, 65536] if ON_GPU else [1024]
# DeepCTR's AutoInt: 3 interacting layers of 2 heads over d=16 (dh = 8), no DNN; AFM: t = 16
DEEPCTR = {"AutoInt": dict(att_layer_num=3, att_head_num=2, dnn_hidden_units=()),
           "AFM": dict(attention_factor=16)}
FASTINT = {"AutoInt": ("autoint", dict(embed_dim=DIM, num_layers=3, num_heads=2, head_dim=8, variant="deepctr")),
           "AFM": ("afm", dict(embed_dim=DIM, attention_dim=16))}
# in the report's terms: "fastint" is the patched DeepCTR model, "eager" DeepCTR's own (unpatched)
PROVIDERS = ["fastint", "eager", "fastint-model"]


def _deepctr_step(model, x, y):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = model.loss_func(model(x).squeeze(-1), y, reduction="sum") + model.get_regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _fastint_step(name, x, y):
    model_name, hparams = FASTINT[name]
    schema = Schema(tuple(Field(f"C{i}", "categorical", vocab_size=VOCAB) for i in range(FIELDS)))
    model = build_model(model_name, schema, **hparams).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = Batch(categorical=x.long(), numeric=None, label=y)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", sorted(DEEPCTR))
def test_deepctr_train_step(benchmark, name, batch, provider):
    if QUICK and batch != max(BATCHES):
        pytest.skip("quick size: the goal batch only")
    deepctr = peers.deepctr()
    features = [deepctr.inputs.SparseFeat(f"C{i}", VOCAB, embedding_dim=DIM) for i in range(FIELDS)]
    x = torch.randint(0, VOCAB, (batch, FIELDS), device=DEVICE).float()
    y = torch.randint(0, 2, (batch,), device=DEVICE).float()
    if provider == "fastint-model":
        step = _fastint_step(name, x, y)
    else:
        model = getattr(deepctr.models, name)(features, features, device=DEVICE, **DEEPCTR[name])
        model.compile("adam", "binary_crossentropy")
        if provider == "fastint":
            model = copy.deepcopy(model)
            assert fastint.patch.apply_to_deepctr(model).replaced
        step = _deepctr_step(model, x, y)
    measure(benchmark, step, op=f"deepctr:{name}", provider=provider, mode="train_step",
            dtype="float32", shape=dict(B=batch, M=FIELDS, d=DIM))
