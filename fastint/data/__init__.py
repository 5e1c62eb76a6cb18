"""Datasets: the synthetic default, readers for the standard formats (preprocessed once and cached as
memory-mapped ``.npy``), and the batch loader."""
from __future__ import annotations

import functools

from fastint.data.dataset import Dataset, split_indices
from fastint.data.inputs import resolve_inputs
from fastint.data.loader import BatchLoader
from fastint.data.preprocess import load_or_preprocess
from fastint.data.readers import AvazuReader, CriteoReader, LibFMReader, TableReader, movielens_reader
from fastint.data.synthetic import make_synthetic

DATASETS = ("synthetic", "criteo", "avazu", "movielens", "libfm", "csv", "parquet")
_READERS = {"criteo": CriteoReader, "avazu": AvazuReader, "movielens": movielens_reader,
            "libfm": LibFMReader, "csv": TableReader, "parquet": functools.partial(TableReader, format="parquet")}
_PREPROCESS_KEYS = ("min_count", "max_multi_len")


def load_dataset(name: str, path: str | None = None, *, train_path: str | None = None,
                 valid_path: str | None = None, test_path: str | None = None, cache_dir: str | None = None,
                 seed: int = 0, progress: bool = True, **options) -> Dataset:
    """Dataset ``name`` (one of ``DATASETS``). ``synthetic`` takes ``rows`` and ``seed``; the others
    read ``path`` with the reader's options (see ``fastint.data.readers``) plus ``min_count``
    (default 10) and ``max_multi_len``, and are cached under ``cache_dir``.

    Input: ``path`` is one file (rows split 8:1:1 by ``seed``) or a directory of pre-split files
    (``fastint.data.inputs``); or give ``train_path``, ``valid_path`` and ``test_path``. Pre-split
    input keeps its splits; the vocabulary and min-count come from train only."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if name == "synthetic":
        unknown = set(options) - {"rows"}
        if unknown:
            raise ValueError(f"unknown synthetic dataset option(s): {', '.join(sorted(unknown))}")
        return make_synthetic(seed=seed, **options)
    inputs = resolve_inputs(name, path, train_path, valid_path, test_path, directories=name == "movielens")
    prep = {k: options.pop(k) for k in _PREPROCESS_KEYS if k in options}
    try:
        if isinstance(inputs, dict):
            source = {split: _READERS[name](p, **options) for split, p in inputs.items()}
        else:
            source = _READERS[name](inputs, **options)
    except TypeError as err:
        raise ValueError(f"bad options for the {name} reader: {err}") from None
    return load_or_preprocess(source, cache_dir, seed=seed, progress=progress, **prep)


__all__ = ["AvazuReader", "BatchLoader", "CriteoReader", "DATASETS", "Dataset", "LibFMReader", "TableReader",
           "load_dataset", "make_synthetic", "movielens_reader", "split_indices"]
