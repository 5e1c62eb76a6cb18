"""FieldEmbedding: layout of the packed table, OOV rows, numeric scaling, multi-valued pooling."""
import pytest
import torch

from fastint import Batch, Field, Schema, use_backend
from fastint.nn.embedding import FieldEmbedding

SCHEMA = Schema((
    Field("user", "categorical", vocab_size=5),
    Field("price", "numeric"),
    Field("genres", "multi", vocab_size=4, pooling="mean"),
    Field("item", "categorical", vocab_size=3),
    Field("tags", "multi", vocab_size=6, pooling="sum"),
    Field("age", "numeric"),
))
# Row ranges in schema order: user 0..5 (OOV 5), price 6, genres 7..11 (OOV 11), item 12..15
# (OOV 15), tags 16..22 (OOV 22), age 23.


def make_batch(b=5, length=3):
    return Batch(
        categorical=torch.stack([torch.randint(-1, 7, (b,)), torch.randint(0, 4, (b,))], 1),
        numeric=torch.randn(b, 2),
        multi=torch.stack([torch.randint(-1, 6, (b, length)), torch.randint(-1, 8, (b, length))], 1),
    )


def expected(table, batch):
    """Row-by-row embedding following the documented layout (independent of the module's code)."""
    def cat_row(start, vocab, i):
        return table[start + (i if 0 <= i < vocab else vocab)]

    def bag(start, vocab, ids, pooling):
        rows = [cat_row(start, vocab, i) for i in ids.tolist() if i >= 0]
        if not rows:
            return torch.zeros(table.shape[1], dtype=table.dtype)
        total = torch.stack(rows).sum(0)
        return total / len(rows) if pooling == "mean" else total

    out = []
    for b in range(batch.batch_size):
        c, x, m = batch.categorical[b].tolist(), batch.numeric[b], batch.multi[b]
        out.append(torch.stack([
            cat_row(0, 5, c[0]), x[0] * table[6], bag(7, 4, m[0], "mean"),
            cat_row(12, 3, c[1]), bag(16, 6, m[1], "sum"), x[1] * table[23],
        ]))
    return torch.stack(out)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_matches_documented_layout(backend):
    emb = FieldEmbedding(SCHEMA, 4, init_std=1.0)
    assert emb.weight.shape == (24, 4)
    batch = make_batch()
    with use_backend(backend):
        out = emb(batch)
    torch.testing.assert_close(out, expected(emb.weight.detach(), batch), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_only_used_rows():
    emb = FieldEmbedding(SCHEMA, 3, init_std=1.0)
    batch = Batch(categorical=torch.tensor([[2, 9]]), numeric=torch.tensor([[2.0, -1.0]]),
                  multi=torch.tensor([[[1, -1, 1], [-1, -1, -1]]]))
    emb(batch).sum().backward()
    used = emb.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert used == [2, 6, 8, 15, 23]  # tags bag is empty: no row
    torch.testing.assert_close(emb.weight.grad[6], torch.full((3,), 2.0))
    torch.testing.assert_close(emb.weight.grad[8], torch.full((3,), 1.0))  # mean of two copies


def test_sparse_gradient():
    emb = FieldEmbedding(SCHEMA, 3, sparse=True)
    emb(make_batch()).sum().backward()
    assert emb.weight.grad.is_sparse
    dense = FieldEmbedding(SCHEMA, 3)
    dense.load_state_dict(emb.state_dict())
    torch.manual_seed(0)
    batch = make_batch()
    emb.weight.grad = None
    emb(batch).sum().backward()
    dense(batch).sum().backward()
    torch.testing.assert_close(emb.weight.grad.to_dense(), dense.weight.grad)


def test_only_categorical_fields():
    schema = Schema((Field("a", "categorical", vocab_size=2), Field("b", "categorical", vocab_size=2)))
    emb = FieldEmbedding(schema, 2)
    out = emb(Batch(categorical=torch.tensor([[0, 1], [5, -3]])))
    w = emb.weight.detach()
    torch.testing.assert_close(out, torch.stack([torch.stack([w[0], w[4]]), torch.stack([w[2], w[5]])]))


def test_empty_batch():
    emb = FieldEmbedding(SCHEMA, 4)
    out = emb(make_batch(b=0))
    assert out.shape == (0, 6, 4)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: setattr(b, "numeric", torch.tensor([[1.0, float("nan")]] * 5)), "NaN or inf"),
    (lambda b: setattr(b, "numeric", torch.tensor([[1.0, float("inf")]] * 5)), "NaN or inf"),
    (lambda b: setattr(b, "categorical", b.categorical[:, :1]), "has 1 fields, the schema has 2"),
    (lambda b: setattr(b, "categorical", b.categorical.float()), "dtype"),
    (lambda b: setattr(b, "multi", None), "batch.multi is None"),
    (lambda b: setattr(b, "multi", b.multi[:, :, 0]), "3 dimensions"),
    (lambda b: setattr(b, "numeric", b.numeric[:3]), "disagree on the batch size"),
])
def test_bad_batches_raise(mutate, message):
    emb = FieldEmbedding(SCHEMA, 4)
    batch = make_batch()
    mutate(batch)
    with pytest.raises((ValueError, TypeError), match=message):
        emb(batch)


def test_bad_schema():
    with pytest.raises(ValueError, match="vocab_size"):
        Field("x", "categorical")
    with pytest.raises(ValueError, match="duplicate"):
        Schema((Field("x", "numeric"), Field("x", "numeric")))
    with pytest.raises(ValueError, match="embed_dim"):
        FieldEmbedding(SCHEMA, 0)


def test_criteo_sample_end_to_end(shared_data, tmp_path):
    """Real Criteo rows -> reader/preprocessing -> loader -> FieldEmbedding -> [B, 39, d]; every
    field's embedding equals its packed-table row (OOV row for rare values)."""
    import os

    from fastint.data import BatchLoader, load_dataset

    data = load_dataset("criteo", os.path.join(shared_data, "criteo_10k.tsv"),
                        cache_dir=str(tmp_path), progress=False, min_count=5)
    assert data.schema.num_fields == 39
    emb = FieldEmbedding(data.schema, 8, init_std=1.0)
    batch = next(iter(BatchLoader(data, "train", batch_size=1000, shuffle=False)))
    out = emb(batch)
    assert out.shape == (1000, 39, 8)
    rows = [1 if f.kind == "numeric" else f.vocab_size + 1 for f in data.schema.fields]
    starts = torch.tensor([0] + rows[:-1]).cumsum(0)
    cat_fields = [i for i, f in enumerate(data.schema.fields) if f.kind == "categorical"]
    vocab = torch.tensor([data.schema.fields[i].vocab_size for i in cat_fields])
    ids = batch.categorical
    local = torch.where((ids >= 0) & (ids < vocab), ids, vocab)
    torch.testing.assert_close(out[:, cat_fields], emb.weight.detach()[starts[cat_fields] + local])
    oov = (local == vocab).float().mean()
    assert 0 < oov < 0.5, f"OOV share {oov:.2f}: min_count should leave some, not most, values OOV"
    out.sum().backward()
    assert emb.weight.grad.abs().sum() > 0
