"""The schema-driven generic reader: a Parquet file (stored types) gives the same dataset as the CSV
of the same table; type and value errors name the file and the row."""
import os

import numpy as np
import polars as pl
import pytest

from fastint.data import load_dataset

OPTIONS = dict(label="y", categorical=["a", "n"], numeric=["x"], multi=["tags"], min_count=1, progress=False)
CSV = "y,a,n,x,tags\n1,u,5,0.5,p|q\n0,,7,,q\n1,u,5,2,\n0,v,,1e3,q|r|q\n"


def table() -> pl.DataFrame:
    """The rows of ``CSV`` with Parquet types: int label and categorical, float numeric, list multi."""
    return pl.DataFrame({"y": [1, 0, 1, 0], "a": ["u", None, "u", "v"], "n": [5, 7, 5, None],
                         "x": [0.5, None, 2.0, 1000.0], "tags": [["p", "q"], ["q"], [], ["q", "r", "q"]]})


def test_parquet_equals_csv(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(CSV)
    parquet_path = str(tmp_path / "t.parquet")
    table().write_parquet(parquet_path)
    cache = str(tmp_path / "cache")
    a = load_dataset("csv", str(csv_path), cache_dir=cache, **OPTIONS)
    b = load_dataset("parquet", parquet_path, cache_dir=cache, **OPTIONS)
    c = load_dataset("csv", parquet_path, cache_dir=cache, **OPTIONS)  # format from the file name
    assert a.vocab == b.vocab == c.vocab == {"a": ["u", "", "v"], "n": ["5", "", "7"], "tags": ["q", "p", "r"]}
    for d in (b, c):
        assert d.schema == a.schema
        for col in a.columns:
            np.testing.assert_array_equal(d.columns[col], a.columns[col])
    np.testing.assert_array_equal(a.columns["numeric"][:, 0], [0.5, 0, 2, 1000])
    np.testing.assert_array_equal(a.columns["multi"][:, 0], [[1, 0, -1], [0, -1, -1], [-1, -1, -1], [0, 2, 0]])


def test_parquet_text_multi_column_and_errors(tmp_path):
    path = str(tmp_path / "s.parquet")
    table().with_columns(tags=pl.Series(["p|q", "q", "", "q|r|q"])).write_parquet(path)
    d = load_dataset("parquet", path, cache_dir=str(tmp_path / "cache"), **OPTIONS)
    np.testing.assert_array_equal(d.columns["multi"][:, 0], [[1, 0, -1], [0, -1, -1], [-1, -1, -1], [0, 2, 0]])
    bad = str(tmp_path / "inf.parquet")
    table().with_columns(x=pl.Series([0.5, 1.0, float("inf"), 2.0])).write_parquet(bad)
    with pytest.raises(ValueError, match=r"inf\.parquet: row 3: column x: numeric value inf is not finite"):
        load_dataset("parquet", bad, cache_dir=str(tmp_path / "cache2"), **OPTIONS)
    assert os.listdir(tmp_path / "cache2") == []
    with pytest.raises(ValueError, match=r"s\.parquet: column\(s\) nope not in the header"):
        load_dataset("parquet", path, label="y", categorical=["nope"])
    with pytest.raises(ValueError, match=r"column\(s\) of the wrong type: tags \(Int64\)"):
        load_dataset("parquet", str(_with(tmp_path, tags=[1, 2, 3, 4])), label="y", multi=["tags"])
    with pytest.raises(ValueError, match="format must be csv or parquet"):
        load_dataset("csv", path, label="y", categorical=["a"], format="orc")


def _with(tmp_path, **columns):
    path = tmp_path / "w.parquet"
    table().with_columns(**{k: pl.Series(v) for k, v in columns.items()}).write_parquet(str(path))
    return path


def test_csv_quoting_whitespace_and_batches(tmp_path, monkeypatch):
    """Quoted separators and newlines, numbers with spaces (Python's float accepts them), blank lines;
    many small CSV blocks and batches give the same dataset as one."""
    rng = np.random.default_rng(0)
    lines = ["y,a,x,tags"]
    for i in range(500):
        tags = "|".join(f"t{int(t)}" for t in rng.integers(0, 9, rng.integers(0, 4)))
        lines.append(f'{i % 2},"u{rng.integers(0, 20)}, q", {rng.normal():.3f} ,{tags}')
    lines.insert(3, "")
    lines.insert(5, '1,"multi\nline",1,t1')
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    opts = dict(label="y", categorical=["a"], numeric=["x"], multi=["tags"], min_count=2, progress=False)
    whole = load_dataset("csv", str(path), cache_dir=str(tmp_path / "a"), **opts)
    assert len(whole) == 501 and "multi\nline" not in whole.vocab["a"] and "u3, q" in whole.vocab["a"]
    import fastint.data.preprocess as preprocess
    import fastint.data.scan as scan
    monkeypatch.setattr(scan, "CSV_BLOCK_BYTES", 1024)
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 64)
    parts = load_dataset("csv", str(path), cache_dir=str(tmp_path / "b"), **opts)
    assert parts.vocab == whole.vocab
    for col in whole.columns:
        np.testing.assert_array_equal(parts.columns[col], whole.columns[col])


def test_field_names(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("y,label,x\n1,a,2\n0,b,3\n1,a,4\n")
    d = load_dataset("csv", str(path), cache_dir=str(tmp_path / "cache"), label="y", categorical=["label"],
                     numeric=["x"], min_count=1, progress=False)  # a feature may be called "label"
    assert d.vocab == {"label": ["a", "b"]}
    np.testing.assert_array_equal(d.columns["label"], [1, 0, 1])
    with pytest.raises(ValueError, match="field\\(s\\) x listed twice or reserved"):
        load_dataset("csv", str(path), label="y", categorical=["x"], numeric=["x"])
