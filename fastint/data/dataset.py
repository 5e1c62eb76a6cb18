"""``Dataset``: encoded columns of a CTR dataset plus its schema, splits and info.

Columns (``N`` rows, grouped by field kind in schema order, like ``fastint.schema.Batch``):

* ``categorical`` int32 ``[N, Mc]`` field-local ids; ``-1`` = out of vocabulary (rare or unseen);
* ``numeric`` float32 ``[N, Mn]``;
* ``multi`` int32 ``[N, Mm, L]`` field-local ids padded with ``-1`` (rare ids are dropped);
* ``label`` float32 ``[N]``;
* ``prob`` float64 ``[N]`` (synthetic data only): the true click probability.

Splits are index arrays (``int64``) into the rows. On disk (``save``/``load``) every column and
split is one ``.npy`` file, opened memory-mapped, and ``meta.json`` holds the schema, the split
names, the vocabularies and the info dict; ``meta.json`` is written last, so a directory holding it
is complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from fastint.schema import Schema

COLUMNS = ("categorical", "numeric", "multi", "label", "prob")
META = "meta.json"
FORMAT_VERSION = 2  # 2: polars/Arrow preprocessing (fastint.data.encode); version-1 caches are rebuilt


@dataclass
class Dataset:
    schema: Schema
    columns: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self)
        for name, col in self.columns.items():
            if name not in COLUMNS:
                raise ValueError(f"unknown column {name!r}; expected one of {COLUMNS}")
            if col.shape[0] != n:
                raise ValueError(f"column {name!r} has {col.shape[0]} rows, label has {n}")
        for name, idx in self.splits.items():
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"split {name!r} indexes rows outside [0, {n})")

    def __len__(self) -> int:
        return int(self.columns["label"].shape[0])

    def split_size(self, name: str) -> int:
        return int(self.split(name).shape[0])

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise ValueError(f"dataset has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[name]

    def save(self, directory: str) -> None:
        """Write every column and split as ``.npy`` plus ``meta.json`` (last) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        for name, col in self.columns.items():
            np.save(os.path.join(directory, f"{name}.npy"), np.ascontiguousarray(col))
        for name, idx in self.splits.items():
            np.save(os.path.join(directory, f"split_{name}.npy"), idx.astype(np.int64))
        write_meta(directory, self.schema, list(self.columns), list(self.splits), self.info, self.vocab)

    @classmethod
    def load(cls, directory: str) -> "Dataset":
        """Open a saved dataset; the columns are memory-mapped read-only."""
        path = os.path.join(directory, META)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no preprocessed dataset in {directory} (missing {META})")
        with open(path) as f:
            meta = json.load(f)
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {meta.get('version')} != {FORMAT_VERSION}; delete it")
        columns = {c: np.load(os.path.join(directory, f"{c}.npy"), mmap_mode="r") for c in meta["columns"]}
        splits = {s: np.load(os.path.join(directory, f"split_{s}.npy")) for s in meta["splits"]}
        return cls(Schema.from_dict(meta["schema"]), columns, splits, meta["info"], meta.get("vocab", {}))


def write_meta(directory: str, schema: Schema, columns: list[str], splits: list[str], info: dict,
               vocab: dict[str, list[str]]) -> None:
    meta = {"version": FORMAT_VERSION, "schema": schema.to_dict(), "columns": columns, "splits": splits,
            "info": info, "vocab": vocab}
    tmp = os.path.join(directory, META + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(meta))  # dumps: the C encoder (dump streams through the Python one)
    os.replace(tmp, os.path.join(directory, META))


def split_indices(n: int, seed: int, fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
                  names: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, np.ndarray]:
    """A seeded random partition of ``range(n)``: split ``k`` gets ``round(n * cumsum(fractions))``
    boundaries; each split's indices are sorted (sequential reads from the memmaps)."""
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be {len(names)} non-negative numbers summing to 1, "
                         f"got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum((0.0,) + tuple(fractions)) * n).astype(np.int64)
    return {name: np.sort(perm[bounds[i]:bounds[i + 1]]) for i, name in enumerate(names)}
