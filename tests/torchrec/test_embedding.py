"""fastint.torchrec: KeyedJaggedTensor <-> Batch conversions both ways, TorchrecFieldEmbedding against
FieldEmbedding (values and gradients), every model on torchrec embeddings against the same model on
FieldEmbedding, and the errors of the torchrec options."""
import pytest
import torch

from fastint.data.synthetic import make_synthetic
from fastint.models import MODELS, build_model
from fastint.nn.embedding import FieldEmbedding
from fastint.schema import Batch, Field, Schema
from fastint.train.trainer import TrainConfig, Trainer
from tests.torchrec import requires_torchrec

pytestmark = requires_torchrec

# kinds interleaved, both poolings, two numeric fields
SCHEMA = Schema((Field("c0", "categorical", 5), Field("n0", "numeric"), Field("m0", "multi", 4, pooling="mean"),
                 Field("c1", "categorical", 3), Field("m1", "multi", 6, pooling="sum"), Field("n1", "numeric")))
SMALL = {"autoint": dict(embed_dim=4, num_layers=1, num_heads=2, head_dim=4, dnn_hidden_units=(4,)),
         "afm": dict(embed_dim=4, attention_dim=4), "interhat": dict(embed_dim=4, attention_dim=4, num_heads=1),
         "aim": dict(embed_dim=4, mlp_hidden_units=(4,), mlp_in_search=True), "autofis": dict(embed_dim=4)}


def random_batch(size: int, canonical: bool = False, length: int = 3) -> Batch:
    """``canonical``: in-vocabulary ids, multi-valued ids left-aligned (what ``kjt_to_batch`` writes);
    otherwise also out-of-vocabulary / negative ids, padding anywhere, empty bags."""
    cat = torch.stack([torch.randint(0, 5, (size,)), torch.randint(0, 3, (size,))], 1)
    multi = torch.stack([torch.randint(0, 4, (size, length)), torch.randint(0, 6, (size, length))], 1)
    if not canonical:
        cat = cat + torch.randint(-1, 2, cat.shape) * 4          # some ids outside [0, V)
        multi = multi + (torch.rand(multi.shape) < 0.2) * 7       # some ids >= V
    counts = torch.randint(0, length + 1, (size, 2, 1))
    pad = torch.arange(length) >= counts if canonical else torch.rand(multi.shape) < 0.4
    multi = torch.where(pad, -1, multi)
    if canonical:
        multi = multi[..., :max(1, int(counts.max()))]
    return Batch(categorical=cat, numeric=torch.randn(size, 2), multi=multi)


def assert_batches_equal(a: Batch, b: Batch) -> None:
    for kind in ("categorical", "numeric", "multi"):
        assert torch.equal(getattr(a, kind), getattr(b, kind)), kind


@pytest.fixture(scope="module")
def trec():
    import fastint.torchrec
    return fastint.torchrec


def assert_kjts_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for part in ("values", "lengths", "weights"):
        assert torch.equal(getattr(a, part)(), getattr(b, part)()), part


def test_kjt_layout_of_a_small_batch(trec):
    batch = Batch(categorical=torch.tensor([[1, 7], [-1, 2]]), numeric=torch.tensor([[0.5, -1.0], [2.0, 3.0]]),
                  multi=torch.tensor([[[0, 3, -1], [9, -1, 2]], [[-1, -1, -1], [5, -1, -1]]]))
    kjt = trec.batch_to_kjt(batch, SCHEMA)
    assert kjt.keys() == trec.kjt_keys(SCHEMA) == ["c0", "c1", "n0", "n1", "m0", "m1"]
    # feature-major: per key, sample 0 then sample 1; OOV ids -> row V (c1: 7 -> 3, c0: -1 -> 5, m1: 9 -> 6)
    assert kjt.values().tolist() == [1, 5, 3, 2, 0, 0, 0, 0, 0, 3, 6, 2, 5]
    assert kjt.lengths().tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 2, 1]
    assert kjt.weights().tolist() == [1, 1, 1, 1, 0.5, 2.0, -1.0, 3.0, 1, 1, 1, 1, 1]
    back = trec.kjt_to_batch(kjt, SCHEMA)
    assert back.categorical.tolist() == [[1, 3], [5, 2]] and torch.equal(back.numeric, batch.numeric)
    assert back.multi.tolist() == [[[0, 3], [6, 2]], [[-1, -1], [5, -1]]]
    table = FieldEmbedding(SCHEMA, 4)
    assert torch.equal(table(back), table(batch))  # the same bags of rows
    batch.numeric[1, 0] = float("nan")
    with pytest.raises(ValueError, match="batch.numeric contains NaN"):
        trec.batch_to_kjt(batch, SCHEMA)


