"""Readers for the standard CTR formats, with the papers' preprocessing. A reader streams its
file(s) as polars batches for ``fastint.data.preprocess`` (columns ``label`` and the fields by
name; see ``preprocess.Reader``) and checks every value: a bad one raises ``ValueError`` naming
the file and the line.

* ``criteo``: Criteo Kaggle ``train.txt`` — TSV, no header: label, I1..I13 (integers, may be empty),
  C1..C26 (hex strings, may be empty). Integer features, ``numeric=``:
  ``"ln2"`` (default, AutoInt authors' code): ``x > 2 -> floor(ln(x)^2)``, else ``x`` kept, and the
  result is a categorical bucket id (empty = its own token); ``"log2"``: numeric field
  ``sign(x) log2(1 + |x|)``; ``"raw"``: numeric field ``x``; both numeric modes map empty to 0.
* ``avazu``: Avazu CSV with header (``id, click, hour, ...``): ``id`` dropped, ``click`` = label, every
  other column categorical, ``hour`` (YYMMDDHH) split into hour-of-day ``hour`` and ``weekday``.
* ``movielens``: MovieLens-1M — a directory with ``ratings.dat``, ``users.dat``, ``movies.dat``
  (``::``-separated, latin-1) or a CSV with header (``user_id, movie_id, rating, ..., genres, gender,
  age, occupation, zip``). Fields user_id, movie_id, gender, age, occupation, zip; ``genres``
  (``|``-separated) is multi-valued. Label: rating > 3 -> 1, < 3 -> 0, = 3 dropped (AutoInt paper).
* ``libfm``: ``label idx:val idx:val ...`` (Frappe / MovieLens-tag files of the AFM paper). The k-th
  feature of a line belongs to field ``f{k}``, its token is ``idx``; the number of fields is the first
  line's; values must be 1 (one-hot). Labels ``-1/+1`` or ``0/1`` -> 0/1 (``raw_labels=True`` keeps
  them, for regression).
* ``csv`` / ``parquet``: any CSV with a header, or Parquet file (``format=`` ``csv`` | ``parquet``,
  by default from the file name), described by column lists: ``label``, ``categorical`` (any type;
  the token is the value as text, null = ``""``), ``numeric`` (empty or null -> 0), ``multi`` (a text
  column split on ``multi_sep``, or a Parquet list column; empty tokens dropped).

Unlabeled files (for ``fastint predict``): readers built with ``label_optional=True`` also accept
Criteo lines without the label column (39 instead of 40), and CSV / Parquet / Avazu files without
the label column; ``labeled`` says which the file is, and an unlabeled file's labels are NaN. The
preprocessing (training) rejects unlabeled readers.

Numbers in CSV and ``.dat`` files may carry surrounding whitespace (as Python's ``float`` allows);
in Criteo and libfm files they must not (their hot path does not strip). Every line of a text
format must have the format's number of fields (a truncated last line is an error, not missing
values).
"""
from __future__ import annotations

import functools
import math
import os
from bisect import bisect_left
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from fastint.data.preprocess import RawFields, file_signature
from fastint.data.scan import (LABEL, LINE, RESERVED, Check, Conversion, Source, csv_batches, csv_header,
                               first_line, lines, parquet_columns, parquet_scan, require_file, split_fields)


def _ln2(x: int) -> int:
    return int(math.floor(math.log(x) ** 2))


def ln2_bucket(value: str) -> str:
    """Criteo integer feature -> bucket token: ``floor(ln(x)^2)`` if ``x > 2`` else ``x``; '' stays ''."""
    if value == "":
        return ""
    x = int(value)
    return str(_ln2(x)) if x > 2 else str(x)


@functools.cache
def _ln2_thresholds() -> np.ndarray:
    """``T[i]`` = the smallest integer ``x > 2`` with ``floor(ln(x)^2) >= i + 2`` (up to int64), found
    by bisection with Python's own ``math.log``."""
    domain = range(3, 2 ** 63)
    return np.array([3 + bisect_left(domain, k, key=_ln2) for k in range(2, _ln2(domain[-1]) + 1)], dtype=np.int64)


def ln2_buckets(x: pl.Series) -> pl.Series:
    """``ln2_bucket`` on an integer column (null stays null), exactly: for ``x > 2`` the bucket is
    ``1 + #{thresholds <= x}`` (``floor(ln(3)^2) = 1``)."""
    values = x.fill_null(0).to_numpy()
    buckets = np.where(values > 2, 1 + np.searchsorted(_ln2_thresholds(), values, side="right"), values)
    return pl.Series(x.name, buckets, dtype=pl.Int64).set(x.is_null(), None)


