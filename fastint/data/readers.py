"""Readers for the standard CTR formats (rows for ``fastint.data.preprocess``), with the papers'
preprocessing. Every reader streams its file(s) and can be iterated any number of times.

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
* ``csv``: any CSV with a header, described by column lists: ``label``, ``categorical``, ``numeric``
  (empty -> 0), ``multi`` (split on ``multi_sep``).
"""
from __future__ import annotations

import csv
import datetime
import functools
import math
import os
from typing import Iterator, Sequence

from fastint.data.preprocess import RawFields, RawRow, file_signature


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


@functools.lru_cache(maxsize=1 << 16)  # integer values repeat heavily; parsing dominates otherwise
def ln2_bucket(value: str) -> str:
    """Criteo integer feature -> bucket token: ``floor(ln(x)^2)`` if ``x > 2`` else ``x``; '' stays ''."""
    if value == "":
        return ""
    x = int(value)
    return str(int(math.floor(math.log(x) ** 2))) if x > 2 else str(x)


def signed_log2(value: str) -> float:
    if value == "":
        return 0.0
    x = float(value)
    return math.copysign(math.log2(1.0 + abs(x)), x)


def _raw_number(value: str) -> float:
    return float(value) if value != "" else 0.0


def _number(value: str, where: str) -> float:
    try:
        x = float(value) if value != "" else 0.0
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: numeric value {value!r} is not finite")
    return x


class CriteoReader:
    name = "criteo"
    NUM_INT, NUM_CAT = 13, 26

    def __init__(self, path: str, numeric: str = "ln2"):
        if numeric not in ("ln2", "log2", "raw"):
            raise ValueError(f"criteo numeric transform must be ln2, log2 or raw, got {numeric!r}")
        self.path = _require_file(path, "criteo")
        self.numeric = numeric
        ints = tuple(f"I{i}" for i in range(1, self.NUM_INT + 1))
        cats = tuple(f"C{i}" for i in range(1, self.NUM_CAT + 1))
        self.fields = RawFields(categorical=ints + cats) if numeric == "ln2" else RawFields(cats, ints)

    def describe(self) -> dict:
        return {"format": self.name, "numeric": self.numeric, **file_signature(self.path)}

    def rows(self) -> Iterator[RawRow]:
        transform = signed_log2 if self.numeric == "log2" else _raw_number
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 1 + self.NUM_INT + self.NUM_CAT:
                    raise ValueError(f"{self.path}:{lineno}: expected 40 tab-separated columns, got {len(parts)}")
                ints, cats = parts[1:1 + self.NUM_INT], parts[1 + self.NUM_INT:]
                try:
                    label = float(parts[0])
                    if self.numeric == "ln2":
                        yield label, [ln2_bucket(v) for v in ints] + cats, (), ()
                    else:
                        yield label, cats, [transform(v) for v in ints], ()
                except ValueError as err:
                    raise ValueError(f"{self.path}:{lineno}: {err}") from None


class CSVReader:
    """Generic CSV with a header; see the module docstring."""

    name = "csv"

    def __init__(self, path: str, label: str, categorical: Sequence[str] = (), numeric: Sequence[str] = (),
                 multi: Sequence[str] = (), sep: str = ",", multi_sep: str = "|", multi_pooling: str = "mean"):
        self.path = _require_file(path, self.name)
        self.label, self.sep, self.multi_sep = label, sep, multi_sep
        self.fields = RawFields(tuple(categorical), tuple(numeric), tuple(multi), multi_pooling)
        header = self._header()
        missing = [c for c in (label, *categorical, *numeric, *multi) if c not in header]
        if missing:
            raise ValueError(f"{self.path}: column(s) {', '.join(missing)} not in the header {header}")
        if not (categorical or numeric or multi):
            raise ValueError("csv reader needs at least one categorical, numeric or multi column")

    def _header(self) -> list[str]:
        with open(self.path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f, delimiter=self.sep), [])

    def describe(self) -> dict:
        return {"format": self.name, "label": self.label, "fields": list(map(list, (
            self.fields.categorical, self.fields.numeric, self.fields.multi))), "sep": self.sep,
            "multi_sep": self.multi_sep, "pooling": self.fields.multi_pooling, **file_signature(self.path)}

    def records(self) -> Iterator[tuple[int, dict]]:
        with open(self.path, newline="", encoding="utf-8") as f:
            for lineno, rec in enumerate(csv.DictReader(f, delimiter=self.sep), 2):
                yield lineno, rec

    def convert(self, rec: dict, where: str) -> RawRow | None:
        """One record -> a row (None drops it)."""
        f = self.fields
        if any(rec.get(c) is None for c in (self.label, *f.categorical, *f.numeric, *f.multi)):
            raise ValueError(f"{where}: too few columns")
        return (_number(rec[self.label], where), [rec[c] for c in f.categorical],
                [_number(rec[c], where) for c in f.numeric],
                [[t for t in rec[c].split(self.multi_sep) if t] for c in f.multi])

    def rows(self) -> Iterator[RawRow]:
        for lineno, rec in self.records():
            row = self.convert(rec, f"{self.path}:{lineno}")
            if row is not None:
                yield row


