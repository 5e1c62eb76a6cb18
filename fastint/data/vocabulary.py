"""New rows encoded with a trained dataset's vocabulary (what ``fastint predict`` scores).

A run's dataset (``Dataset``) keeps, per categorical and multi-valued field, its vocabulary: the
token of id ``i`` is ``vocab[field][i]``. ``VocabularyEncoder`` turns the batches of a reader of the
same format and options (``fastint.data.readers``) into the dataset's columns with exactly the
preprocessing of training: the reader's conversions and token maps (e.g. Criteo's ``ln2`` buckets),
then token -> id by the training vocabulary; a token the vocabulary lacks (rare in training, or
never seen) is the OOV id ``-1``, and is dropped from multi-valued lists, which are cut to the
dataset's list length ``L``. Nothing is counted or cached: the file streams batch by batch.

Per batch (``n`` rows) ``encode`` returns ``categorical`` int32 ``[n, Mc]``, ``numeric`` float32
``[n, Mn]``, ``multi`` int32 ``[n, Mm, L]`` (``-1`` padded) and ``label`` float32 ``[n]`` (NaN for an
unlabeled file), the fields in the schema's order.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from fastint.data.dataset import Dataset
from fastint.data.encode import columns_to_rows, dictionary_codes, scatter_lists, text_tokens
from fastint.data.scan import LABEL


class VocabularyEncoder:
    """Encodes ``reader``'s batches with ``dataset``'s schema and vocabularies (module docstring)."""

    def __init__(self, dataset: Dataset, reader):
        fields = reader.fields
        given = ([(n, "categorical") for n in fields.categorical] + [(n, "numeric") for n in fields.numeric]
                 + [(n, "multi") for n in fields.multi])
        trained = [(f.name, f.kind) for f in dataset.schema.fields]
        if given != trained:
            raise ValueError(f"{reader.path}: its fields {_describe(given)} are not the run's {_describe(trained)}")
        self.fields = fields
        maps = getattr(reader, "token_maps", None) or {}
        self.token_maps = {n: maps.get(n, text_tokens) for n in fields.categorical + fields.multi}
        self.vocab = {n: pl.DataFrame({"token": pl.Series(dataset.vocab.get(n, []), dtype=pl.String)})
                      .with_row_index("id").with_columns(pl.col("id").cast(pl.Int32)) for n in self.token_maps}
        self.multi_len = int(dataset.columns["multi"].shape[2]) if fields.multi else 0
        self.values = 0   # categorical and multi-valued values encoded so far
        self.unknown = 0  # of which out of the vocabulary

    def ids(self, column: pl.Series) -> np.ndarray:
        """int32 ids of ``column``'s values (of their flattened lists for a multi-valued field)."""
        codes, dictionary, counts = dictionary_codes(column)
        tokens = self.token_maps[column.name](pl.Series(pl.from_arrow(dictionary)))
        table = (pl.DataFrame({"token": tokens}).join(self.vocab[column.name], on="token", how="left",
                                                       maintain_order="left")
                 .get_column("id").fill_null(-1).to_numpy())
        self.values += len(codes)
        self.unknown += int(counts[table < 0].sum())
        return table[codes]

    def encode(self, batch: pl.DataFrame) -> dict[str, np.ndarray]:
        """The dataset columns of one reader batch (module docstring)."""
        f = self.fields
        columns = {"label": batch.get_column(LABEL).cast(pl.Float32).to_numpy()}
        if f.categorical:
            columns["categorical"] = columns_to_rows([self.ids(batch.get_column(n)) for n in f.categorical])
        if f.numeric:
            columns["numeric"] = batch.select(pl.col(f.numeric).cast(pl.Float32)).to_numpy()
        if f.multi:
            multi = np.full((batch.height, len(f.multi), self.multi_len), -1, dtype=np.int32)
            for j, name in enumerate(f.multi):
                lists = batch.get_column(name)
                scatter_lists(multi[:, j], self.ids(lists), lists.list.len().fill_null(0).to_numpy())
            columns["multi"] = multi
        return columns


def _describe(fields: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} ({kind})" for name, kind in fields[:6])
    return f"[{shown}{', ...' if len(fields) > 6 else ''}] ({len(fields)} fields)"