def ln2_tokens(values: pl.Series) -> pl.Series:
    """Criteo integers -> their ``ln2_bucket`` tokens (null -> ``""``). Applied by the preprocessing to
    each batch's distinct values only (``token_maps``), not to every row."""
    return ln2_buckets(values).cast(pl.String).fill_null("")


def signed_log2(value: str) -> float:
    """Scalar form of the ``log2`` transform: ``sign(x) log2(1 + |x|)``; '' -> 0."""
    if value == "":
        return 0.0
    x = float(value)
    return math.copysign(math.log2(1.0 + abs(x)), x)


def signed_log2_array(x: np.ndarray) -> np.ndarray:
    """``signed_log2`` on float64 values (numpy's ``log2`` equals ``math.log2`` bit for bit)."""
    return np.copysign(np.log2(1.0 + np.abs(x)), x)


class CriteoReader:
    name = "criteo"
    NUM_INT, NUM_CAT = 13, 26

    def __init__(self, path: str, numeric: str = "ln2", label_optional: bool = False):
        if numeric not in ("ln2", "log2", "raw"):
            raise ValueError(f"criteo numeric transform must be ln2, log2 or raw, got {numeric!r}")
        self.path = require_file(path, "criteo")
        self.numeric = numeric
        # without the label a line has NUM_INT + NUM_CAT columns
        self.labeled = not (label_optional and first_line(path).count("\t") == self.NUM_INT + self.NUM_CAT - 1)
        self.ints = tuple(f"I{i}" for i in range(1, self.NUM_INT + 1))
        self.cats = tuple(f"C{i}" for i in range(1, self.NUM_CAT + 1))
        self.fields = RawFields(self.ints + self.cats) if numeric == "ln2" else RawFields(self.cats, self.ints)
        # ln2: the integer columns stay integers; their distinct values become bucket tokens
        self.token_maps = dict.fromkeys(self.ints, ln2_tokens) if numeric == "ln2" else {}

    def describe(self) -> dict:
        return {"format": self.name, "numeric": self.numeric, **file_signature(self.path)}

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        names = (("label",) if self.labeled else ()) + (*self.ints, *self.cats)
        conv = Conversion(Source(self.path))
        conv.checks.append(Check(pl.col("_fields") != len(names),
                                 lambda r: f"expected {len(names)} tab-separated columns, got {r['_fields']}"))
        label = (conv.number("label", required=True, what="label", strip=False) if self.labeled
                 else pl.lit(math.nan)).alias(LABEL)
        dtype = pl.Int64 if self.numeric == "ln2" else pl.Float64
        conv.outputs = [label, *(conv.number(c, dtype, strip=False) for c in self.ints), *map(pl.col, self.cats)]
        for batch in conv.batches(split_fields(lines(self.path), "\t", names), rows):
            if self.numeric == "log2":
                batch = batch.with_columns(pl.Series(c, signed_log2_array(batch.get_column(c).to_numpy()))
                                           for c in self.ints)
            yield batch


