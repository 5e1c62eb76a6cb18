"""VocabularyEncoder: a file encoded with a trained dataset's vocabulary gets exactly the columns the
preprocessing gave it (same transforms, token maps, ids, OOV and list truncation), in any batch size;
unlabeled files read with ``label_optional``; unlabeled readers are refused for training."""
import math
import os

import numpy as np
import polars as pl
import pytest

import fastint.data.preprocess as preprocess
from fastint.data import VocabularyEncoder, load_dataset, open_reader


def write_criteo(path, rows, seed=0, labeled=True):
    """Criteo-format lines: label, I1..I13 (some empty, some <= 2), C1..C26 (skewed small vocabularies)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(-2, 3000) * rng.random() ** 3)) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.zipf(1.6)) % 97:08x}" for _ in range(26)]
        label = [str(int(rng.random() < 0.3))] if labeled else []
        lines.append("\t".join(label + ints + cats))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def encode_file(dataset, reader, batch_rows):
    encoder = VocabularyEncoder(dataset, reader)
    parts = [encoder.encode(batch) for batch in reader.batches(batch_rows)]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}, encoder


def assert_columns_equal(dataset, columns):
    assert set(columns) == set(dataset.columns) - {"prob"}
    for name, col in columns.items():
        np.testing.assert_array_equal(col, dataset.columns[name], err_msg=name)


@pytest.mark.parametrize("numeric", ["ln2", "log2"])
def test_criteo_file_encodes_to_its_preprocessed_columns(tmp_path, numeric):
    path = write_criteo(tmp_path / "train.txt", 1200)
    data = load_dataset("criteo", path, cache_dir=str(tmp_path / "c"), progress=False, min_count=3, numeric=numeric)
    columns, encoder = encode_file(data, open_reader("criteo", path, numeric=numeric), 250)
    assert_columns_equal(data, columns)
    assert (columns["categorical"] == -1).any() and (columns["categorical"] >= 0).mean() > 0.5
    assert encoder.unknown == int((columns["categorical"] == -1).sum())  # OOV values counted


def test_real_criteo_sample_encodes_to_its_preprocessed_columns(shared_data, tmp_path):
    path = os.path.join(shared_data, "criteo_10k.tsv")
    data = load_dataset("criteo", path, cache_dir=str(tmp_path / "c"), progress=False)
    columns, _ = encode_file(data, open_reader("criteo", path), 3000)
    assert_columns_equal(data, columns)


def test_multi_valued_lists_are_cut_and_rare_tokens_dropped(tmp_path):
    rng = np.random.default_rng(1)
    tags = [f"t{i}" for i in range(12)]
    rows = ["y,user,tags,x"] + [
        f"{int(rng.random() < 0.4)},u{rng.integers(0, 30)},{'|'.join(rng.choice(tags, rng.integers(0, 6)))},"
        f"{rng.normal():.4f}" for _ in range(600)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    options = dict(label="y", categorical=["user"], numeric=["x"], multi=["tags"])
    data = load_dataset("csv", str(tmp_path / "t.csv"), cache_dir=str(tmp_path / "c"), progress=False,
                        min_count=150, max_multi_len=3, **options)
    assert data.columns["multi"].shape[1:] == (1, 3)
    columns, _ = encode_file(data, open_reader("csv", str(tmp_path / "t.csv"), **options), 64)
    assert_columns_equal(data, columns)


def test_unseen_tokens_are_out_of_vocabulary(tmp_path):
    (tmp_path / "train.csv").write_text("y,a,b\n" + "".join(f"{i % 2},a{i % 3},b{i % 2}\n" for i in range(60)))
    (tmp_path / "new.csv").write_text("y,a,b\n1,a1,b1\n0,never,b0\n1,a2,\n")
    options = dict(label="y", categorical=["a", "b"])
    data = load_dataset("csv", str(tmp_path / "train.csv"), cache_dir=str(tmp_path / "c"), progress=False,
                        min_count=1, **options)
    columns, encoder = encode_file(data, open_reader("csv", str(tmp_path / "new.csv"), **options), 10)
    a, b = data.vocab["a"], data.vocab["b"]
    np.testing.assert_array_equal(columns["categorical"], [[a.index("a1"), b.index("b1")],
                                                           [-1, b.index("b0")], [a.index("a2"), -1]])
    assert (encoder.values, encoder.unknown) == (6, 2)


def test_unlabeled_files(tmp_path):
    path = write_criteo(tmp_path / "test.txt", 20, labeled=False)
    reader = open_reader("criteo", path, label_optional=True)
    assert not reader.labeled
    batch = next(reader.batches(100))
    assert batch.height == 20 and batch.get_column("_label").is_nan().all()
    assert open_reader("criteo", write_criteo(tmp_path / "l.txt", 5), label_optional=True).labeled
    with pytest.raises(ValueError, match="expected 40 tab-separated columns, got 39"):
        next(open_reader("criteo", path).batches(100))       # training reads need the label
    with pytest.raises(ValueError, match="no label column; training"):
        preprocess.load_or_preprocess(reader, str(tmp_path / "c"), progress=False)
    (tmp_path / "u.csv").write_text("a,x\nq,1.5\n")
    table = open_reader("csv", str(tmp_path / "u.csv"), label="y", categorical=["a"], numeric=["x"],
                        label_optional=True)
    assert not table.labeled and math.isnan(next(table.batches(10)).get_column("_label")[0])
    with pytest.raises(ValueError, match=r"column\(s\) y not in the header"):
        open_reader("csv", str(tmp_path / "u.csv"), label="y", categorical=["a"], numeric=["x"])


def test_fields_must_match_the_run(tmp_path):
    (tmp_path / "train.csv").write_text("y,a,b\n" + "1,a,b\n" * 5)
    data = load_dataset("csv", str(tmp_path / "train.csv"), cache_dir=str(tmp_path / "c"), progress=False,
                        label="y", categorical=["a", "b"], min_count=1)
    reader = open_reader("csv", str(tmp_path / "train.csv"), label="y", categorical=["a"], numeric=["b"])
    with pytest.raises(ValueError, match=r"train.csv: its fields \[a \(categorical\), b \(numeric\)\] .* "
                                         r"are not the run's \[a \(categorical\), b \(categorical\)\]"):
        VocabularyEncoder(data, reader)
    assert pl.Series(data.vocab["a"]).to_list() == ["a"]
