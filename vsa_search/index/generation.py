"""Writing an index generation (write_generation): each fragment's vector once, as int8 codes
with a scale in memory-mappable .npy files (a photo's shared global part once per photo), boxes
and concepts beside them, item records in LMDB, the FAISS first stage, a manifest with
checksums; all in a temporary sibling renamed into place."""

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
from ..models.score import split
from ..vision.concepts import Concepts
from . import arrays
from .faiss_types import choose_type, make_faiss, make_item_faiss
from .layout import (
    _ITEM,
    _SKIP,
    BOXES,
    CONCEPT_IDS,
    CONCEPT_PROBS,
    FIRST_STAGE,
    FORMAT_VERSION,
    ITEMS,
    KINDS,
    MANIFEST,
    META,
    SCALES,
    SHARED,
    SHARED_SCALES,
    SHARED_STAGE,
    VECTORS,
    Location,
    disk_error,
)

if TYPE_CHECKING:  # torch stays out of a search's imports (cold start)
    from ..models.alignment import LoadedAlign

ITEM_DTYPE = np.dtype([("first", "<i8"), ("count", "<i4"), ("offset", "<f4"), ("has_concepts", "u1")])


@dataclass
class Item:
    key: str  # photo path | sentence source
    info: dict[str, Any]  # photos: size, mtime_ns, hash | sentences: text, words
    vectors: np.ndarray | None  # (n, h) float (any precision); None when `stored` is given
    boxes: np.ndarray | None = None  # (n, 4) int32 xyxy for photos
    concepts: bytes | None = None  # region concepts (vision.concepts.Concepts.to_bytes), photos only
    offset: float = 0.0  # querybank offset (models/querybank.py): subtracted from every score of the item
    stored: Stored | None = None  # the item as an index stores it (copied as is: no second rounding)


@dataclass
class Stored:
    """An item's vectors as a generation stores them (FragmentIndex.stored)."""

    codes: np.ndarray  # (n, h - shared_dim) int8
    scales: np.ndarray  # (n,) float32
    shared_codes: np.ndarray  # (shared_dim,) int8
    shared_scale: float


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_generation(location: Location, kind: str, items: Iterable[Item], dim: int, model: dict[str, Any],
                     index_type: str, extra: dict[str, Any] | None = None,
                     skipped: dict[str, str] | None = None, total_hint: int | None = None,
                     need_bytes: int | None = None, shared_dim: int = 0) -> Path:
    """Write a complete generation to a temporary sibling, rename it, swap the link. `items`
    must come sorted by key: ids follow their order, which makes a build reproducible. The last
    `shared_dim` dimensions of an item's vectors must be the same in all its rows (a hybrid
    model's global term): they are stored once per item. On a failure the partial generation
    is removed and the current one stays; a full or read-only disk becomes one SearchIndexError
    (`need_bytes`, the expected size, goes into its message)."""
    gen = location.next_generation()
    tmp = gen.with_name(gen.name + ".tmp")
    try:
        return _write(location, tmp, gen, kind, items, dim, model, index_type, extra, skipped, shared_dim)
    except BaseException as e:
        # A half-written generation is never used: remove it, so that a full disk is full no more.
        shutil.rmtree(tmp, ignore_errors=True)
        why = disk_error(e, location.link.parent, need_bytes)
        if why is not None:
            raise why from None
        raise


