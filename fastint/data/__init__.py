"""Datasets: the synthetic default, readers for the standard formats (preprocessed once and cached as
memory-mapped ``.npy``), and the batch loader."""
from __future__ import annotations

from fastint.data.dataset import Dataset, split_indices
from fastint.data.loader import BatchLoader
from fastint.data.preprocess import load_or_preprocess
from fastint.data.readers import AvazuReader, CriteoReader, CSVReader, LibFMReader, movielens_reader
from fastint.data.synthetic import make_synthetic

DATASETS = ("synthetic", "criteo", "avazu", "movielens", "libfm", "csv")
_READERS = {"criteo": CriteoReader, "avazu": AvazuReader, "movielens": movielens_reader,
            "libfm": LibFMReader, "csv": CSVReader}
_PREPROCESS_KEYS = ("min_count", "max_multi_len")


def load_dataset(name: str, path: str | None = None, *, cache_dir: str | None = None, seed: int = 0,
                 progress: bool = True, **options) -> Dataset:
    """Dataset ``name`` (one of ``DATASETS``). ``synthetic`` takes ``rows`` and ``seed``; the others
    read ``path`` with the reader's options (see ``fastint.data.readers``) plus ``min_count``
    (default 10) and ``max_multi_len``, and are cached under ``cache_dir``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if name == "synthetic":
        unknown = set(options) - {"rows"}
        if unknown:
            raise ValueError(f"unknown synthetic dataset option(s): {', '.join(sorted(unknown))}")
        return make_synthetic(seed=seed, **options)
    if not path:
        raise ValueError(f"dataset {name!r} needs a data path (--data-path)")
    prep = {k: options.pop(k) for k in _PREPROCESS_KEYS if k in options}
    try:
        reader = _READERS[name](path, **options)
    except TypeError as err:
        raise ValueError(f"bad options for the {name} reader: {err}") from None
    return load_or_preprocess(reader, cache_dir, seed=seed, progress=progress, **prep)


__all__ = ["BatchLoader", "DATASETS", "Dataset", "load_dataset", "make_synthetic", "split_indices"]
