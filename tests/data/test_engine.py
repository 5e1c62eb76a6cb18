"""The preprocessing engine: vectorised transforms equal the scalar definitions, results do not depend
on the batch size, the .npy writer, cache versions and interrupted builds."""
import json
import math
import os
import shutil

import numpy as np
import polars as pl
import pytest

import fastint.data.encode as encode
import fastint.data.preprocess as preprocess
from fastint.data import load_dataset
from fastint.data.dataset import FORMAT_VERSION
from fastint.data.npy import NpyWriter
from fastint.data.readers import ln2_bucket, ln2_buckets, signed_log2, signed_log2_array


def test_ln2_buckets_equal_the_scalar_transform_at_every_threshold():
    edges = [int(math.ceil(math.exp(math.sqrt(k)))) for k in range(1, 1906)]
    values = sorted({v + d for v in edges for d in (-2, -1, 0, 1)} | set(range(-5, 5000)) | {2 ** 63 - 1})
    got = ln2_buckets(pl.Series("x", values + [None], dtype=pl.Int64)).to_list()
    assert got[-1] is None
    assert [str(b) for b in got[:-1]] == [ln2_bucket(str(v)) for v in values]


def test_signed_log2_array_equals_the_scalar_transform():
    x = np.concatenate([np.arange(-3000, 3000), np.random.default_rng(0).lognormal(5, 4, 5000)])
    np.testing.assert_array_equal(signed_log2_array(x), [signed_log2(repr(v)) for v in x.tolist()])


def test_npy_writer(tmp_path):
    w = NpyWriter(str(tmp_path / "a.npy"), np.int32, (3,))
    w.append(np.arange(6).reshape(2, 3))
    w.append(np.zeros((0, 3)))
    w.append(np.arange(3).reshape(1, 3))
    w.close()
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert isinstance(a, np.memmap) and a.dtype == np.int32 and a.offset == 128
    np.testing.assert_array_equal(a, [[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    with pytest.raises(ValueError, match="rows of shape"):
        NpyWriter(str(tmp_path / "b.npy"), np.float32, (2,)).append(np.zeros((1, 3)))


def assert_same(a, b):
    assert a.schema == b.schema and a.vocab == b.vocab
    for col in a.columns:
        np.testing.assert_array_equal(a.columns[col], b.columns[col])
    for s in a.splits:
        np.testing.assert_array_equal(a.splits[s], b.splits[s])


def test_batch_size_does_not_change_the_dataset(shared_data, tmp_path, monkeypatch):
    path = os.path.join(shared_data, "criteo_10k.tsv")
    whole = load_dataset("criteo", path, cache_dir=str(tmp_path / "a"), progress=False)
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 700)
    assert_same(whole, load_dataset("criteo", path, cache_dir=str(tmp_path / "b"), progress=False))
    pool = encode.ThreadPoolExecutor
    monkeypatch.setattr(encode, "ThreadPoolExecutor", lambda threads: pool(1))  # one worker thread
    assert_same(whole, load_dataset("criteo", path, cache_dir=str(tmp_path / "c"), progress=False))


def test_multi_valued_fields_across_batches(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "ml")
    rng = np.random.default_rng(3)
    genres = ["Action", "Comedy", "Drama", "Horror", "War"]
    (tmp_path / "ml" / "users.dat").write_text("".join(f"{u}::F::1::{u % 20}::{10000 + u}\n" for u in range(1, 51)))
    (tmp_path / "ml" / "movies.dat").write_text("".join(
        f"{m}::M {m}::{'|'.join(rng.choice(genres, rng.integers(1, 5), replace=False))}\n" for m in range(1, 41)))
    (tmp_path / "ml" / "ratings.dat").write_text("".join(
        f"{rng.integers(1, 51)}::{rng.integers(1, 41)}::{rng.integers(1, 6)}::{i}\n" for i in range(3000)))
    opts = dict(cache_dir=str(tmp_path / "a"), min_count=300, max_multi_len=3, progress=False)
    whole = load_dataset("movielens", str(tmp_path / "ml"), **opts)
    assert whole.info["multi_len"] == 3 and whole.columns["multi"].shape[1:] == (1, 3)
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 100)
    assert_same(whole, load_dataset("movielens", str(tmp_path / "ml"), **dict(opts, cache_dir=str(tmp_path / "b"))))


def test_old_cache_format_is_rebuilt(shared_data, tmp_path):
    path = os.path.join(shared_data, "movielens_sample.csv")
    cache = str(tmp_path / "cache")
    d = load_dataset("movielens", path, cache_dir=cache, progress=False)
    directory = os.path.dirname(d.columns["label"].filename)
    meta = os.path.join(directory, "meta.json")
    with open(meta) as f:
        old = json.load(f)
    old["version"] = 1
    with open(meta, "w") as f:
        json.dump(old, f)
    again = load_dataset("movielens", path, cache_dir=cache, progress=False)
    with open(meta) as f:
        assert json.load(f)["version"] == FORMAT_VERSION
    assert os.listdir(cache) == [os.path.basename(directory)]
    assert_same(d, again)


def test_interrupted_or_killed_builds_leave_nothing(shared_data, tmp_path, monkeypatch):
    path = os.path.join(shared_data, "movielens_sample.csv")
    cache = tmp_path / "cache"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(encode.ColumnStore, "remap", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("movielens", path, cache_dir=str(cache), progress=False)
    assert os.listdir(cache) == []
    monkeypatch.undo()
    directory = os.path.dirname(load_dataset("movielens", path, cache_dir=str(cache), progress=False)
                                .columns["label"].filename)
    # a run killed mid-build (its process is gone) left its partial directory; the cache is deleted
    with open("/proc/sys/kernel/pid_max") as f:
        partial = f"{directory}.partial-{int(f.read()) + 1}"
    os.makedirs(partial)
    shutil.rmtree(directory)
    load_dataset("movielens", path, cache_dir=str(cache), progress=False)
    assert os.listdir(cache) == [os.path.basename(directory)]


def test_progress_bars(shared_data, tmp_path, capsys):
    load_dataset("movielens", os.path.join(shared_data, "movielens_sample.csv"), cache_dir=str(tmp_path))
    err = capsys.readouterr().err
    assert "movielens: read all" in err and "movielens: encode" in err and "146/146" in err
