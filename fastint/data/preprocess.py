"""Streaming two-pass preprocessing of a raw dataset into a cached, memory-mapped ``Dataset``.

A reader (``fastint.data.readers``) names its fields and yields rows
``(label, categorical tokens, numeric values, multi-valued token lists)``; it is iterated twice and
never holds the file in memory:

1. count: per categorical/multi field, how often each token occurs; rows; longest multi list;
2. encode: token -> id by a vocabulary of the tokens seen at least ``min_count`` times, ordered by
   decreasing count, ties by token string (id 0 = most frequent); rarer tokens map to ``-1`` (OOV)
   in categorical fields and are dropped from multi-valued lists. Rows are written in chunks straight
   into ``.npy`` memmaps.

Then a seeded 8:1:1 train/valid/test split. The result is cached under
``<cache_root>/<name>-<hash>`` where the hash covers the reader's description (path, size, mtime,
options) and the preprocessing options; a second call just opens the memmaps.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from itertools import chain, islice, repeat
from typing import Iterator, Protocol, Sequence

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from fastint.data.dataset import Dataset, split_indices, write_meta
from fastint.schema import Field, Schema

RawRow = tuple[float, Sequence[str], Sequence[float], Sequence[Sequence[str]]]
CHUNK = 65536


@dataclass(frozen=True)
class RawFields:
    """Field names by kind, in the order the reader yields them; the schema's order is
    categorical, then numeric, then multi-valued."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    multi: tuple[str, ...] = ()
    multi_pooling: str = "mean"


class Reader(Protocol):
    name: str
    fields: RawFields

    def rows(self) -> Iterator[RawRow]: ...

    def describe(self) -> dict: ...


def default_cache_root() -> str:
    return os.environ.get("FASTINT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastint"))


def file_signature(path: str) -> dict:
    """Identity of an input file for the cache key (absolute path, size, mtime)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def load_or_preprocess(reader: Reader, cache_root: str | None = None, *, min_count: int = 10,
                       max_multi_len: int = 0, seed: int = 0, progress: bool = True) -> Dataset:
    """The cached dataset for ``reader`` and these options, preprocessing it on the first call."""
    options = {"reader": reader.describe(), "min_count": min_count, "max_multi_len": max_multi_len,
               "seed": seed}
    key = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    directory = os.path.join(cache_root or default_cache_root(), f"{reader.name}-{key}")
    if os.path.isfile(os.path.join(directory, "meta.json")):
        return Dataset.load(directory)
    return preprocess(reader, directory, min_count=min_count, max_multi_len=max_multi_len, seed=seed,
                      progress=progress, options=options)


def _vocabulary(counter: Counter, min_count: int) -> dict[str, int]:
    kept = sorted((t for t, c in counter.items() if c >= min_count), key=lambda t: (-counter[t], t))
    return {t: i for i, t in enumerate(kept)}


def preprocess(reader: Reader, directory: str, *, min_count: int = 10, max_multi_len: int = 0,
               seed: int = 0, progress: bool = True, options: dict | None = None) -> Dataset:
    """Run both passes for ``reader`` and write the dataset into ``directory`` (replaced)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    f = reader.fields
    cat_counts = [Counter() for _ in f.categorical]
    multi_counts = [Counter() for _ in f.multi]
    rows, longest = 0, 0
    with tqdm(desc=f"{reader.name}: count", unit=" rows", disable=not progress) as bar:
        for chunk in _chunks(reader.rows()):
            rows += len(chunk)
            if f.categorical:
                for counter, column in zip(cat_counts, zip(*(r[1] for r in chunk))):
                    counter.update(column)
            for j, counter in enumerate(multi_counts):
                lists = [r[3][j] for r in chunk]
                counter.update(chain.from_iterable(lists))
                longest = max(longest, max(map(len, lists)))
            bar.update(len(chunk))
    if rows == 0:
        raise ValueError(f"{reader.name}: no rows read from {reader.describe().get('path', 'the input')}")
    length = max(1, min(longest, max_multi_len) if max_multi_len else longest)
    cat_vocab = [_vocabulary(c, min_count) for c in cat_counts]
    multi_vocab = [_vocabulary(c, min_count) for c in multi_counts]

    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    shapes = {"label": ((rows,), np.float32)}
    if f.categorical:
        shapes["categorical"] = ((rows, len(f.categorical)), np.int32)
    if f.numeric:
        shapes["numeric"] = ((rows, len(f.numeric)), np.float32)
    if f.multi:
        shapes["multi"] = ((rows, len(f.multi), length), np.int32)
    cols = {k: open_memmap(os.path.join(directory, f"{k}.npy"), mode="w+", dtype=dt, shape=shape)
            for k, (shape, dt) in shapes.items()}
    start = 0
    with tqdm(total=rows, desc=f"{reader.name}: encode", unit=" rows", disable=not progress) as bar:
        for chunk in _chunks(reader.rows()):
            if start + len(chunk) > rows:
                break
            _write_chunk(cols, start, chunk, cat_vocab, multi_vocab, length)
            start += len(chunk)
            bar.update(len(chunk))
    if start != rows:
        raise ValueError(f"{reader.name}: the input changed between the counting and encoding passes")
    for col in cols.values():
        col.flush()

    schema = Schema(tuple(Field(n, "categorical", max(1, len(v))) for n, v in zip(f.categorical, cat_vocab))
                    + tuple(Field(n, "numeric") for n in f.numeric)
                    + tuple(Field(n, "multi", max(1, len(v)), f.multi_pooling) for n, v in zip(f.multi, multi_vocab)))
    splits = split_indices(rows, seed)
    for name, idx in splits.items():
        np.save(os.path.join(directory, f"split_{name}.npy"), idx)
    label = np.asarray(cols["label"])
    info = {"name": reader.name, "rows": rows, "positive_rate": float((label > 0.5).mean()),
            "min_count": min_count, "multi_len": length, "options": options or {}}
    vocab = {n: list(v) for n, v in zip(f.categorical + f.multi, cat_vocab + multi_vocab)}
    write_meta(directory, schema, list(cols), list(splits), info, vocab)
    return Dataset.load(directory)


def _chunks(rows: Iterator[RawRow], size: int = CHUNK) -> Iterator[list[RawRow]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _encode(vocab: dict[str, int], tokens: Sequence[str]) -> list[int]:
    return list(map(vocab.get, tokens, repeat(-1, len(tokens))))


def _write_chunk(cols: dict, start: int, chunk: list[RawRow], cat_vocab: list[dict], multi_vocab: list[dict],
                 length: int) -> None:
    """Encode ``chunk`` column by column into rows ``start..start+len(chunk)`` of the memmaps."""
    end = start + len(chunk)
    cols["label"][start:end] = [r[0] for r in chunk]
    if "categorical" in cols:
        for j, (vocab, column) in enumerate(zip(cat_vocab, zip(*(r[1] for r in chunk)))):
            cols["categorical"][start:end, j] = _encode(vocab, column)
    if "numeric" in cols:
        values = np.asarray([r[2] for r in chunk], dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError("numeric values must be finite (a reader produced NaN/inf)")
        cols["numeric"][start:end] = values
    if "multi" in cols:
        block = np.full((len(chunk), len(multi_vocab), length), -1, dtype=np.int32)
        for j, vocab in enumerate(multi_vocab):
            for i, r in enumerate(chunk):
                ids = [vocab[t] for t in r[3][j] if t in vocab][:length]
                block[i, j, :len(ids)] = ids
        cols["multi"][start:end] = block
