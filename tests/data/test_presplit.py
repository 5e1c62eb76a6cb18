"""Pre-split inputs (a directory of train/valid/test files, or the three paths): splits kept as given,
vocabulary and min-count from train only, unseen ids -> OOV (-1); hand-computed expectations."""
import os

import numpy as np
import pytest

from fastint.data import load_dataset
from fastint.data.inputs import split_files
from fastint.data.readers import ln2_bucket

CSV = {"train": "y,a,x,tags\n1,u,0.5,p|q\n0,u,1,q\n1,v,2,q|r\n",
       "valid": "y,a,x,tags\n0,v,3,q|z\n1,w,,p\n",
       "test": "y,a,x,tags\n1,u,1.5,r|q\n"}
CSV_OPTIONS = dict(label="y", categorical=["a"], numeric=["x"], multi=["tags"])


def write_splits(directory, names, texts):
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for split, name in names.items():
        paths[split] = str(directory / name)
        with open(paths[split], "w") as f:
            f.write(texts[split])
    return paths


def test_csv_directory_keeps_splits_and_counts_train_only(tmp_path):
    write_splits(tmp_path / "d", {s: f"{s}.csv" for s in CSV}, CSV)
    d = load_dataset("csv", str(tmp_path / "d"), cache_dir=str(tmp_path / "cache"), min_count=1, progress=False,
                     **CSV_OPTIONS)
    assert {k: v.tolist() for k, v in d.splits.items()} == {"train": [0, 1, 2], "valid": [3, 4], "test": [5]}
    assert d.info["splits"] == "given"
    # train counts: a: u 2, v 1 -> [u, v]; tags: q 3, p 1, r 1 -> [q, p, r]; "w" and "z" never in train
    assert d.vocab == {"a": ["u", "v"], "tags": ["q", "p", "r"]}
    np.testing.assert_array_equal(d.columns["categorical"][:, 0], [0, 0, 1, 1, -1, 0])
    np.testing.assert_array_equal(d.columns["multi"][:, 0], [[1, 0], [0, -1], [0, 2], [0, -1], [1, -1], [2, 0]])
    np.testing.assert_array_equal(d.columns["numeric"][:, 0], [0.5, 1, 2, 3, 0, 1.5])
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 1, 0, 1, 1])
    # min_count from train only: "v" is seen twice over all files but once in train -> OOV
    d2 = load_dataset("csv", str(tmp_path / "d"), cache_dir=str(tmp_path / "cache"), min_count=2, progress=False,
                      **CSV_OPTIONS)
    assert d2.vocab == {"a": ["u"], "tags": ["q"]}
    np.testing.assert_array_equal(d2.columns["categorical"][:, 0], [0, 0, -1, -1, -1, 0])


def test_explicit_paths_equal_the_directory(tmp_path):
    paths = write_splits(tmp_path / "d", {s: f"{s}.csv" for s in CSV}, CSV)
    cache = str(tmp_path / "cache")
    a = load_dataset("csv", str(tmp_path / "d"), cache_dir=cache, min_count=1, progress=False, **CSV_OPTIONS)
    b = load_dataset("csv", train_path=paths["train"], valid_path=paths["valid"], test_path=paths["test"],
                     cache_dir=cache, min_count=1, progress=False, **CSV_OPTIONS)
    assert len(os.listdir(cache)) == 1  # same inputs, same cache entry
    for c in a.columns:
        np.testing.assert_array_equal(a.columns[c], b.columns[c])
    # the seed does not change given splits (nor the cache entry)
    load_dataset("csv", str(tmp_path / "d"), cache_dir=cache, seed=7, min_count=1, progress=False, **CSV_OPTIONS)
    assert len(os.listdir(cache)) == 1


def test_libfm_frappe_style_files(tmp_path):
    texts = {"train": "1 3:1 17:1 40:1\n-1 3:1 18:1 40:1\n-1 4:1 17:1 41:1\n",
             "valid": "1 4:1 18:1 40:1\n-1 5:1 17:1 40:1\n",
             "test": "1 3:1 19:1 41:1\n"}
    names = {"train": "frappe.train.libfm", "valid": "frappe.validation.libfm", "test": "frappe.test.libfm"}
    write_splits(tmp_path / "frappe", names, texts)
    d = load_dataset("libfm", str(tmp_path / "frappe"), cache_dir=str(tmp_path / "cache"), min_count=1,
                     progress=False)
    assert d.vocab == {"f0": ["3", "4"], "f1": ["17", "18"], "f2": ["40", "41"]}
    np.testing.assert_array_equal(d.columns["categorical"], [[0, 0, 0], [0, 1, 0], [1, 0, 1],
                                                              [1, 1, 0], [-1, 0, 0], [0, -1, 1]])
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 0, 1, 0, 1])
    assert [d.split_size(s) for s in ("train", "valid", "test")] == [3, 2, 1]