class TableReader:
    """A CSV file with a header, or a Parquet file, described by its columns (module docstring)."""

    name = "csv"

    def __init__(self, path: str, label: str, categorical: Sequence[str] = (), numeric: Sequence[str] = (),
                 multi: Sequence[str] = (), sep: str = ",", multi_sep: str = "|", multi_pooling: str = "mean",
                 format: str | None = None, label_optional: bool = False):
        self.path = require_file(path, self.name)
        self.format = format or ("parquet" if path.lower().endswith((".parquet", ".pq")) else "csv")
        if self.format not in ("csv", "parquet"):
            raise ValueError(f"table format must be csv or parquet, got {self.format!r}")
        self.label, self.sep, self.multi_sep = label, sep, multi_sep
        self.fields = RawFields(tuple(categorical), tuple(numeric), tuple(multi), multi_pooling)
        if not (categorical or numeric or multi):
            raise ValueError(f"{self.name} reader needs at least one categorical, numeric or multi column")
        names = [*categorical, *numeric, *multi]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & RESERVED))
        if clash:
            raise ValueError(f"{self.name} reader: field(s) {', '.join(clash)} listed twice or reserved")
        if self.format == "csv":
            self.header = csv_header(path, sep)
            self.types = dict.fromkeys(self.header, pl.String)
        else:
            self.types = parquet_columns(path)
            self.header = list(self.types)
        self.labeled = not label_optional or label in self.types
        labels = (label,) if self.labeled else ()
        self.read_columns = list(dict.fromkeys((*labels, *categorical, *numeric, *multi)))
        missing = [c for c in self.read_columns if c not in self.types]
        if missing:
            raise ValueError(f"{self.path}: column(s) {', '.join(missing)} not in the header {self.header}")
        wrong = [f"{c} ({self.types[c]})" for c in (*labels, *numeric) if not _numeric_or_text(self.types[c])]
        wrong += [f"{c} ({self.types[c]})" for c in multi if not _list_or_text(self.types[c])]
        if wrong:
            raise ValueError(f"{self.path}: column(s) of the wrong type: {', '.join(wrong)}")

    def describe(self) -> dict:
        return {"format": self.format, "label": self.label, "fields": list(map(list, (
            self.fields.categorical, self.fields.numeric, self.fields.multi))), "sep": self.sep,
            "multi_sep": self.multi_sep, "pooling": self.fields.multi_pooling, **file_signature(self.path)}

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        if self.format == "csv":
            conv = self.conversion(Source(self.path, "record", self.sep))
            raw = csv_batches(self.path, self.header, self.read_columns, self.sep, rows)
        else:
            conv = self.conversion(Source(self.path, "row"))
            raw = parquet_scan(self.path, self.read_columns)
        yield from conv.batches(raw, rows)

    def conversion(self, source: Source) -> Conversion:
        """Raw columns (text for CSV, stored types for Parquet) -> the reader's batch."""
        f = self.fields
        conv = Conversion(source)
        conv.outputs = [self._label(conv).alias(LABEL), *map(self._categorical, f.categorical),
                        *(self._number(conv, c) for c in f.numeric), *map(self._tokens, f.multi)]
        return conv

    def _label(self, conv: Conversion) -> pl.Expr:
        return self._number(conv, self.label) if self.labeled else pl.lit(math.nan)

    def _categorical(self, column: str) -> pl.Expr:
        dtype = self.types[column]
        return pl.col(column) if dtype == pl.String or dtype.is_integer() else pl.col(column).cast(pl.String)

    def _number(self, conv: Conversion, column: str) -> pl.Expr:
        return conv.number(column) if self.types[column] == pl.String else conv.finite(column)

    def _tokens(self, column: str) -> pl.Expr:
        lists = pl.col(column).str.split(self.multi_sep) if self.types[column] == pl.String else pl.col(column)
        token = pl.element()
        return lists.cast(pl.List(pl.String)).list.eval(token.filter(token.is_not_null() & (token != ""))).alias(column)


def _numeric_or_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or dtype.is_numeric() or dtype == pl.Boolean


def _list_or_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, pl.List)


class AvazuReader(TableReader):
    name = "avazu"

    def __init__(self, path: str, label_optional: bool = False):
        header = csv_header(require_file(path, self.name), ",")
        if ("click" not in header and not label_optional) or "hour" not in header:
            raise ValueError(f"{path}: not an Avazu CSV (needs 'click' and 'hour' columns), header {header}")
        super().__init__(path, "click", [c for c in header if c not in ("id", "click")], format="csv",
                         label_optional=label_optional)
        self.fields = replace(self.fields, categorical=self.fields.categorical + ("weekday",))

    def describe(self) -> dict:
        return {"format": self.name, **file_signature(self.path)}

    @staticmethod
    def _date() -> pl.Expr:
        return pl.concat_str(pl.lit("20"), pl.col("hour").str.slice(0, 6)).str.to_date("%Y%m%d", strict=False)

    def conversion(self, source: Source) -> Conversion:
        conv = super().conversion(source)
        hour = pl.col("hour")
        conv.checks += [Check(~hour.str.contains(r"^\d{8}$"), lambda r: f"hour {r['hour']!r} is not YYMMDDHH"),
                        Check(self._date().is_null(), lambda r: f"hour {r['hour']!r} is not a date")]
        return conv

    def _categorical(self, column: str) -> pl.Expr:
        if column == "hour":
            return pl.col("hour").str.slice(6)
        if column == "weekday":
            return (self._date().dt.weekday() - 1).cast(pl.String).alias("weekday")
        return super()._categorical(column)


MOVIELENS_FIELDS = RawFields(("user_id", "movie_id", "gender", "age", "occupation", "zip"), (), ("genres",))


def movielens_label(rating: pl.Expr) -> pl.Expr:
    """rating > 3 -> 1, < 3 -> 0, = 3 -> null (the row is dropped)."""
    return pl.when(rating == 3).then(None).otherwise((rating > 3).cast(pl.Float64)).alias(LABEL)


class MovieLensCSVReader(TableReader):
    name = "movielens"

    def __init__(self, path: str):
        super().__init__(path, "rating", MOVIELENS_FIELDS.categorical, (), MOVIELENS_FIELDS.multi, format="csv")

    def describe(self) -> dict:
        return {"format": "movielens-csv", **file_signature(self.path)}

    def _label(self, conv: Conversion) -> pl.Expr:
        return movielens_label(super()._label(conv))

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        for batch in super().batches(rows):
            yield batch.drop_nulls(LABEL)


