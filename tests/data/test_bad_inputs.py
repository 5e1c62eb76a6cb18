"""Bad inputs give one ValueError naming the file and the line, and leave nothing in the cache."""
import os

import pytest

import fastint.data.preprocess as preprocess
from fastint.data import load_dataset

GOOD = "0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13" + "\ta" * 26 + "\n"
HEADER = "label\t" + "\t".join(f"I{i}" for i in range(1, 14)) + "\t" + "\t".join(f"C{i}" for i in range(1, 27)) + "\n"


def fails(tmp_path, name, text, match, filename="f", **options):
    """Loading a file holding ``text`` raises ValueError matching ``match``; the cache stays empty."""
    path = tmp_path / filename
    if isinstance(text, dict):
        os.makedirs(path, exist_ok=True)
        for n, t in text.items():
            (path / n).write_text(t)
    else:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))  # lone surrogates: invalid bytes
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=match):
        load_dataset(name, str(path), cache_dir=str(cache), progress=False, **options)
    assert not os.path.exists(cache) or os.listdir(cache) == []


@pytest.mark.parametrize("text, match", [
    (GOOD + GOOD.replace("\ta\n", "\n"), r"f:2: expected 40 tab-separated columns, got 39"),
    (GOOD + GOOD + GOOD.replace("\n", "\tx\n"), r"f:3: expected 40 tab-separated columns, got 41"),
    (GOOD + "\n" + GOOD, r"f:2: expected 40 tab-separated columns, got 1"),
    (HEADER + GOOD, r"f:1: label 'label' is not a number \(is line 1 a header\? this format has none\)"),
    (GOOD + GOOD.replace("\t5\t", "\t1.5\t"), r"f:2: column I5 '1.5' is not an integer"),
    (GOOD.replace("0\t", "x\t", 1), r"f:1: label 'x' is not a number"),
    ("", r"criteo: no rows read from .*f$"),
])
def test_criteo(tmp_path, text, match):
    fails(tmp_path, "criteo", text, match)


def test_criteo_numeric_modes(tmp_path):
    fails(tmp_path, "criteo", GOOD + GOOD.replace("\t7\t", "\tabc\t"), r"f:2: column I7 'abc' is not a number",
          numeric="log2")
    fails(tmp_path, "criteo", GOOD.replace("\t7\t", "\tinf\t"), r"f:1: column I7: numeric value 'inf' is not finite",
          numeric="raw")


def test_error_in_a_later_batch_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "BATCH_ROWS", 10)
    fails(tmp_path, "criteo", GOOD * 95 + GOOD.replace("\t3\t", "\t-\t") + GOOD * 20, r"f:96: column I3 '-' is not")


@pytest.mark.parametrize("text, match", [
    ("y,a,x\n1,u,2\n0,v\n", r"f:3: expected 3 columns \(as the header\), got 2"),
    ("y,a,x\n1,u,2\n\n0,v,3,4\n", r"f:4: expected 3 columns \(as the header\), got 4"),
    ("y,a,x\n1,u,2\n\n0,v,abc\n", r"f:4: column x 'abc' is not a number"),
    ("y,a,x\n1,u,2\n0,\"v\nw\",nan\n", r"f:3: column x: numeric value 'nan' is not finite"),
    ("y,a,x\nyes,u,2\n", r"f:2: column y 'yes' is not a number"),
    ("", r"f:1: empty file, expected a header line"),
    ("y,a,x\n", r"csv: no rows read from .*f$"),
    ("y,a,x\n1,u,2\n0,\udce9,2\n", r"f:3: not UTF-8 text"),
    ("y,b,x\n1,u,2\n", r"f: column\(s\) a not in the header \['y', 'b', 'x'\]"),
])
def test_csv(tmp_path, text, match):
    fails(tmp_path, "csv", text, match, label="y", categorical=["a"], numeric=["x"])


@pytest.mark.parametrize("text, match", [
    ("label f1 f2\n1 3:1 4:1\n", r"f:1: feature 'f1' is not 'idx:1' \(one-hot libfm\) \(is line 1 a header"),
    ("1 3:1 4:1\n0 3:1 4:1 5:1\n", r"f:2: 3 features, the first line has 2"),
    ("1 3:1 4:1\nx 3:1 4:1\n", r"f:2: label 'x' is not a number"),
    ("", r"f:1: expected 'label idx:val ...'"),
    ("1 3:1\n0 \udce9:1\n", r"f:2: not UTF-8 text"),
])
def test_libfm(tmp_path, text, match):
    fails(tmp_path, "libfm", text, match)


def test_avazu_and_movielens(tmp_path):
    fails(tmp_path, "avazu", "id,click,hour,C1\n1,0,14102100,a\n2,1,1410,b\n", r"f:3: hour '1410' is not YYMMDDHH")
    fails(tmp_path, "avazu", "id,click,hour,C1\n1,0,14133100,a\n", r"f:2: hour '14133100' is not a date")
    fails(tmp_path, "avazu", "id,click,hour\n1,0\n", r"f:2: expected 3 columns")
    ml = {"users.dat": "1::F::1::10::48067\n", "movies.dat": "10::Toy Story (1995)::Animation\n"}
    fails(tmp_path, "movielens", {**ml, "ratings.dat": "1::10::5::1\n9::10::4::2\n"},
          r"ratings\.dat:2: unknown user 9 or movie 10", filename="ml")
    fails(tmp_path, "movielens", {**ml, "ratings.dat": "1::10::5::1\n1::10::5\n"},
          r"ratings\.dat:2: expected 4 '::'-separated columns, got 3", filename="ml")
    fails(tmp_path, "movielens", {**ml, "ratings.dat": "1::10::3::1\n"}, r"movielens: no rows read", filename="ml")
    fails(tmp_path, "movielens", "user_id,movie_id,rating,genres,gender,age,occupation,zip\n1,2,five,A,F,1,2,3\n",
          r"f:2: column rating 'five' is not a number")