class _Columns:
    """The generation's row files, written as items stream in."""

    def __init__(self, tmp: Path, kind: str, dim: int, shared_dim: int):
        self.tmp, self.dim, self.shared_dim = tmp, dim, shared_dim
        part = dim - shared_dim
        self.vectors = arrays.NpyWriter(tmp / VECTORS, np.int8, (part,))
        self.scales = arrays.NpyWriter(tmp / SCALES, np.float32)
        self.shared = arrays.NpyWriter(tmp / SHARED, np.int8, (shared_dim,)) if shared_dim else None
        self.shared_scales = arrays.NpyWriter(tmp / SHARED_SCALES, np.float32) if shared_dim else None
        self.boxes = arrays.NpyWriter(tmp / BOXES, np.int32, (4,)) if kind == "photos" else None
        self.con_ids: arrays.NpyWriter | None = None
        self.con_probs: arrays.NpyWriter | None = None
        self.rows = 0
        self.items: list[tuple[int, int, float, int]] = []

    def add(self, it: Item) -> int:
        st = it.stored if it.stored is not None else self._quantize(it)
        v = st.codes
        if v.ndim != 2 or v.shape[1] != self.dim - self.shared_dim or st.shared_codes.shape != (self.shared_dim,):
            raise SearchIndexError(f"{it.key}: stored vectors of another shape than this index's")
        self.vectors.append(v)
        self.scales.append(st.scales)
        if self.shared is not None and self.shared_scales is not None:
            self.shared.append(st.shared_codes[None])
            self.shared_scales.append(np.array([st.shared_scale], np.float32))
        if self.boxes is not None:
            b = np.zeros((len(v), 4), np.int32) if it.boxes is None else np.asarray(it.boxes, np.int32)
            self.boxes.append(b.reshape(len(v), 4))
        has = self._concepts(it, len(v))
        self.items.append((self.rows, len(v), float(it.offset), has))
        self.rows += len(v)
        return len(v)

    def _quantize(self, it: Item) -> Stored:
        v = np.asarray(it.vectors)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise SearchIndexError(f"{it.key}: vectors of shape {v.shape}, expected (n, {self.dim})")
        own, tail = split(v.astype(np.float32), self.shared_dim)
        codes, scale = arrays.quantize(own)
        spread = float(np.abs(tail - tail[:1]).max()) if tail.size else 0.0
        if spread > 1e-3 * (1 + float(np.abs(tail).max(initial=0.0))):
            raise SearchIndexError(f"{it.key}: the last {self.shared_dim} dimensions differ between its "
                                   "fragments, so they cannot be stored once per item")
        u = tail[:1] if len(tail) else np.zeros((1, self.shared_dim), np.float32)
        c, s = arrays.quantize(u)
        return Stored(codes, scale, c[0], float(s[0]))

    def _concepts(self, it: Item, n: int) -> int:
        """Concept rows for every fragment (zeros where an item has none: has_concepts says so)."""
        if it.concepts is None:
            if self.con_ids is not None and self.con_probs is not None:
                k = self.con_ids.row_shape[0]
                self.con_ids.append(np.zeros((n, k), np.uint16))
                self.con_probs.append(np.zeros((n, k), np.float16))
            return 0
        c = Concepts.from_bytes(it.concepts)
        if self.con_ids is None or self.con_probs is None:
            k = c.ids.shape[1]
            self.con_ids = arrays.NpyWriter(self.tmp / CONCEPT_IDS, np.uint16, (k,))
            self.con_probs = arrays.NpyWriter(self.tmp / CONCEPT_PROBS, np.float16, (k,))
            if self.rows:  # items before the first with concepts have none
                self.con_ids.append(np.zeros((self.rows, k), np.uint16))
                self.con_probs.append(np.zeros((self.rows, k), np.float16))
        k = self.con_ids.row_shape[0]
        ids, probs = np.zeros((n, k), np.uint16), np.zeros((n, k), np.float16)
        r, kk = min(n, len(c)), min(k, c.ids.shape[1])
        ids[:r, :kk], probs[:r, :kk] = c.ids[:r, :kk], c.probs[:r, :kk]
        self.con_ids.append(ids)
        self.con_probs.append(probs)
        return int(len(c) >= n)

    def writers(self) -> list[arrays.NpyWriter]:
        return [w for w in (self.vectors, self.scales, self.shared, self.shared_scales, self.boxes,
                            self.con_ids, self.con_probs) if w is not None]

    def close(self) -> None:
        for w in self.writers():
            w.close()
        arrays.save(self.tmp / ITEMS, np.array(self.items, ITEM_DTYPE))

    def abort(self) -> None:
        for w in self.writers():
            w.abort()


