"""BatchLoader: exact coverage per epoch, correct gathering, determinism, resume, shards, prefetch,
and loader throughput >= 10x the model's on the Criteo sample."""
import os
import time

import numpy as np
import pytest
import torch

from fastint.data import BatchLoader, Dataset, load_dataset
from fastint.schema import Field, Schema


def indexed_dataset(n=1037) -> Dataset:
    """label = row index, so a batch tells which rows it holds; other columns derived from it."""
    rows = np.arange(n)
    schema = Schema((Field("c", "categorical", 10), Field("x", "numeric"), Field("m", "multi", 5)))
    cols = {"categorical": (rows % 10).astype(np.int32)[:, None],
            "numeric": (rows * 0.5).astype(np.float32)[:, None],
            "multi": np.stack([rows % 5, -np.ones(n)], 1).astype(np.int32)[:, None, :],
            "label": rows.astype(np.float32)}
    split = np.arange(0, n, 1, dtype=np.int64)
    return Dataset(schema, cols, {"train": split, "odd": split[1::2]})


def rows_of(loader):
    return [b.label.long().tolist() for b in loader]


def test_every_row_exactly_once_per_epoch_and_values_match():
    d = indexed_dataset()
    loader = BatchLoader(d, "odd", 64, seed=3)
    epochs = [rows_of(loader) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(loader) == 9 and [len(b) for b in batches[:-1]] == [64] * 8
        assert sorted(sum(batches, [])) == list(range(1, 1037, 2))
    assert epochs[0] != epochs[1], "a fresh permutation every epoch"
    batch = next(iter(BatchLoader(d, "train", 50, seed=0)))
    r = batch.label.long()
    assert batch.categorical.dtype == torch.int64 and batch.multi.dtype == torch.int64
    torch.testing.assert_close(batch.categorical[:, 0], r % 10)
    torch.testing.assert_close(batch.numeric[:, 0], r.float() * 0.5)
    torch.testing.assert_close(batch.multi[:, 0, 0], r % 5)
    assert (batch.multi[:, 0, 1] == -1).all()


def test_no_shuffle_drop_last_and_determinism():
    d = indexed_dataset(100)
    assert rows_of(BatchLoader(d, "train", 30, shuffle=False, drop_last=True)) == [
        list(range(0, 30)), list(range(30, 60)), list(range(60, 90))]
    assert rows_of(BatchLoader(d, "train", 30, seed=7)) == rows_of(BatchLoader(d, "train", 30, seed=7))
    assert rows_of(BatchLoader(d, "train", 30, seed=7)) != rows_of(BatchLoader(d, "train", 30, seed=8))


def test_prefetch_yields_the_same_batches():
    d = indexed_dataset()
    assert rows_of(BatchLoader(d, "train", 100, seed=1, prefetch=3)) == rows_of(BatchLoader(d, "train", 100, seed=1))
    # abandoning a prefetching iterator early must not hang
    it = iter(BatchLoader(d, "train", 10, prefetch=2))
    next(it)
    it.close()


def test_state_dict_resumes_mid_epoch():
    d = indexed_dataset()
    full = BatchLoader(d, "train", 100, seed=2)
    first_epoch, second_epoch = rows_of(full), rows_of(full)
    part = BatchLoader(d, "train", 100, seed=2)
    it = iter(part)
    consumed = [next(it).label.long().tolist() for _ in range(4)]
    state = part.state_dict()
    assert state == {"epoch": 0, "position": 4, "seed": 2}
    resumed = BatchLoader(d, "train", 100, seed=2)
    resumed.load_state_dict(state)
    assert consumed + rows_of(resumed) == first_epoch
    assert rows_of(resumed) == second_epoch
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(d, "train", 100, seed=9).load_state_dict(state)


def test_distributed_shards_are_disjoint_and_equal_sized():
    d = indexed_dataset()
    shards = [BatchLoader(d, "train", 64, seed=4, rank=r, world_size=3) for r in range(3)]
    rows = [sum(rows_of(s), []) for s in shards]
    assert len({len(r) for r in rows}) == 1 and len({len(s) for s in shards}) == 1
    flat = sum(rows, [])
    assert len(flat) == len(set(flat)) == 1035  # 1037 truncated to a multiple of 3


def test_bad_arguments():
    d = indexed_dataset()
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(d, "train", 0)
    with pytest.raises(ValueError, match="no split 'nope'"):
        BatchLoader(d, "nope", 8)


def test_loader_is_10x_faster_than_the_model_on_criteo_10k(shared_data, tmp_path):
    """Loader rows/s vs one model's CPU training throughput on the Criteo sample (issue 6 goal)."""
    from fastint.models import build_model
    d = load_dataset("criteo", os.path.join(shared_data, "criteo_10k.tsv"), cache_dir=str(tmp_path),
                     progress=False)
    loader = BatchLoader(d, "train", 1024, seed=0)
    start = time.perf_counter()
    n = sum(b.batch_size for _ in range(3) for b in loader)
    loader_rate = n / (time.perf_counter() - start)

    model = build_model("autoint", d.schema, embed_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(BatchLoader(d, "train", 1024, seed=0))
    start = time.perf_counter()
    for b in batches:
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label).backward()
        opt.step()
    model_rate = len(d.split("train")) / (time.perf_counter() - start)
    print(f"loader {loader_rate:,.0f} rows/s, model {model_rate:,.0f} samples/s")
    assert loader_rate >= 10 * model_rate
