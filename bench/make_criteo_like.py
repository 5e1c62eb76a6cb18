"""Write a Criteo-like TSV (Kaggle ``train.txt`` layout) for preprocessing benchmarks.

Layout as Criteo's: no header; label, I1..I13 (integers, heavy-tailed, some negative, missing as an
empty field at Criteo's per-column missing rates), C1..C26 (8-hex-digit tokens, missing as empty).
Each categorical column draws ranks from a Zipf(``s``) law over its vocabulary (Criteo's Kaggle
vocabulary sizes, capped at ``--max-vocab``) and maps rank -> token by a fixed per-column bijection
of 32-bit values, so frequent tokens look random, like the real hashes. Seeded: the same arguments
write the same file.

    .venv/bin/python bench/make_criteo_like.py /tmp/criteo-5m.tsv --rows 5000000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

# Kaggle Criteo train.txt: vocabulary sizes and missing rates of C1..C26, missing rates of I1..I13.
CAT_VOCAB = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
             14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
CAT_MISSING = (0, 0, .034, .034, 0, .12, 0, 0, 0, 0, 0, .034, 0, 0, 0, .034, 0, 0, .44, .44, .034,
               .76, 0, .034, .44, .44)
INT_MISSING = (.45, 0, .21, .22, .026, .22, .043, .0005, .043, .45, .043, .77, .22)
INT_SCALE = (2, 100, 20, 8, 18000, 110, 16, 12, 100, 1, 3, 2, 8)   # rough medians-to-means


def zipf_ranks(rng: np.random.Generator, vocab: int, n: int, s: float) -> np.ndarray:
    """``n`` ranks in ``[0, vocab)`` with ``P(k) ~ 1 / (k + 1) ** s``."""
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** s)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").astype(np.uint32)


def hex_tokens(values: np.ndarray) -> np.ndarray:
    """uint32 -> 8 lowercase hex digits (``S8``), vectorised."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    nibbles = (values[:, None] >> shifts) & 0xF
    return digits[nibbles].view("S8").ravel()


def chunk(rng: np.random.Generator, n: int, max_vocab: int, s: float) -> pl.DataFrame:
    cols: dict[str, pl.Series] = {"label": pl.Series(rng.random(n) < 0.256).cast(pl.Int8)}
    for i, (miss, scale) in enumerate(zip(INT_MISSING, INT_SCALE), 1):
        x = np.floor(rng.lognormal(np.log(scale), 1.6, n)).astype(np.int64) - (i == 2) * 3
        cols[f"I{i}"] = pl.Series(x).set(pl.Series(rng.random(n) < miss), None)
    for i, (vocab, miss) in enumerate(zip(CAT_VOCAB, CAT_MISSING), 1):
        ranks = zipf_ranks(rng, min(vocab, max_vocab), n, s)
        token = (ranks * np.uint32(2654435761) + np.uint32(i * 40503)).astype(np.uint32)
        col = pl.Series(hex_tokens(token)).cast(pl.String)
        cols[f"C{i}"] = col.set(pl.Series(rng.random(n) < miss), None)
    return pl.DataFrame(cols)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--max-vocab", type=int, default=1_000_000)
    p.add_argument("--zipf", type=float, default=1.05, help="Zipf exponent of the categorical columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=500_000)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    with open(a.out, "wb") as f:
        for start in range(0, a.rows, a.chunk):
            chunk(rng, min(a.chunk, a.rows - start), a.max_vocab, a.zipf).write_csv(
                f, separator="\t", include_header=False, null_value="", quote_style="never")
    print(f"wrote {a.rows} rows to {a.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
