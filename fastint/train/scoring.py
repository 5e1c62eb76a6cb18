"""Scoring a file of new rows with a trained model (``fastint predict``).

``score_file`` streams ``reader``'s batches (``fastint.data.preprocess.BATCH_ROWS`` rows at a time,
so memory is bounded whatever the file's size), encodes each with the training vocabulary
(``fastint.data.VocabularyEncoder``: ids never seen in training are OOV), scores it in mini-batches
of ``batch_size`` (the probability for binary models, the prediction for regression) and appends one line per input row, in the file's order, to a CSV:
``score`` (9 significant digits, enough to round-trip float32), plus ``label`` when the file has
labels. The CSV is written beside ``out`` and renamed onto it when complete, so an interrupted or
failed run leaves no partial output; its SHA-256 is the summary's checksum.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastint.data import BatchLoader, Dataset, VocabularyEncoder
from fastint.data.preprocess import BATCH_ROWS
from fastint.metrics import compute_metrics


@dataclass
class ScoreSummary:
    rows: int
    sha256: str               # of the written CSV
    mean_score: float
    unknown_fraction: float   # of the categorical / multi-valued values: out of the training vocabulary
    metrics: dict | None      # the model's metrics on the file's labels (labeled files only)


def score_file(model: torch.nn.Module, dataset: Dataset, reader, out: str, *, batch_size: int = 8192,
               device: torch.device | str = "cpu", progress: bool = True) -> ScoreSummary:
    """Score every row of ``reader``'s file with ``model`` (trained on ``dataset``) into the CSV
    ``out`` (module docstring)."""
    encoder = VocabularyEncoder(dataset, reader)
    task = getattr(model, "task", "binary")
    model.eval()
    partial = f"{out}.partial-{os.getpid()}"
    digest, rows, total = hashlib.sha256(), 0, 0.0
    labels, outputs = [], []   # labeled files: for the metrics (computed from logits for binary models)
    try:
        with open(partial, "wb") as f, tqdm(desc=f"score {os.path.basename(reader.path)}", unit=" rows",
                                            disable=not progress) as bar:
            _write(f, digest, b"score,label\n" if reader.labeled else b"score\n")
            for raw in reader.batches(BATCH_ROWS):
                part = Dataset(dataset.schema, encoder.encode(raw), {"rows": np.arange(raw.height)})
                for batch in BatchLoader(part, "rows", batch_size, shuffle=False, device=device):
                    with torch.no_grad():
                        output = model(batch).float()
                    score = (torch.sigmoid(output) if task == "binary" else output).cpu().numpy()
                    label = batch.label.cpu().numpy()
                    _write(f, digest, _csv_lines(score, label if reader.labeled else None))
                    rows, total = rows + len(score), total + float(score.sum(dtype=np.float64))
                    if reader.labeled:
                        labels.append(label)
                        outputs.append(output.cpu().numpy())
                    bar.update(len(score))
        if rows == 0:
            raise ValueError(f"{reader.path}: no rows to score")
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    metrics = compute_metrics(task, np.concatenate(labels), np.concatenate(outputs)) if labels else None
    return ScoreSummary(rows, digest.hexdigest(), total / rows, encoder.unknown / max(1, encoder.values), metrics)


def _write(f, digest, data: bytes) -> None:
    f.write(data)
    digest.update(data)


def _csv_lines(score: np.ndarray, label: np.ndarray | None) -> bytes:
    columns = [np.char.mod("%.9g", score.astype(np.float64))]
    if label is not None:
        columns.append(np.char.mod("%.9g", label.astype(np.float64)))
    return ("\n".join(map(",".join, zip(*columns))) + "\n").encode()