class MovieLensDatReader:
    """MovieLens-1M ``.dat`` files; users and movies (a few thousand rows) are read whole, the
    ratings stream."""

    name = "movielens"
    fields = MOVIELENS_FIELDS
    labeled = True

    def __init__(self, directory: str):
        self.path = directory
        self.files = {n: require_file(os.path.join(directory, f"{n}.dat"), "movielens")
                      for n in ("ratings", "users", "movies")}

    def describe(self) -> dict:
        return {"format": "movielens-dat", **{n: file_signature(p) for n, p in self.files.items()}}

    def _table(self, name: str, width: int) -> Iterator[list[str]]:
        with open(self.files[name], encoding="latin-1") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\r\n").split("::")
                if len(parts) != width:
                    raise ValueError(f"{self.files[name]}:{lineno}: expected {width} '::'-separated "
                                     f"columns, got {len(parts)}")
                yield parts

    def _lookups(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """users (user_id -> gender, age, occupation, zip) and movies (movie_id -> genres); the last
        line of an id wins."""
        users = pl.DataFrame([p[:5] for p in self._table("users", 5)], orient="row",
                             schema={n: pl.String for n in ("user_id", "gender", "age", "occupation", "zip")})
        movies = list(self._table("movies", 3))
        movies = pl.DataFrame({"movie_id": [p[0] for p in movies],
                               "genres": [[g for g in p[2].split("|") if g] for p in movies]},
                              schema={"movie_id": pl.String, "genres": pl.List(pl.String)})
        return users.unique("user_id", keep="last"), movies.unique("movie_id", keep="last")

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        users, movies = self._lookups()
        names = ("user_id", "movie_id", "rating", "timestamp")
        raw = (split_fields(lines(self.files["ratings"]), "::", names)
               .join(users.lazy(), on="user_id", how="left", maintain_order="left")
               .join(movies.lazy(), on="movie_id", how="left", maintain_order="left"))
        conv = Conversion(Source(self.files["ratings"]))
        conv.checks.append(Check(pl.col("_fields") != len(names),
                                 lambda r: f"expected {len(names)} '::'-separated columns, got {r['_fields']}"))
        label = movielens_label(conv.number("rating"))
        conv.checks.append(Check(label.is_not_null() & (pl.col("gender").is_null() | pl.col("genres").is_null()),
                                 lambda r: f"unknown user {r['user_id']} or movie {r['movie_id']}"))
        conv.outputs = [label, *map(pl.col, self.fields.categorical + self.fields.multi)]
        for batch in conv.batches(raw, rows):
            yield batch.drop_nulls(LABEL)


def movielens_reader(path: str):
    """The .dat reader for a directory, the CSV reader for a file."""
    if os.path.isdir(path):
        return MovieLensDatReader(path)
    return MovieLensCSVReader(path)


class LibFMReader:
    name = "libfm"
    labeled = True

    def __init__(self, path: str, raw_labels: bool = False):
        self.path = require_file(path, self.name)
        self.raw_labels = raw_labels
        first = first_line(self.path).split()
        if len(first) < 2:
            raise ValueError(f"{path}:1: expected 'label idx:val ...' with at least one feature")
        self.fields = RawFields(tuple(f"f{k}" for k in range(len(first) - 1)))

    def describe(self) -> dict:
        return {"format": self.name, "raw_labels": self.raw_labels, **file_signature(self.path)}

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        names = self.fields.categorical
        items = pl.col("items")
        raw = (lines(self.path).select(LINE, items=pl.col("line").str.extract_all(r"\S+"))
               .filter(items.list.len() > 0)
               .select(LINE, (items.list.len() - 1).alias("_features"), label=items.list.first(),
                       **{n: items.list.get(k + 1, null_on_oob=True) for k, n in enumerate(names)}))
        conv = Conversion(Source(self.path))
        conv.checks.append(Check(pl.col("_features") > len(names),
                                 lambda r: f"{r['_features']} features, the first line has {len(names)}"))
        tokens = []
        for n in names:
            value = pl.col(n).str.extract(r"^[^:]*:(.*)$", 1).cast(pl.Float64, strict=False)
            conv.checks.append(Check(pl.col(n).is_not_null() & (value != 1.0).fill_null(True),
                                     lambda r, n=n: f"feature {r[n]!r} is not 'idx:1' (one-hot libfm)", value=True))
            tokens.append(pl.col(n).str.extract(r"^([^:]*):", 1).fill_null("").alias(n))
        label = conv.number("label", required=True, what="label", strip=False)
        conv.outputs = [(label if self.raw_labels else (label > 0).cast(pl.Float64)).alias(LABEL), *tokens]
        yield from conv.batches(raw, rows)
