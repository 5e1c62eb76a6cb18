"""Readers and the two-pass preprocessing: hand-computed expectations on tiny files, the real
Criteo/MovieLens samples, caching and reproducible splits."""
import csv
import os

import numpy as np
import pytest

from fastint.data import load_dataset, split_indices
from fastint.data.readers import ln2_bucket, signed_log2


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_ln2_bucket_follows_the_authors_transform():
    # x > 2 -> floor(ln(x)^2); x <= 2 kept; empty stays its own token
    expected = {"": "", "-1": "-1", "0": "0", "2": "2", "3": "1", "8": "4", "100": "21", "1000": "47"}
    assert {v: ln2_bucket(v) for v in expected} == expected
    assert signed_log2("") == 0.0 and signed_log2("3") == 2.0 and signed_log2("-1") == -1.0


def criteo_line(label, ints, cats):
    return "\t".join([str(label)] + ints + cats) + "\n"


def test_criteo_hand_computed(tmp_path):
    ints = [["1", "", "100"] + [""] * 10, ["3", "5", "100"] + [""] * 10,
            ["", "5", "8"] + [""] * 10, ["1", "5", "2"] + [""] * 10]
    cats = [["aa", "x"] + [""] * 24, ["bb", "x"] + [""] * 24, ["aa", "y"] + [""] * 24, ["aa", "x"] + [""] * 24]
    path = write(tmp_path / "c.tsv", "".join(criteo_line(l, i, c) for l, i, c in zip([1, 0, 0, 1], ints, cats)))
    d = load_dataset("criteo", path, cache_dir=str(tmp_path / "cache"), min_count=2, progress=False)
    assert [f.name for f in d.schema.fields[:3]] == ["I1", "I2", "I3"] and d.schema.num_fields == 39
    cat = np.asarray(d.columns["categorical"])
    # I1 tokens: "1", "1" (ln(3)^2 = 1.2 -> 1), "", "1"  -> vocab {"1": 0}; "" (count 1) is OOV
    np.testing.assert_array_equal(cat[:, 0], [0, 0, -1, 0])
    # I2: "", "2"(ln 5^2 = 2.59), "2", "2" -> {"2": 0}, "" OOV
    np.testing.assert_array_equal(cat[:, 1], [-1, 0, 0, 0])
    # I3: "21", "21", "4", "2" -> {"21": 0}
    np.testing.assert_array_equal(cat[:, 2], [0, 0, -1, -1])
    # C1: aa x3, bb x1 -> {"aa": 0}; C2: x x3, y x1 -> {"x": 0}; empty columns: "" x4 -> {"": 0}
    c1 = 13
    np.testing.assert_array_equal(cat[:, c1], [0, -1, 0, 0])
    np.testing.assert_array_equal(cat[:, c1 + 1], [0, 0, -1, 0])
    assert (cat[:, c1 + 2:] == 0).all()
    assert d.schema.fields[0].vocab_size == 1 and d.vocab["C1"] == ["aa"]
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 0, 1])


