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
from fastint.data.vocabulary import VocabularyEncoder

DATASETS = ("synthetic", "criteo", "avazu", "movielens", "libfm", "csv", "parquet")
_READERS = {"criteo": CriteoReader, "avazu": AvazuReader, "movielens": movielens_reader,
            "libfm": LibFMReader, "csv": TableReader, "parquet": functools.partial(TableReader, format="parquet")}
_PREPROCESS_KEYS = ("min_count", "max_multi_len")
UNLABELED_FORMATS = ("criteo", "avazu", "csv", "parquet")  # their readers take label_optional


def open_reader(name: str, path: str, **options):
    """The reader of dataset ``name`` (a file format, not ``synthetic``) for ``path`` with its
    reader ``options`` (see ``fastint.data.readers``); a bad option is a ``ValueError``."""
    if name not in _READERS:
        raise ValueError(f"dataset {name!r} has no reader; readers: {', '.join(_READERS)}")
    try:
        return _READERS[name](path, **options)
    except TypeError as err:
        raise ValueError(f"bad options for the {name} reader: {err}") from None


def reader_options(options: dict) -> dict:
    """The reader's share of a dataset's options (without the preprocessing's ``min_count``, ...)."""
    return {k: v for k, v in options.items() if k not in _PREPROCESS_KEYS}


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
    prep = {k: v for k, v in options.items() if k in _PREPROCESS_KEYS}
    options = reader_options(options)
    if isinstance(inputs, dict):
        source = {split: open_reader(name, p, **options) for split, p in inputs.items()}
    else:
        source = open_reader(name, inputs, **options)
    return load_or_preprocess(source, cache_dir, seed=seed, progress=progress, **prep)


__all__ = ["AvazuReader", "BatchLoader", "CriteoReader", "DATASETS", "Dataset", "LibFMReader", "TableReader",
           "UNLABELED_FORMATS", "VocabularyEncoder", "load_dataset", "make_synthetic", "movielens_reader",
           "open_reader", "reader_options", "split_indices"]
