"""Named numpy arrays with a JSON header in one file, memory-mapped on load, and the export cache
built on it: a model's weights written once (with torch) and read later without torch.

File: MAGIC, an 8-byte header length, the JSON header, then each array at a 64-byte aligned offset.
An export is keyed by its source file's path and checked against its size and mtime, so a changed
model (or backbone package) is exported again rather than read stale."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .atomic import atomic_path

MAGIC = b"VSA-ARRAYS\n"
EXPORT_VERSION = 1  # bump when what an export holds changes: older exports are then made again


def save(path: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically (a reader sees the whole file or none)."""
    layout, offset, blobs = {}, 0, []
    for k, v in arrays.items():
        a = np.ascontiguousarray(v)
        layout[k] = [a.dtype.str, list(a.shape), offset]
        blobs.append(a)
        offset += -(-a.nbytes // 64) * 64
    head = json.dumps({**header, "arrays": layout}).encode()
    start = -(-(len(MAGIC) + 8 + len(head)) // 64) * 64
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for a, (_, _, off) in zip(blobs, layout.values()):
            f.seek(start + off)
            f.write(a.tobytes())
        f.truncate(start + offset)
    return Path(path)


def load(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays); the arrays are read-only memory maps. Raises ValueError for a file that is
    not one of these or is cut short, OSError where it cannot be read."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not an array file")
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    start = -(-(len(MAGIC) + 8 + n) // 64) * 64
    size = os.path.getsize(path)
    arrays: dict[str, np.ndarray] = {}
    for k, (dt, shape, off) in header.pop("arrays").items():
        count = int(np.prod(shape))
        if start + off + np.dtype(dt).itemsize * count > size:
            raise ValueError(f"{path}: cut short")
        arrays[k] = np.memmap(path, np.dtype(dt), "r", start + off, tuple(shape)) if count else \
            np.zeros(shape, np.dtype(dt))
    return header, arrays


# --------------------------------------------------------------------------- the export cache


def stamp(path: str | Path) -> list[int] | None:
    """(size, mtime_ns) of a file: whether the file an export came from is unchanged."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def export_path(kind: str, source: str | Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.realpath(source))).hexdigest()[:16]
    return paths.cache_dir() / "exports" / f"v{EXPORT_VERSION}-{kind}-{key}.bin"


def cached_export(kind: str, source: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The export of `source` as that file is now, or None (none yet, stale, or unreadable)."""
    p = export_path(kind, source)
    try:
        header, arrays = load(p)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if header.get("kind") != kind or header.get("source") != os.path.realpath(source) \
            or header.get("stamp") != stamp(source):
        return None
    return header, arrays


def write_export(kind: str, source: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Store an export of `source` for later runs. A cache that cannot be written is no error: the
    caller has what it exported in memory, and a later run exports again."""
    full = {**header, "kind": kind, "source": os.path.realpath(source), "stamp": stamp(source)}
    try:
        p = export_path(kind, source)
        p.parent.mkdir(parents=True, exist_ok=True)
        save(p, full, arrays)
    except OSError:
        pass