def test_criteo_numeric_modes_and_errors(tmp_path):
    path = write(tmp_path / "c.tsv", criteo_line(1, ["3", ""] + ["-3"] * 11, ["a"] * 26) * 3)
    d = load_dataset("criteo", path, cache_dir=str(tmp_path / "cache"), numeric="log2", min_count=1,
                     progress=False)
    assert [f.kind for f in d.schema.fields].count("numeric") == 13
    np.testing.assert_allclose(d.columns["numeric"][0, :3], [2.0, 0.0, -2.0])
    bad = write(tmp_path / "bad.tsv", "1\t2\t3\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected 40"):
        load_dataset("criteo", bad, cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(ValueError, match="numeric transform"):
        load_dataset("criteo", path, numeric="sqrt", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset("criteo", str(tmp_path / "missing.tsv"))


def test_criteo_10k_sample_and_cache(shared_data, tmp_path):
    path = os.path.join(shared_data, "criteo_10k.tsv")
    cache = str(tmp_path / "cache")
    d = load_dataset("criteo", path, cache_dir=cache, progress=False)
    assert len(d) == 10_000 and d.schema.num_fields == 39
    assert int(np.asarray(d.columns["label"]).sum()) == 2182
    assert {k: d.split_size(k) for k in d.splits} == {"train": 8000, "valid": 1000, "test": 1000}
    assert isinstance(d.columns["categorical"], np.memmap)
    # min_count=10 leaves some OOV ids, never ids outside the vocabulary
    cat = np.asarray(d.columns["categorical"])
    vocab = np.array([f.vocab_size for f in d.schema.fields])
    assert ((cat >= -1) & (cat < vocab)).all() and (cat == -1).any()
    again = load_dataset("criteo", path, cache_dir=cache, progress=False)
    assert os.listdir(cache) == [os.path.basename(os.path.dirname(again.columns["label"].filename))]
    np.testing.assert_array_equal(again.columns["categorical"], cat)


def test_movielens_csv_sample(shared_data, tmp_path):
    path = os.path.join(shared_data, "movielens_sample.csv")
    with open(path, newline="") as f:
        recs = [r for r in csv.DictReader(f) if r["rating"] != "3"]
    d = load_dataset("movielens", path, cache_dir=str(tmp_path), min_count=1, progress=False)
    assert len(d) == len(recs)
    np.testing.assert_array_equal(d.columns["label"], [float(int(r["rating"]) > 3) for r in recs])
    names = [f.name for f in d.schema.fields]
    assert names == ["user_id", "movie_id", "gender", "age", "occupation", "zip", "genres"]
    genres = d.vocab["genres"]
    for r, row in zip(recs[:20], d.columns["multi"][:20, 0]):
        assert [genres[i] for i in row if i >= 0] == r["genres"].split("|")


def test_movielens_dat(tmp_path):
    os.makedirs(tmp_path / "ml")
    write(tmp_path / "ml" / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(tmp_path / "ml" / "movies.dat", "10::Toy Story (1995)::Animation|Comedy\n20::Heat (1995)::Action\n")
    write(tmp_path / "ml" / "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::20::1::978301968\n"
                                           "2::10::4::978300275\n")
    d = load_dataset("movielens", str(tmp_path / "ml"), cache_dir=str(tmp_path / "cache"), min_count=1,
                     progress=False)
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 1])  # the rating-3 row is dropped
    v = d.vocab
    decoded = [[v[n][i] for n, i in zip(["user_id", "movie_id", "gender", "age", "occupation", "zip"], row)]
               for row in d.columns["categorical"]]
    assert decoded == [["1", "10", "F", "1", "10", "48067"], ["2", "20", "M", "56", "16", "70072"],
                       ["2", "10", "M", "56", "16", "70072"]]
    assert [[v["genres"][i] for i in r[0] if i >= 0] for r in d.columns["multi"]] == [
        ["Animation", "Comedy"], ["Action"], ["Animation", "Comedy"]]


def test_avazu(tmp_path):
    path = write(tmp_path / "a.csv", "id,click,hour,C1,site_id\n1,0,14102100,1005,s1\n2,1,14102213,1005,s2\n"
                                     "3,1,14102213,1002,s1\n")
    d = load_dataset("avazu", path, cache_dir=str(tmp_path / "cache"), min_count=1, progress=False)
    assert [f.name for f in d.schema.fields] == ["hour", "C1", "site_id", "weekday"]
    v = d.vocab
    decoded = [[v[f.name][i] for f, i in zip(d.schema.fields, row)] for row in d.columns["categorical"]]
    # 2014-10-21 is a Tuesday (weekday 1), 2014-10-22 a Wednesday (2)
    assert decoded == [["00", "1005", "s1", "1"], ["13", "1005", "s2", "2"], ["13", "1002", "s1", "2"]]
    np.testing.assert_array_equal(d.columns["label"], [0, 1, 1])
    with pytest.raises(ValueError, match="not an Avazu CSV"):
        load_dataset("avazu", write(tmp_path / "b.csv", "x,y\n1,2\n"))


def test_libfm(tmp_path):
    path = write(tmp_path / "f.libfm", "1 3:1 17:1 40:1\n-1 3:1 18:1 40:1\n-1 4:1 17:1 40:1\n")
    d = load_dataset("libfm", path, cache_dir=str(tmp_path / "cache"), min_count=2, progress=False)
    assert [f.name for f in d.schema.fields] == ["f0", "f1", "f2"]
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 0])
    np.testing.assert_array_equal(d.columns["categorical"], [[0, 0, 0], [0, -1, 0], [-1, 0, 0]])
    raw = load_dataset("libfm", path, cache_dir=str(tmp_path / "cache"), raw_labels=True, progress=False)
    np.testing.assert_array_equal(raw.columns["label"], [1, -1, -1])
    bad = write(tmp_path / "g.libfm", "1 3:1 17:0.5\n")
    with pytest.raises(ValueError, match=r"g.libfm:1: feature '17:0.5' is not 'idx:1'"):
        load_dataset("libfm", bad, cache_dir=str(tmp_path / "cache"), progress=False)


def test_generic_csv(tmp_path):
    path = write(tmp_path / "g.csv", "y,a,x,tags\n1,u,0.5,p|q\n0,v,,q\n1,u,2,\n")
    d = load_dataset("csv", path, cache_dir=str(tmp_path / "cache"), label="y", categorical=["a"],
                     numeric=["x"], multi=["tags"], min_count=1, progress=False)
    assert [(f.name, f.kind) for f in d.schema.fields] == [("a", "categorical"), ("x", "numeric"),
                                                             ("tags", "multi")]
    np.testing.assert_array_equal(d.columns["categorical"][:, 0], [0, 1, 0])
    np.testing.assert_array_equal(d.columns["numeric"][:, 0], [0.5, 0.0, 2.0])
    # tag vocab by count: q (2) then p (1)
    np.testing.assert_array_equal(d.columns["multi"][:, 0], [[1, 0], [0, -1], [-1, -1]])
    with pytest.raises(ValueError, match="column.*nope"):
        load_dataset("csv", path, label="y", categorical=["nope"])
    nan = write(tmp_path / "n.csv", "y,x\n1,nan\n")
    with pytest.raises(ValueError, match="not finite"):
        load_dataset("csv", nan, cache_dir=str(tmp_path / "cache"), label="y", numeric=["x"], progress=False)


def test_splits_reproducible_partition():
    a, b, c = split_indices(1003, seed=5), split_indices(1003, seed=5), split_indices(1003, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert [len(a[k]) for k in ("train", "valid", "test")] == [802, 101, 100]  # boundaries round(1003 * (0.8, 0.9))
    np.testing.assert_array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1003))
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, 0, (0.5, 0.6, 0.1))


def test_unknown_dataset_and_missing_path():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("kdd")
    with pytest.raises(ValueError, match="needs a data path"):
        load_dataset("criteo")
