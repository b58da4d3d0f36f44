"""The vectors of an index generation on disk: int8 codes with one float32 scale per vector
(symmetric, the vector's largest magnitude maps to 127), in .npy files that readers memory-map,
so that a search reads only the rows it rescores. Also a .npy writer that streams rows whose
count is known only at the end (a build's photos arrive one batch at a time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import SearchIndexError

_HEADER = 128  # bytes reserved for the .npy header, rewritten with the final shape on close


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) floats -> int8 codes (n, d) and float32 scales (n,): x ≈ codes * scale. One scale
    per vector keeps each vector's relative error at most 1/254 of its largest component,
    whatever its norm (region vectors of one photo differ in norm; words scaled by 1/length too)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize: want (n, d), got {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise SearchIndexError("a vector to index is not finite (NaN or inf): the model or its input is broken")
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    codes = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.asarray(codes, np.float32) * np.asarray(scale, np.float32)[:, None]


class Dequantized:
    """A read-only (n, d) float32 view of int8 codes and their scales, decoded per access:
    what FAISS training and adding read in chunks, without a float copy of every vector."""

    def __init__(self, codes: np.ndarray, scale: np.ndarray):
        self.codes, self.scale = codes, scale
        self.shape = codes.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return dequantize(self.codes[rows], self.scale[rows])

    def astype(self, dtype: Any) -> np.ndarray:
        return self[:].astype(dtype)


class NpyWriter:
    """Append rows to a .npy file; the header (with the row count) is written on close."""

    def __init__(self, path: Path, dtype: Any, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self.f = open(path, "wb")
        self.f.write(b"\0" * _HEADER)

    def append(self, rows: np.ndarray) -> None:
        a = np.ascontiguousarray(rows, dtype=self.dtype)
        if a.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {a.shape[1:]}, expected {self.row_shape}")
        self.f.write(a.tobytes())
        self.rows += len(a)

    def close(self) -> None:
        if self.f.closed:
            return
        self.f.seek(0)
        self.f.write(npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def abort(self) -> None:
        self.f.close()


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header padded to exactly _HEADER bytes (numpy reads any padded length)."""
    descr = np.lib.format.dtype_to_descr(dtype)
    d = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    room = _HEADER - 10  # magic (6), version (2), header length (2)
    if len(d) + 1 > room:
        raise ValueError(f"npy header too long for shape {shape}")
    body = (d + " " * (room - len(d) - 1) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + body


def save(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))
        f.flush()
        os.fsync(f.fileno())


def load(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only: pages are read when rows are used."""
    return np.load(path, mmap_mode="r")


def top_n(dots: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n columns of each row of dots (Q, F), best first: (dots (Q, n), ids (Q, n))."""
    if dots.shape[1] == 0:
        return np.full((len(dots), 1), -np.inf, np.float32), np.full((len(dots), 1), -1, np.int64)
    n = min(n, dots.shape[1])
    part = np.argpartition(-dots, n - 1, axis=1)[:, :n] if n < dots.shape[1] else \
        np.tile(np.arange(dots.shape[1]), (len(dots), 1))
    d = np.take_along_axis(dots, part, 1)
    order = np.lexsort((part, -d), axis=1)
    return np.take_along_axis(d, order, 1).astype(np.float32), np.take_along_axis(part, order, 1).astype(np.int64)
