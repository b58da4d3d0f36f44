"""The only module that knows LMDB. A small typed key-value layer used by the feature store
and the photo index: JSON values, numpy arrays (no pickle), and batched transactions."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

# Virtual reservation only: LMDB files grow as they fill, so a large map costs nothing.
DEFAULT_MAP_SIZE = 1 << 40


def encode_arrays(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class KV:
    """One LMDB environment (a directory). Writes go through `batch()` so that a killed
    process loses at most the batch in flight and never leaves a half-written record."""

    def __init__(self, path: str | Path, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            readonly=readonly,
            lock=not readonly,
            subdir=True,
            max_dbs=0,
            readahead=False,
        )

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads
    def get_bytes(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            v = txn.get(key.encode())
            return bytes(v) if v is not None else None

    def get_json(self, key: str) -> Any:
        v = self.get_bytes(key)
        return None if v is None else json.loads(v)

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        v = self.get_bytes(key)
        return None if v is None else decode_arrays(v)

    def __contains__(self, key: str) -> bool:
        with self.env.begin() as txn:
            return txn.get(key.encode()) is not None

    def keys(self, prefix: str = "") -> Iterator[str]:
        p = prefix.encode()
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(p):
                return
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(p):
                    break
                yield k.decode()

    def items_json(self, prefix: str) -> Iterator[tuple[str, Any]]:
        for k, v in self.items_bytes(prefix):
            yield k, json.loads(v)

    def count(self, prefix: str = "") -> int:
        return sum(1 for _ in self.keys(prefix))

    def get_many_bytes(self, keys: list[str]) -> list[bytes | None]:
        """Several values in one read transaction (the search re-ranking reads hundreds at once)."""
        with self.env.begin() as txn:
            out = []
            for k in keys:
                v = txn.get(k.encode())
                out.append(bytes(v) if v is not None else None)
            return out

    def items_bytes(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        p = prefix.encode()
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(p):
                return
            for k, v in cur:
                if not k.startswith(p):
                    break
                yield k.decode(), bytes(v)

    # --- writes
    def batch(self) -> Batch:
        return Batch(self.env.begin(write=True))

    def put_json(self, key: str, value: Any) -> None:
        with self.batch() as b:
            b.put_json(key, value)


class Batch:
    """A write transaction: committed on clean exit, aborted on an exception."""

    def __init__(self, txn: lmdb.Transaction):
        self.txn = txn

    def put_bytes(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value)

    def put_json(self, key: str, value: Any) -> None:
        self.txn.put(key.encode(), json.dumps(value, sort_keys=True).encode())

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        self.txn.put(key.encode(), encode_arrays(**arrays))

    def delete(self, key: str) -> None:
        self.txn.delete(key.encode())

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.txn.commit()
        else:
            self.txn.abort()