def test_kjt_round_trips(trec):
    torch.manual_seed(0)
    canonical = random_batch(37, canonical=True)
    assert_batches_equal(trec.kjt_to_batch(trec.batch_to_kjt(canonical, SCHEMA), SCHEMA), canonical)
    kjt = trec.batch_to_kjt(random_batch(41), SCHEMA)
    assert_kjts_equal(trec.batch_to_kjt(trec.kjt_to_batch(kjt, SCHEMA), SCHEMA), kjt)
    # any key order reads the same; a longer padding is kept
    reversed_keys = kjt.permute(list(reversed(range(len(kjt.keys())))))
    assert reversed_keys.keys()[0] == "m1"
    assert_batches_equal(trec.kjt_to_batch(reversed_keys, SCHEMA), trec.kjt_to_batch(kjt, SCHEMA))
    assert trec.kjt_to_batch(kjt, SCHEMA, multi_length=5).multi.shape == (41, 2, 5)
    with pytest.raises(ValueError, match="more than multi_length=1"):
        trec.kjt_to_batch(kjt, SCHEMA, multi_length=1)
    with pytest.raises(ValueError, match=r"no key\(s\) \['n1'\]"):
        trec.kjt_to_batch(kjt.permute([0, 1, 2, 4, 5]), SCHEMA)
    with pytest.raises(ValueError, match=r"batch.numeric must be \[37, 2\] for this schema, got None"):
        trec.batch_to_kjt(Batch(categorical=canonical.categorical, multi=canonical.multi), SCHEMA)


@pytest.mark.parametrize("tables, names", [
    ("per_field", {"ids": ["t_c0", "t_m0", "t_c1", "t_m1"], "numeric": ["t_n0", "t_n1"]}),
    ("grouped", {"ids": ["sum_fields", "mean_fields"], "numeric": ["numeric_fields"]})])
def test_torchrec_embedding_equals_field_embedding(trec, tables, names):
    torch.manual_seed(1)
    reference = FieldEmbedding(SCHEMA, 8)
    embedding = trec.TorchrecFieldEmbedding.from_field_embedding(reference, tables=tables)
    assert {k: [c.name for c in ebc.embedding_bag_configs()] for k, ebc in embedding.ebcs.items()} == names
    batch = random_batch(53)
    expected, out = reference(batch), embedding(batch)
    assert out.shape == (53, 6, 8)
    assert float((out - expected).detach().norm() / expected.detach().norm()) < 1e-6
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    start = 0
    for f, rows in zip(SCHEMA.fields, [6, 1, 5, 4, 7, 1]):
        ebc, table, first, count = embedding.row_ranges[f.name]
        grad = embedding.ebcs[ebc].embedding_bags[table].weight.grad[first:first + count]
        assert count == rows and torch.allclose(grad, reference.weight.grad[start:start + rows], atol=1e-6), f.name
        start += rows


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_on_torchrec_equals_model_on_field_embedding(name):
    torch.manual_seed(2)
    fastint = build_model(name, SCHEMA, **SMALL[name])
    torch.manual_seed(2)
    model = build_model(name, SCHEMA, embedding="torchrec_grouped", **SMALL[name])
    assert model.config == {**fastint.config, "embedding": "torchrec_grouped"}
    assert not any(isinstance(m, FieldEmbedding) for m in model.modules())
    batch = random_batch(29)
    expected, out = fastint(batch), model(batch)
    assert float((out - expected).detach().norm() / expected.detach().norm()) < 1e-6
    expected.sum().backward()
    out.sum().backward()
    dense = dict(fastint.named_parameters())
    shared = [(n, p) for n, p in model.named_parameters() if n in dense]
    assert len(shared) == len(dense) - sum(isinstance(m, FieldEmbedding) for m in fastint.modules())
    grads = [(p.grad, dense[n].grad) for n, p in shared if dense[n].grad is not None]
    got, want = (torch.cat([g[i].flatten() for g in grads]) for i in (0, 1))
    assert float((got - want).norm() / want.norm()) < 1e-5  # all dense gradients (some are ~0 alone)
    clone = build_model(schema=SCHEMA, **model.config)     # the config rebuilds it, the state dict fills it
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone(batch), out.detach())


def test_option_errors(trec, tmp_path):
    with pytest.raises(ValueError, match="embedding must be one of fastint, torchrec, torchrec_grouped"):
        build_model("autoint", SCHEMA, embedding="sharded")
    with pytest.raises(ValueError, match="pruned embedding dimensions"):
        build_model("aim", SCHEMA, embedding="torchrec", stage="retrain", dims=[[0, 1]] * 6, **SMALL["autofis"])
    with pytest.raises(ValueError, match=r"sharding='diagonal' \(choose from auto, table_wise"):
        TrainConfig(sharding="diagonal")
    data = make_synthetic(100)
    config = TrainConfig(device="cpu", progress=False, prefetch=0, embedding_optimizer="sgd")
    with pytest.raises(ValueError, match="apply to models built with embedding='torchrec'"):
        Trainer(build_model("afm", data.schema, **SMALL["afm"]), data, config, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs out_dir"):
        Trainer(build_model("afm", data.schema, embedding="torchrec", **SMALL["afm"]), data, config)
    with pytest.raises(ValueError, match="adam is fused on CUDA only"):
        trec.shard_model(build_model("afm", data.schema, embedding="torchrec", **SMALL["afm"]), torch.device("cpu"),
                         optimizer="adam")
