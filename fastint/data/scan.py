"""Reading raw files in row batches (polars, pyarrow) and checking their values, with errors that
name the file and the line.

A reader describes its conversion as a ``Conversion``: output expressions over the raw (text)
columns plus the ``Check``s that must hold. The fast path evaluates all of it inside polars' query
(streaming, batch by batch) with one combined flag per row; only when a batch has a flagged row are
the checks evaluated one by one on that row, to raise one ``ValueError`` naming the file, the line
and what is wrong.

Every raw batch carries ``LINE``, the 1-based position of each row in its file; ``Source`` turns
it into ``path:line`` (text files; for CSV the physical line is found by re-reading the file up to
the bad record, only on error) or ``path: row N`` (Parquet).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

LINE = "_line"     # 1-based line (text) or row (Parquet) of each raw row
BAD = "_bad"       # a check failed on the row
LABEL = "_label"   # the label column of the batches a reader yields
RESERVED = frozenset((LINE, BAD, LABEL, "_fields", "_features", "_parts"))  # never field names
CSV_BLOCK_BYTES = 16 << 20


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


@dataclass(frozen=True)
class Source:
    """Where rows come from. ``unit``: ``"line"`` (``LINE`` is the line number of a headerless text
    file), ``"record"`` (the 1-based CSV record after the header) or ``"row"`` (Parquet)."""

    path: str
    unit: str = "line"
    sep: str = ","

    def where(self, position: int) -> str:
        if self.unit == "row":
            return f"{self.path}: row {position}"
        if self.unit == "record":
            position = _csv_record_line(self.path, self.sep, position)
        return f"{self.path}:{position}"


@dataclass(frozen=True)
class Check:
    """``bad`` (a boolean expression over raw columns; null counts as false) flags a row;
    ``message(row)`` says why. ``value`` checks hint at a header line when they fail on line 1."""

    bad: pl.Expr
    message: Callable[[dict], str]
    value: bool = False


@dataclass
class Conversion:
    """Output columns computed from raw columns, valid where no check flags the row."""

    source: Source
    outputs: list[pl.Expr] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def number(self, column: str, dtype=pl.Float64, *, required: bool = False, what: str | None = None,
               strip: bool = True) -> pl.Expr:
        """The text column ``column`` as ``dtype`` (with its checks added): surrounding whitespace
        allowed if ``strip`` (as Python's ``float``/``int``); an empty field is an error if
        ``required``, else 0.0 for floats and null for integers; floats must be finite."""
        text = pl.col(column)
        value = (text.str.strip_chars() if strip else text).cast(dtype, strict=False)
        label = what or f"column {column}"
        kind = "an integer" if dtype.is_integer() else "a number"
        self.checks.append(Check(text.is_not_null() & value.is_null() & ((text != "") | required),
                                 lambda r: f"{label} {r[column]!r} is not {kind}", value=True))
        if dtype.is_integer():
            return value.alias(column)
        return self._finite(value, column, label)

    def finite(self, column: str) -> pl.Expr:
        """A typed (non-text) numeric column as float64, null -> 0, checked finite."""
        return self._finite(pl.col(column).cast(pl.Float64), column, f"column {column}")

    def _finite(self, value: pl.Expr, column: str, label: str) -> pl.Expr:
        self.checks.append(Check(~value.is_finite(), lambda r: f"{label}: numeric value {r[column]!r} is not finite"))
        return value.fill_null(0.0).alias(column)

    def _flagged(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        bad = pl.any_horizontal([c.bad for c in self.checks]).fill_null(False) if self.checks else pl.lit(False)
        return raw.select(pl.col(LINE), bad.alias(BAD), *self.outputs)

    def explain(self, rows: pl.DataFrame) -> None:
        """Raise the ``ValueError`` of the first check that fails on the first of ``rows``."""
        row = rows.head(1)
        for check in self.checks:
            if row.select(check.bad.fill_null(False)).item():
                r = row.row(0, named=True)
                hint = (" (is line 1 a header? this format has none)"
                        if check.value and self.source.unit == "line" and r[LINE] == 1 else "")
                raise ValueError(f"{self.source.where(r[LINE])}: {check.message(r)}{hint}")
        raise AssertionError(f"{self.source.path}: a row was flagged but no check fails on it")

    def batches(self, raw: pl.LazyFrame | Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
        """The outputs of ``raw`` (a lazy scan, or raw batches), in batches of about ``rows`` rows."""
        if isinstance(raw, pl.LazyFrame):
            try:
                for out in self._flagged(raw).collect_batches(chunk_size=rows):
                    if out.get_column(BAD).any():
                        first = out.filter(pl.col(BAD)).get_column(LINE)[0]
                        self.explain(raw.filter(pl.col(LINE) == first).collect())
                    yield out.drop(LINE, BAD)
            except pl.exceptions.PolarsError as err:  # e.g. invalid UTF-8: name the line if we can
                line = _undecodable_line(self.source.path)
                where = f"{self.source.path}:{line}: not UTF-8 text" if line else f"{self.source.path}: {err}"
                raise ValueError(where) from None
        else:
            for batch in raw:
                out = self._flagged(batch.lazy()).collect()
                if out.get_column(BAD).any():
                    self.explain(batch.filter(out.get_column(BAD)))
                yield out.drop(LINE, BAD)


def _undecodable_line(path: str) -> int | None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def lines(path: str) -> pl.LazyFrame:
    """``path`` as text lines (``line``, without the line break) with their 1-based ``LINE``."""
    return pl.scan_lines(path, name="line", row_index_name=LINE, row_index_offset=1)


def split_fields(lazy: pl.LazyFrame, sep: str, names: Sequence[str]) -> pl.LazyFrame:
    """Lines split on ``sep`` into the text columns ``names`` (a missing field is null) and ``_fields``,
    the number of fields of the line."""
    parts = pl.col("_parts")
    return (lazy.select(LINE, _parts=pl.col("line").str.split(sep, inclusive=False))
            .select(LINE, parts.list.len().alias("_fields"),
                    *(parts.list.get(j, null_on_oob=True).alias(n) for j, n in enumerate(names))))


def first_line(path: str) -> str:
    """The first line of a text file (``ValueError`` naming the file if it is not UTF-8)."""
    with open(path, "rb") as f:
        line = f.readline()
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}:1: not UTF-8 text") from None


def csv_header(path: str, sep: str) -> list[str]:
    """The first record of a CSV file; ``ValueError`` when the file is empty."""
    header = next(csv.reader([first_line(path)], delimiter=sep), None)
    if not header:
        raise ValueError(f"{path}:1: empty file, expected a header line")
    return header


def csv_batches(path: str, header: Sequence[str], columns: Sequence[str], sep: str,
                rows: int) -> Iterator[pl.DataFrame]:
    """The ``columns`` of a CSV file with ``header`` as text (empty fields ``""``), in batches of about
    ``rows`` rows, with ``LINE`` = the record number; a record with another field count than the
    header raises ``ValueError`` naming its line."""
    ragged: list = []

    def invalid(row) -> str:
        ragged.append(row)
        return "error"

    read = pacsv.ReadOptions(column_names=list(header), skip_rows=1, block_size=CSV_BLOCK_BYTES)
    parse = pacsv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=invalid)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=list(columns),
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    start, pending = 1, []
    try:
        for record_batch in pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
            pending.append(pl.from_arrow(record_batch))
            if sum(b.height for b in pending) >= rows:
                start = yield from _flush(pending, start)
    except pa.ArrowInvalid as err:
        if not ragged:
            line = _undecodable_line(path)
            raise ValueError(f"{path}:{line}: not UTF-8 text" if line else f"{path}: {err}") from None
        row = ragged[0]
        line = _csv_ragged_line(path, sep, len(header)) or "?"
        raise ValueError(f"{path}:{line}: expected {row.expected_columns} columns (as the header), "
                         f"got {row.actual_columns}: {row.text[:200]!r}") from None
    yield from _flush(pending, start)


def _flush(pending: list[pl.DataFrame], start: int):
    if not pending:
        return start
    batch = pl.concat(pending)
    pending.clear()
    yield batch.with_row_index(LINE, offset=start)
    return start + batch.height


def _csv_records(path: str, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of the non-empty records after the header."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        next(reader, None)
        start = reader.line_num + 1
        for record in reader:
            if record:
                yield start, record
            start = reader.line_num + 1


def _csv_record_line(path: str, sep: str, record: int) -> int | str:
    found = next(islice(_csv_records(path, sep), record - 1, None), None)
    return found[0] if found else f"record {record}"


def _csv_ragged_line(path: str, sep: str, width: int) -> int | None:
    return next((line for line, rec in _csv_records(path, sep) if len(rec) != width), None)


def parquet_columns(path: str) -> dict[str, pl.DataType]:
    return dict(pl.read_parquet_schema(path))


def parquet_scan(path: str, columns: Sequence[str]) -> pl.LazyFrame:
    """The ``columns`` of a Parquet file as stored, with ``LINE`` = the 1-based row."""
    return pl.scan_parquet(path).select(columns).with_row_index(LINE, offset=1)