class AvazuReader(CSVReader):
    name = "avazu"

    def __init__(self, path: str):
        self.path = _require_file(path, self.name)
        self.sep = ","
        header = self._header()
        if "click" not in header or "hour" not in header:
            raise ValueError(f"{path}: not an Avazu CSV (needs 'click' and 'hour' columns), header {header}")
        cats = tuple(c for c in header if c not in ("id", "click")) + ("weekday",)
        self.label, self.multi_sep = "click", "|"
        self.fields = RawFields(cats)

    def describe(self) -> dict:
        return {"format": self.name, **file_signature(self.path)}

    def convert(self, rec: dict, where: str) -> RawRow:
        hour = rec.get("hour") or ""
        if len(hour) != 8 or not hour.isdigit():
            raise ValueError(f"{where}: hour {hour!r} is not YYMMDDHH")
        date = datetime.date(2000 + int(hour[:2]), int(hour[2:4]), int(hour[4:6]))
        values = {**rec, "hour": hour[6:], "weekday": str(date.weekday())}
        if any(values.get(c) is None for c in self.fields.categorical):
            raise ValueError(f"{where}: too few columns")
        return _number(rec["click"], where), [values[c] for c in self.fields.categorical], (), ()


MOVIELENS_FIELDS = RawFields(("user_id", "movie_id", "gender", "age", "occupation", "zip"), (), ("genres",))


def movielens_label(rating: str, where: str) -> float | None:
    r = _number(rating, where)
    return None if r == 3 else float(r > 3)


class MovieLensCSVReader(CSVReader):
    name = "movielens"

    def __init__(self, path: str):
        super().__init__(path, "rating", MOVIELENS_FIELDS.categorical, (), MOVIELENS_FIELDS.multi)

    def describe(self) -> dict:
        return {"format": "movielens-csv", **file_signature(self.path)}

    def convert(self, rec: dict, where: str) -> RawRow | None:
        row = super().convert(rec, where)
        label = movielens_label(rec["rating"], where)
        return None if label is None else (label, *row[1:])


class MovieLensDatReader:
    """MovieLens-1M ``.dat`` files; users and movies (a few thousand rows) are held in dicts, the
    ratings stream."""

    name = "movielens"
    fields = MOVIELENS_FIELDS

    def __init__(self, directory: str):
        self.directory = directory
        self.files = {n: _require_file(os.path.join(directory, f"{n}.dat"), "movielens")
                      for n in ("ratings", "users", "movies")}

    def describe(self) -> dict:
        return {"format": "movielens-dat", **{n: file_signature(p) for n, p in self.files.items()}}

    def _table(self, name: str, width: int) -> Iterator[tuple[str, list[str]]]:
        with open(self.files[name], encoding="latin-1") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\r\n").split("::")
                if len(parts) != width:
                    raise ValueError(f"{self.files[name]}:{lineno}: expected {width} '::'-separated "
                                     f"columns, got {len(parts)}")
                yield f"{self.files[name]}:{lineno}", parts

    def rows(self) -> Iterator[RawRow]:
        users = {p[0]: p[1:5] for _, p in self._table("users", 5)}       # gender, age, occupation, zip
        genres = {p[0]: [g for g in p[2].split("|") if g] for _, p in self._table("movies", 3)}
        for where, (user, movie, rating, _) in self._table("ratings", 4):
            label = movielens_label(rating, where)
            if label is None:
                continue
            if user not in users or movie not in genres:
                raise ValueError(f"{where}: unknown user {user} or movie {movie}")
            yield label, [user, movie, *users[user]], (), [genres[movie]]


def movielens_reader(path: str):
    """The .dat reader for a directory, the CSV reader for a file."""
    if os.path.isdir(path):
        return MovieLensDatReader(path)
    return MovieLensCSVReader(path)


class LibFMReader:
    name = "libfm"

    def __init__(self, path: str, raw_labels: bool = False):
        self.path = _require_file(path, self.name)
        self.raw_labels = raw_labels
        with open(self.path) as f:
            first = f.readline().split()
        if len(first) < 2:
            raise ValueError(f"{path}:1: expected 'label idx:val ...' with at least one feature")
        self.fields = RawFields(tuple(f"f{k}" for k in range(len(first) - 1)))

    def describe(self) -> dict:
        return {"format": self.name, "raw_labels": self.raw_labels, **file_signature(self.path)}

    def rows(self) -> Iterator[RawRow]:
        width = len(self.fields.categorical)
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{self.path}:{lineno}"
                if len(parts) - 1 > width:
                    raise ValueError(f"{where}: {len(parts) - 1} features, the first line has {width}")
                tokens = []
                for item in parts[1:]:
                    idx, sep, val = item.partition(":")
                    if not sep or _number(val, where) != 1.0:
                        raise ValueError(f"{where}: feature {item!r} is not 'idx:1' (one-hot libfm)")
                    tokens.append(idx)
                label = _number(parts[0], where)
                yield (label if self.raw_labels else float(label > 0)), tokens + [""] * (width - len(tokens)), (), ()