def _write(location: Location, tmp: Path, gen: Path, kind: str, items: Iterable[Item], dim: int,
           model: dict[str, Any], index_type: str, extra: dict[str, Any] | None,
           skipped: dict[str, str] | None, shared_dim: int) -> Path:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if not 0 <= shared_dim < dim:
        raise ValueError(f"write_generation: shared_dim {shared_dim} outside [0, {dim})")
    cols = _Columns(tmp, kind, dim, shared_dim)
    try:
        with KV(tmp / META) as kv:
            batch: list[tuple[int, dict[str, Any]]] = []

            def flush() -> None:
                with kv.batch() as b:
                    for i, rec in batch:
                        b.put_json(f"{_ITEM}{i:09d}", rec)
                batch.clear()

            last_key = None
            for it in items:
                if last_key is not None and it.key <= last_key:
                    raise ValueError("write_generation: items must be sorted by key and unique")
                last_key = it.key
                first = cols.rows
                n = cols.add(it)
                batch.append((len(cols.items) - 1, {"key": it.key, **it.info, "first": first, "count": n}))
                if len(batch) >= 512:
                    flush()
            flush()
            with kv.batch() as b:
                for key, why in sorted((skipped or {}).items()):
                    b.put_json(_SKIP + key, why)
        cols.close()
    except BaseException:
        cols.abort()
        raise
    chosen, params = _first_stage(tmp, index_type, cols.rows, len(cols.items), shared_dim)
    item_name, frag_name = KINDS[kind]
    names = sorted(p.name for p in tmp.iterdir() if p.is_file()) + [f"{META}/data.mdb"]
    checksums = {name: {"size": (tmp / name).stat().st_size, "blake2b": file_digest(tmp / name)} for name in names}
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "model": model, "dim": dim, "shared_dim": shared_dim,
                "index_type": chosen, "faiss": params, "checksums": checksums,
                "counts": {item_name: len(cols.items), frag_name: cols.rows, "skipped": len(skipped or {})},
                **(extra or {})}
    # The manifest is written last: a generation without one was never finished.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.rename(tmp, gen)
    location.swap_in(gen)
    return gen


def _first_stage(tmp: Path, index_type: str, rows: int, n_items: int, shared_dim: int) -> tuple[str, dict[str, Any]]:
    """Build the FAISS first stage from the stored (quantized) vectors: candidates are then
    scored against exactly the vectors that rescore them."""
    chosen = choose_type(index_type, rows)
    part = arrays.Dequantized(arrays.load(tmp / VECTORS), arrays.load(tmp / SCALES))
    index, chosen, params = make_faiss(part, chosen)
    if index is not None:
        faiss.write_index(index, str(tmp / FIRST_STAGE))
        del index
        if shared_dim and n_items:
            shared = arrays.Dequantized(arrays.load(tmp / SHARED), arrays.load(tmp / SHARED_SCALES))
            faiss.write_index(make_item_faiss(shared), str(tmp / SHARED_STAGE))
    return chosen, params


def model_info(model: LoadedAlign) -> dict[str, Any]:
    return {"fingerprint": model.fingerprint, "path": str(Path(model.path).resolve()),
            "hidden": model.model.out_dim, "extractor": model.region_config.extractor_id()}


def as_stored(vectors: np.ndarray, shared_dim: int) -> np.ndarray:
    """(n, h) vectors as a generation returns them once stored: int8-rounded, the shared part
    taken from the first row."""
    v = np.asarray(vectors, np.float32)
    own, tail = split(v, shared_dim)
    out = arrays.dequantize(*arrays.quantize(own))
    if shared_dim and len(v):
        u = arrays.dequantize(*arrays.quantize(tail[:1]))
        out = np.hstack([out, np.repeat(u, len(v), axis=0)])
    return out

