"""``NpyWriter``: an ``.npy`` file written block by block while its row count is still unknown.

The header is written with a fixed, padded size first and rewritten with the final shape on
``close()``, so the rows stream straight to disk (no second copy) and the result is an ordinary
``.npy`` file that ``np.load(..., mmap_mode=...)`` opens; the data starts at byte ``HEADER_BYTES``
(64-byte aligned, as numpy writes it).
"""
from __future__ import annotations

import struct

import numpy as np
from numpy.lib.format import dtype_to_descr

HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    room = HEADER_BYTES - len(_MAGIC) - 2 - 1
    if len(text) > room:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    body = (text.ljust(room) + "\n").encode("latin1")
    return _MAGIC + struct.pack("<H", len(body)) + body


class NpyWriter:
    """Append blocks of shape ``[n, *row_shape]`` and dtype ``dtype``; ``close()`` finalises the file."""

    def __init__(self, path: str, dtype, row_shape: tuple[int, ...] = ()):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: block of shape {block.shape}, rows of shape {self.row_shape}")
        if block.size:
            self._file.write(memoryview(block).cast("B"))
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()
