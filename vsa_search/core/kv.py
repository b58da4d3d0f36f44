"""The only module that knows LMDB. A small typed key-value layer used by the feature store
and the photo index: JSON values, numpy arrays (no pickle), and batched transactions."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from .errors import DamagedError

# Virtual reservation only: LMDB files grow as they fill, so a large map costs nothing.
DEFAULT_MAP_SIZE = 1 << 40


def _key(key: str) -> bytes:
    """A key's bytes. A key may hold a file name that is not UTF-8 (read from the disk with its bytes as
    surrogates): those bytes, as they are."""
    return key.encode("utf-8", "surrogateescape")


def _str(key: bytes) -> str:
    return bytes(key).decode("utf-8", "surrogateescape")


def encode_arrays(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


_LMDB_MAGIC = 0xBEEFC0DE


def lmdb_damage(path: str | Path) -> str | None:
    """Why the LMDB environment at `path` cannot be read safely, or None. LMDB maps its file, so
    reading a page past the end of a truncated file kills the process (SIGBUS) instead of raising:
    the two meta pages say how many pages the last commit wrote, and the file must hold them."""
    data = Path(path) / "data.mdb"
    try:
        size = data.stat().st_size
        with open(data, "rb") as f:
            head = f.read(152)
            if len(head) < 152:
                return f"{data}: {size} bytes, too short for an LMDB file"
            magic, = struct.unpack_from("<I", head, 16)
            psize, = struct.unpack_from("<I", head, 40)  # mm_dbs[FREE_DBI].md_pad holds the page size
            if magic != _LMDB_MAGIC or psize < 512 or psize & (psize - 1):
                return f"{data}: not an LMDB file"
            f.seek(psize)
            second = f.read(152)
    except FileNotFoundError:
        return None  # a new environment
    metas = [head] + ([second] if len(second) == 152 else [])
    # The meta page with the newest transaction names the last page in use (mm_last_pg, mm_txnid).
    _, last_pg = max((txnid, last) for last, txnid in (struct.unpack_from("<QQ", m, 136) for m in metas
                                                       if struct.unpack_from("<I", m, 16)[0] == _LMDB_MAGIC))
    need = (last_pg + 1) * psize
    if size < need:
        return f"{data}: {size} bytes, its last commit wrote {need}: the file was cut short"
    return None


def as_os_error(e: Exception) -> OSError | None:
    """The system error behind an LMDB failure (a full disk, a read-only file system), if any; FAISS's
    RuntimeErrors carry the same text."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, (lmdb.Error, RuntimeError)):
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code), text.split(":")[0])
    return None


class KV:
    """One LMDB environment (a directory). Writes go through `batch()` so that a killed
    process loses at most the batch in flight and never leaves a half-written record."""

    def __init__(self, path: str | Path, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        damage = lmdb_damage(self.path)
        if damage:
            raise DamagedError(damage)
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
            v = txn.get(_key(key))
            return bytes(v) if v is not None else None

    def get_json(self, key: str) -> Any:
        v = self.get_bytes(key)
        return None if v is None else json.loads(v)

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        v = self.get_bytes(key)
        return None if v is None else decode_arrays(v)

    def __contains__(self, key: str) -> bool:
        with self.env.begin() as txn:
            return txn.get(_key(key)) is not None

    def keys(self, prefix: str = "") -> Iterator[str]:
        p = _key(prefix)
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(p):
                return
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(p):
                    break
                yield _str(k)

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
                v = txn.get(_key(k))
                out.append(bytes(v) if v is not None else None)
            return out

    def items_bytes(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        p = _key(prefix)
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(p):
                return
            for k, v in cur:
                if not k.startswith(p):
                    break
                yield _str(k), bytes(v)

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
        self.txn.put(_key(key), value)

    def put_json(self, key: str, value: Any) -> None:
        self.txn.put(_key(key), json.dumps(value, sort_keys=True).encode())

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        self.txn.put(_key(key), encode_arrays(**arrays))

    def delete(self, key: str) -> None:
        self.txn.delete(_key(key))

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.txn.commit()
        else:
            self.txn.abort()
