"""Streaming preprocessing of raw datasets into a cached, memory-mapped ``Dataset``.

A reader (``fastint.data.readers``) names its fields and yields polars batches of rows; the raw
file is read once, batch by batch, so memory is bounded by the batch size plus the vocabulary (see
``fastint.data.encode`` for the passes). The vocabulary of a field: the tokens seen at least
``min_count`` times, ordered by decreasing count, ties by token string (id 0 = most frequent);
rarer tokens map to ``-1`` (OOV) in categorical fields and are dropped from multi-valued lists.

Input is one reader (one file: a seeded 8:1:1 train/valid/test split of its rows) or a mapping
``{"train": r, "valid": r, "test": r}`` of readers (pre-split input: the splits are kept as given,
rows stored train, valid, test; the vocabulary and min-count come from train only, so a token
unseen in train is OOV in valid/test).

The result is cached under ``<cache_root>/<name>-<hash>``, the hash covering the readers'
descriptions (paths, sizes, mtimes, options) and the preprocessing options; a second call opens
the memmaps. It is built in a ``.partial-<pid>`` sibling directory renamed into place when
complete, so a failed or interrupted run leaves no half-written cache.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Iterator, Mapping, Protocol

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from fastint.data.dataset import FORMAT_VERSION, META, Dataset, split_indices, write_meta
from fastint.data.encode import ColumnStore
from fastint.schema import Field, Schema

BATCH_ROWS = 1 << 19
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class RawFields:
    """Field names by kind; the schema's order is categorical, then numeric, then multi-valued."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    multi: tuple[str, ...] = ()
    multi_pooling: str = "mean"


class Reader(Protocol):
    """``batches`` yields polars DataFrames with ``scan.LABEL`` (float) and one column per field:
    categorical of any type (the token is the value as text, null = ``""``), numeric (finite float),
    multi-valued (list of strings). Optionally ``token_maps``: field -> function from a batch's
    distinct values (a polars Series) to their tokens (see ``fastint.data.encode``)."""

    name: str
    path: str
    fields: RawFields
    labeled: bool  # False: a file without labels (scored by ``fastint predict``, never trained on)

    def batches(self, rows: int) -> Iterator[pl.DataFrame]: ...

    def describe(self) -> dict: ...


def default_cache_root() -> str:
    return os.environ.get("FASTINT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastint"))


def file_signature(path: str) -> dict:
    """Identity of an input file for the cache key (absolute path, size, mtime)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def _readers(source: Reader | Mapping[str, Reader]) -> dict[str | None, Reader]:
    if not isinstance(source, Mapping):
        return {None: source}
    if tuple(source) != SPLITS:
        raise ValueError(f"pre-split input needs the readers of {', '.join(SPLITS)} in that order, got {list(source)}")
    return dict(source)


def load_or_preprocess(source: Reader | Mapping[str, Reader], cache_root: str | None = None, *,
                       min_count: int = 10, max_multi_len: int = 0, seed: int = 0,
                       progress: bool = True) -> Dataset:
    """The cached dataset for ``source`` (a reader, or train/valid/test readers) and these options,
    preprocessing it on the first call (or when the cache has an older format)."""
    readers = _readers(source)
    given = None not in readers
    options = {"reader": {s: r.describe() for s, r in readers.items()} if given else readers[None].describe(),
               "min_count": min_count, "max_multi_len": max_multi_len}
    if not given:
        options["seed"] = seed  # given splits do not depend on it
    key = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    directory = os.path.join(cache_root or default_cache_root(), f"{next(iter(readers.values())).name}-{key}")
    if _complete(directory):
        return Dataset.load(directory)
    return preprocess(source, directory, min_count=min_count, max_multi_len=max_multi_len, seed=seed,
                      progress=progress, options=options)


def _complete(directory: str) -> bool:
    """``directory`` holds a dataset in the current format."""
    try:
        with open(os.path.join(directory, META)) as f:
            return json.load(f).get("version") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


def preprocess(source: Reader | Mapping[str, Reader], directory: str, *, min_count: int = 10,
               max_multi_len: int = 0, seed: int = 0, progress: bool = True, options: dict | None = None) -> Dataset:
    """Preprocess ``source`` into ``directory`` (replaced once the new dataset is complete)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    readers = _readers(source)
    first = next(iter(readers.values()))
    fields = first.fields
    for reader in readers.values():
        if not reader.labeled:
            raise ValueError(f"{reader.path}: no label column; training and evaluation data need labels")
        if reader.fields != fields:
            raise ValueError(f"{reader.path}: its fields {reader.fields} differ from those of {first.path} {fields}")
    _remove_stale_builds(directory)
    replacing = _complete(directory)
    build = f"{directory}.partial-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    os.makedirs(build)
    try:
        dataset_info, columns, splits, vocab = _build(readers, build, min_count, max_multi_len, seed, progress)
        dataset_info["options"] = options or {}
        schema = Schema(tuple(Field(n, "categorical", max(1, len(vocab[n]))) for n in fields.categorical)
                        + tuple(Field(n, "numeric") for n in fields.numeric)
                        + tuple(Field(n, "multi", max(1, len(vocab[n])), fields.multi_pooling) for n in fields.multi))
        for name, idx in splits.items():
            np.save(os.path.join(build, f"split_{name}.npy"), idx)
        write_meta(build, schema, columns, list(splits), dataset_info, vocab)
        if not replacing and _complete(directory):  # another process built it meanwhile: keep theirs
            shutil.rmtree(build)
        else:
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(build, directory)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Dataset.load(directory)


def _build(readers: dict, build: str, min_count: int, max_multi_len: int, seed: int, progress: bool):
    """Both passes into ``build``: (info, column names, splits, vocabularies by field name)."""
    first = next(iter(readers.values()))
    fields = first.fields
    sizes = {}
    with ColumnStore(build, fields, getattr(first, "token_maps", None)) as store:
        for split, reader in readers.items():
            start = store.rows
            with tqdm(desc=f"{reader.name}: read {split or 'all'}", unit=" rows", disable=not progress) as bar:
                for batch in reader.batches(BATCH_ROWS):
                    store.add(batch, counted=split in (None, "train"))
                    bar.update(batch.height)
            sizes[split] = store.rows - start
            if sizes[split] == 0:
                raise ValueError(f"{reader.name}: no rows read from {reader.path}")
        store.end_pass1()
        vocab = store.vocabulary(min_count)
        length = store.remap(vocab, max_multi_len, progress, desc=f"{first.name}: encode")
        store.discard_work()
    names = fields.categorical + fields.multi
    tokens = {n: [] for n in names}
    for (field,), part in vocab.partition_by("field", as_dict=True, maintain_order=True).items():
        tokens[names[field]] = part.get_column("token").to_list()
    rows = store.rows
    if None in readers:
        splits, split_rule = split_indices(rows, seed), f"seeded 8:1:1 (seed {seed})"
    else:
        bounds = np.cumsum([0] + [sizes[s] for s in SPLITS])
        splits = {s: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, s in enumerate(SPLITS)}
        split_rule = "given"
    label = np.load(os.path.join(build, "label.npy"), mmap_mode="r")
    info = {"name": first.name, "rows": rows, "positive_rate": float((label > 0.5).mean()),
            "min_count": min_count, "multi_len": length, "splits": split_rule}
    return info, store.columns, splits, tokens


def _remove_stale_builds(directory: str) -> None:
    """Partial builds of ``directory`` left by processes that no longer run (killed mid-way)."""
    for path in glob.glob(glob.escape(directory) + ".partial-*"):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
