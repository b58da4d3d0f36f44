"""Writing an index generation (write_generation): fragment vectors in FAISS, item records, vectors,
boxes and concepts in LMDB, a manifest with checksums, all in a temporary sibling renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..core.errors import SearchIndexError
from ..core.kv import KV
from .faiss_types import choose_type, make_faiss
from .layout import (
    _BOX,
    _CON,
    _IDMAP,
    _ITEM,
    _SKIP,
    _VEC,
    FORMAT_VERSION,
    KINDS,
    MANIFEST,
    META,
    VECTORS,
    Location,
    disk_error,
)

if TYPE_CHECKING:  # torch stays out of a search's imports (cold start)
    from ..models.alignment import LoadedAlign


@dataclass
@dataclass
class Item:
    key: str  # photo path | sentence source
    info: dict[str, Any]  # photos: size, mtime_ns, hash | sentences: text, words
    vectors: np.ndarray  # (n, h) float16
    boxes: np.ndarray | None = None  # (n, 4) int32 xyxy for photos
    concepts: bytes | None = None  # region concepts (vision.concepts.Concepts.to_bytes), photos only
    offset: float = 0.0  # querybank offset (models/querybank.py): subtracted from every score of the item


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_generation(location: Location, kind: str, items: Iterable[Item], dim: int, model: dict[str, Any],
                     index_type: str, extra: dict[str, Any] | None = None,
                     skipped: dict[str, str] | None = None, total_hint: int | None = None,
                     need_bytes: int | None = None) -> Path:
    """Write a complete generation to a temporary sibling, rename it, swap the link. `items`
    must come sorted by key: ids follow their order, which makes a build reproducible. On a
    failure the partial generation is removed and the current one stays; a full or read-only
    disk becomes one SearchIndexError (`need_bytes`, the expected size, goes into its message)."""
    gen = location.next_generation()
    tmp = gen.with_name(gen.name + ".tmp")
    try:
        return _write(location, tmp, gen, kind, items, dim, model, index_type, extra, skipped)
    except BaseException as e:
        # A half-written generation is never used: remove it, so that a full disk is full no more.
        shutil.rmtree(tmp, ignore_errors=True)
        why = disk_error(e, location.link.parent, need_bytes)
        if why is not None:
            raise why from None
        raise


def _write(location: Location, tmp: Path, gen: Path, kind: str, items: Iterable[Item], dim: int,
           model: dict[str, Any], index_type: str, extra: dict[str, Any] | None,
           skipped: dict[str, str] | None) -> Path:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    firsts: list[int] = []
    counts: list[int] = []
    offsets: list[float] = []
    chunks: list[np.ndarray] = []
    total = 0
    with KV(tmp / META) as kv:
        batch_items: list[Item] = []

        def flush() -> None:
            nonlocal total
            with kv.batch() as b:
                for it in batch_items:
                    i = len(firsts)
                    v = np.ascontiguousarray(it.vectors, dtype=np.float16)
                    if v.ndim != 2 or v.shape[1] != dim:
                        raise SearchIndexError(f"{it.key}: vectors of shape {v.shape}, expected (n, {dim})")
                    b.put_json(f"{_ITEM}{i:09d}", {"key": it.key, **it.info, "first": total, "count": len(v)})
                    b.put_bytes(f"{_VEC}{i:09d}", v.tobytes())
                    if it.boxes is not None:
                        b.put_bytes(f"{_BOX}{i:09d}", np.ascontiguousarray(it.boxes, np.int32).tobytes())
                    if it.concepts is not None:
                        b.put_bytes(f"{_CON}{i:09d}", it.concepts)
                    firsts.append(total)
                    counts.append(len(v))
                    offsets.append(float(it.offset))
                    chunks.append(v)
                    total += len(v)
            batch_items.clear()

        last_key = None
        for it in items:
            if last_key is not None and it.key <= last_key:
                raise ValueError("write_generation: items must be sorted by key and unique")
            last_key = it.key
            batch_items.append(it)
            if len(batch_items) >= 512:
                flush()
        flush()
        with kv.batch() as b:
            b.put_arrays(_IDMAP, first=np.array(firsts, np.int64), count=np.array(counts, np.int64),
                         offset=np.array(offsets, np.float32))
            for key, why in sorted((skipped or {}).items()):
                b.put_json(_SKIP + key, why)
    all_vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float16)
    chunks.clear()
    chosen = choose_type(index_type, len(all_vectors))
    index, chosen, params = make_faiss(all_vectors, chosen)
    del all_vectors
    faiss.write_index(index, str(tmp / VECTORS))
    item_name, frag_name = KINDS[kind]
    checksums = {name: {"size": (tmp / name).stat().st_size, "blake2b": file_digest(tmp / name)}
                 for name in (VECTORS, f"{META}/data.mdb")}
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "model": model, "dim": dim,
                "index_type": chosen, "faiss": params, "checksums": checksums,
                "counts": {item_name: len(firsts), frag_name: total, "skipped": len(skipped or {})},
                **(extra or {})}
    # The manifest is written last: a generation without one was never finished.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.rename(tmp, gen)
    location.swap_in(gen)
    return gen


def model_info(model: LoadedAlign) -> dict[str, Any]:
    return {"fingerprint": model.fingerprint, "path": str(Path(model.path).resolve()),
            "hidden": model.model.out_dim, "extractor": model.region_config.extractor_id()}