def test_criteo_presplit_vocabulary_is_the_train_files(shared_data, tmp_path):
    with open(os.path.join(shared_data, "criteo_10k.tsv")) as f:
        lines = f.readlines()
    parts = {"train": lines[:8000], "valid": lines[8000:9000], "test": lines[9000:]}
    paths = write_splits(tmp_path / "c", {s: f"day.{s}.tsv" for s in parts}, {s: "".join(v) for s, v in parts.items()})
    cache = str(tmp_path / "cache")
    d = load_dataset("criteo", str(tmp_path / "c"), cache_dir=cache, min_count=5, progress=False)
    alone = load_dataset("criteo", paths["train"], cache_dir=cache, min_count=5, progress=False)
    assert d.vocab == alone.vocab and d.schema == alone.schema
    np.testing.assert_array_equal(d.columns["categorical"][:8000][np.sort(alone.split("train"))],
                                  alone.columns["categorical"][alone.split("train")])
    index = {n: {t: i for i, t in enumerate(v)} for n, v in d.vocab.items()}
    names = [f.name for f in d.schema.fields]
    for row, line in zip(d.columns["categorical"][8000:8200], parts["valid"]):
        values = line.rstrip("\n").split("\t")[1:]
        tokens = [ln2_bucket(v) for v in values[:13]] + values[13:]
        assert row.tolist() == [index[n].get(t, -1) for n, t in zip(names, tokens)]
    assert (d.columns["categorical"][8000:] == -1).any()


def test_split_file_discovery_and_errors(tmp_path):
    for name in ("train.csv", "valid.csv", "test.csv", "README.md"):
        (tmp_path / name).write_text("y,a\n1,u\n")
    assert split_files(str(tmp_path)) == {s: str(tmp_path / f"{s}.csv") for s in ("train", "valid", "test")}
    (tmp_path / "train.parquet").write_text("")
    with pytest.raises(ValueError, match="expected one train, one valid and one test file.*train: train.csv, train"):
        split_files(str(tmp_path))
    os.makedirs(tmp_path / "e")
    (tmp_path / "e" / "x.train.libfm").write_text("1 1:1\n")
    with pytest.raises(ValueError, match="valid: none; test: none"):
        load_dataset("libfm", str(tmp_path / "e"))
    os.makedirs(tmp_path / "plain")
    with pytest.raises(ValueError, match="directory without train/valid/test files"):
        load_dataset("csv", str(tmp_path / "plain"), label="y", categorical=["a"])
    with pytest.raises(ValueError, match="missing valid, test"):
        load_dataset("csv", train_path=str(tmp_path / "train.csv"), label="y", categorical=["a"])
    with pytest.raises(ValueError, match="not both"):
        load_dataset("csv", str(tmp_path / "train.csv"), train_path=str(tmp_path / "train.csv"), label="y",
                     categorical=["a"])


def test_presplit_file_errors_name_the_file(tmp_path):
    texts = dict(CSV, valid="y,a,x,tags\n")
    write_splits(tmp_path / "d", {s: f"{s}.csv" for s in CSV}, texts)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"no rows read from .*valid\.csv"):
        load_dataset("csv", str(tmp_path / "d"), cache_dir=str(cache), progress=False, **CSV_OPTIONS)
    assert os.listdir(cache) == []
    texts = dict(CSV, test="y,a,x\n1,u,2\n")
    write_splits(tmp_path / "m", {s: f"{s}.csv" for s in CSV}, texts)
    with pytest.raises(ValueError, match=r"test\.csv: column\(s\) tags not in the header"):
        load_dataset("csv", str(tmp_path / "m"), cache_dir=str(cache), progress=False, **CSV_OPTIONS)
    avazu = {"train": "id,click,hour,C1\n1,0,14102100,a\n", "valid": "id,click,hour,C1,C2\n1,0,14102100,a,b\n",
             "test": "id,click,hour,C1\n1,0,14102100,a\n"}
    write_splits(tmp_path / "a", {s: f"{s}.csv" for s in avazu}, avazu)
    with pytest.raises(ValueError, match=r"valid\.csv: its fields .* differ from those of .*train\.csv"):
        load_dataset("avazu", str(tmp_path / "a"), cache_dir=str(cache), progress=False)
    assert os.listdir(cache) == []
