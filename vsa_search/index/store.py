"""A finished index generation (reader: FragmentIndex): fragment vectors in FAISS, item records,
vectors and boxes in LMDB; finding one photo's regions in an index (find_photo). The writer is
generation.py."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..core import paths
from ..core.device import one_thread
from ..core.errors import DamagedError, SearchIndexError
from ..core.kv import KV
from ..vision.concepts import Concepts
from .faiss_types import IVF_NPROBE
from .generation import file_digest
from .layout import (
    _BOX,
    _CON,
    _IDMAP,
    _ITEM,
    _SKIP,
    _VEC,
    DEFAULT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    META,
    SENTENCES_SUFFIX,
    VECTORS,
    Location,
    resolve,
)

if TYPE_CHECKING:  # torch stays out of a search's imports (cold start)
    from ..models.alignment import LoadedAlign

# --------------------------------------------------------------------------- a finished index (reader)


class FragmentIndex:
    """An open, immutable generation: FAISS vectors, LMDB records, manifest."""

    def __init__(self, location: Location, kind: str = "photos"):
        self.location = location
        self.kind = kind
        for attempt in range(3):
            gen = location.current()
            if gen is None:
                what = "photo index" if kind == "photos" else "sentence index"
                cmd = "vsa index build PATH" if kind == "photos" else "vsa index text FILE"
                raise SearchIndexError(f"no {what} {location.name.removesuffix(SENTENCES_SUFFIX)!r} "
                                  f"at {location.link} (create it with `{cmd}`)")
            try:
                self._open(gen)
                return
            except FileNotFoundError:
                # A build swapped generations between our readlink and open: read the link again.
                if attempt == 2:
                    raise SearchIndexError(f"{location.link}: index files are missing; build it again") from None
                time.sleep(0.05)

    def _open(self, gen: Path) -> None:
        self.dir = gen
        try:
            manifest = json.loads((gen / MANIFEST).read_text())
        except json.JSONDecodeError:
            raise SearchIndexError(f"{gen / MANIFEST}: unreadable manifest; build the index again") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise SearchIndexError(f"{self.location.link}: index format {version}, this version reads "
                              f"{FORMAT_VERSION}; remove it (`vsa index remove`) and build it again")
        if manifest.get("kind") != self.kind:
            raise SearchIndexError(f"{self.location.link}: is a {manifest.get('kind')} index, not a {self.kind} index")
        self.manifest: dict[str, Any] = manifest
        if not (gen / VECTORS).is_file() or not (gen / META / "data.mdb").is_file():
            raise FileNotFoundError(gen)
        # Sizes first (a stat each): FAISS and LMDB would read a truncated file as garbage or die of SIGBUS.
        for name, want in manifest.get("checksums", {}).items():
            size = (gen / name).stat().st_size
            if size != want["size"]:
                raise self._damaged(f"{name} is {size} bytes, it was written with {want['size']}")
        try:
            self.faiss = faiss.read_index(str(gen / VECTORS))
        except RuntimeError:
            raise self._damaged(f"{VECTORS} cannot be read") from None
        try:
            self.kv = _open_shared(gen / META)
        except DamagedError as e:
            raise self._damaged(str(e)) from None
        ids = self.kv.get_arrays(_IDMAP) or {"first": np.zeros(0, np.int64), "count": np.zeros(0, np.int64)}
        self.first: np.ndarray = ids["first"]
        self.count: np.ndarray = ids["count"]
        # Querybank offsets per item (zeros for a model without a querybank)
        self.offsets: np.ndarray = ids.get("offset", np.zeros(len(self.first), np.float32))
        self.dim: int = int(manifest["dim"])
        params = manifest.get("faiss", {})
        if isinstance(self.faiss, faiss.IndexIVF):
            self.faiss.nprobe = int(params.get("nprobe", IVF_NPROBE))

    def _damaged(self, why: str) -> SearchIndexError:
        return SearchIndexError(f"index {self.location.name} is damaged ({why}); `vsa index build` rebuilds it "
                                "from the photos")

    def verify(self) -> list[str]:
        """Every file of the generation against the checksum written with it: the problems found."""
        problems = []
        for name, want in self.manifest.get("checksums", {}).items():
            got = file_digest(self.dir / name)
            if got != want["blake2b"]:
                problems.append(f"{name}: checksum {got}, written as {want['blake2b']}")
        return problems

    def close(self) -> None:
        _close_shared(self.kv)

    def __enter__(self) -> FragmentIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index_type(self) -> str:
        return self.manifest["index_type"]

    @property
    def exact(self) -> bool:
        return self.index_type == "flat"

    def __len__(self) -> int:
        return len(self.first)

    @property
    def fragments(self) -> int:
        return int(self.faiss.ntotal)

    def check_model(self, model: LoadedAlign) -> None:
        built = self.manifest["model"]
        if built["fingerprint"] != model.fingerprint:
            raise SearchIndexError(
                f"index {self.location.name} was built with model {built['fingerprint']} ({built['path']}), "
                f"not {model.fingerprint} ({model.path}); search with --model {built['path']} "
                f"or rebuild the index with this model")

    def search(self, queries: np.ndarray, n: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-n fragments by inner product for each query vector: dots (Q, n), ids (Q, n);
        id -1 (dot -inf) where fewer were found. One thread by default: a query is a few
        vectors, and on a shared machine an OpenMP team mostly waits (see core.device.one_thread)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = max(1, min(n, self.fragments)) if self.fragments else 1
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            return self._search(q, n)
        finally:
            faiss.omp_set_num_threads(prev)

    def _search(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        params = self.manifest.get("faiss", {})
        if isinstance(self.faiss, faiss.IndexHNSW):
            self.faiss.hnsw.efSearch = max(n, 64)
        if "max_norm" in params:
            m = float(params["max_norm"])
            d2, ids = self.faiss.search(np.hstack([q, np.zeros((len(q), self.faiss.d - q.shape[1]), np.float32)]), n)
            # |q - x'|^2 = |q|^2 + M^2 - 2 q.x  ->  q.x
            dots = ((q * q).sum(1, keepdims=True) + m * m - d2) / 2
        else:
            dots, ids = self.faiss.search(q, n)
        if "center" in params:  # the index holds x - mu: q.x = q.(x - mu) + q.mu
            dots = dots + (q @ np.asarray(params["center"], np.float32))[:, None]
        return np.where(ids >= 0, dots, -np.inf).astype(np.float32), ids

    def all_dots(self, q: np.ndarray) -> np.ndarray:
        """(Q, fragments) inner products of q with every vector of a flat index, read in place
        from FAISS's storage (one thread, as `search`)."""
        if not isinstance(self.faiss, faiss.IndexFlat):
            raise SearchIndexError(f"{self.location.link}: all_dots needs a flat index, not {self.index_type}")
        xb = faiss.rev_swig_ptr(self.faiss.get_xb(), self.fragments * self.faiss.d).reshape(self.fragments, -1)
        with one_thread():
            return np.ascontiguousarray(q, np.float32) @ xb.T

    def items_of(self, ids: np.ndarray) -> np.ndarray:
        """Fragment ids -> the items that own them."""
        return np.searchsorted(self.first, ids, side="right") - 1

    def vectors(self, items: Iterable[int]) -> list[np.ndarray]:
        """(count_i, h) float16 vectors of each item, in one read transaction."""
        items = list(items)
        blobs = self.kv.get_many_bytes([f"{_VEC}{i:09d}" for i in items])
        return [np.frombuffer(b, np.float16).reshape(-1, self.dim) for b in blobs]  # type: ignore[arg-type]

    def boxes(self, i: int) -> np.ndarray:
        b = self.kv.get_bytes(f"{_BOX}{i:09d}")
        return np.zeros((0, 4), np.int32) if b is None else np.frombuffer(b, np.int32).reshape(-1, 4)

    def concepts_bytes(self, items: Iterable[int]) -> list[bytes | None]:
        """Each item's stored region concepts (None where the index predates them)."""
        return self.kv.get_many_bytes([f"{_CON}{i:09d}" for i in items])  # type: ignore[return-value]

    def record(self, i: int) -> dict[str, Any]:
        return self.kv.get_json(f"{_ITEM}{i:09d}")

    def records(self) -> Iterator[dict[str, Any]]:
        for _, rec in self.kv.items_json(_ITEM):
            yield rec

    def skipped(self) -> dict[str, str]:
        return {k[len(_SKIP):]: v for k, v in self.kv.items_json(_SKIP)}


# LMDB allows one environment per file per process: readers of the same generation (a search
# and the build that reads the index it replaces) share one, closed with its last user.
_SHARED: dict[str, list[Any]] = {}
_SHARED_LOCK = threading.Lock()


def _open_shared(path: Path) -> KV:
    key = str(path.resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = [KV(path, readonly=True), 0]
        _SHARED[key][1] += 1
        return _SHARED[key][0]


def _close_shared(kv: KV) -> None:
    with _SHARED_LOCK:
        for key, entry in list(_SHARED.items()):
            if entry[0] is kv:
                entry[1] -= 1
                if entry[1] == 0:
                    kv.close()
                    del _SHARED[key]
                return


def open_index(name: str | Path | None = None, kind: str = "photos") -> FragmentIndex:
    return FragmentIndex(Location(resolve(name, kind)), kind)


def read_manifest(location: Location) -> dict[str, Any] | None:
    """The current generation's manifest when it is readable, whatever state its other files are in
    (a rebuild of a damaged index takes its folders from it)."""
    gen = location.current()
    try:
        return json.loads((gen / MANIFEST).read_text()) if gen is not None else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class StoredRegions:
    """A photo's regions as a photo index stored them, and the index they came from (its name as
    `--index` takes it)."""

    index: str
    boxes: np.ndarray  # (R, 4)
    vectors: np.ndarray  # (R, h) float32
    concepts: Concepts | None = None  # None: not asked for, or an index built before concepts


def find_photo(loaded: LoadedAlign, photo: str | Path, name: str | Path | None = None,
               with_concepts: bool = False) -> StoredRegions | None:
    """A photo's stored regions from a photo index, or None when no index can vouch for them: none
    built with this model holds the photo, or the file changed since (size or mtime). `name`: that
    index only (one that does not exist is an error); None: the default index, then every other.
    with_concepts=True reads the regions' stored concepts too."""
    try:
        st = Path(photo).stat()
    except OSError:
        return None
    if name is not None:
        return _find_in(name, str(name), loaded, photo, st, with_concepts)
    # No index named: the default one, then every other photo index (the demo's is "demo").
    others = sorted(p for p in paths.indexes_dir().glob("*") if p.is_symlink() and p.name != DEFAULT_NAME
                    and not p.name.endswith(SENTENCES_SUFFIX)) if paths.indexes_dir().is_dir() else []
    for link in [resolve(None), *others]:
        try:
            if Location(link).current() is None:
                continue
            found = _find_in(link, link.name, loaded, photo, st, with_concepts)
        except SearchIndexError:
            continue  # damaged or of another kind: computing the regions afresh is always right
        if found is not None:
            return found
    return None


def _find_in(where: str | Path, name: str, loaded: LoadedAlign, photo: str | Path, st: os.stat_result,
             with_concepts: bool = False) -> StoredRegions | None:
    with open_index(where) as ix:
        if ix.manifest.get("model", {}).get("fingerprint") != loaded.fingerprint:
            return None
        # Items are stored sorted by key (the absolute path), so binary search finds the photo.
        key = str(Path(photo).absolute())
        lo, hi = 0, len(ix)
        while lo < hi:
            mid = (lo + hi) // 2
            if ix.record(mid)["key"] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(ix):
            return None
        rec = ix.record(lo)
        if rec["key"] != key or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            return None
        blob = ix.concepts_bytes([lo])[0] if with_concepts else None
        return StoredRegions(name, ix.boxes(lo).copy(), ix.vectors([lo])[0].astype(np.float32),
                             Concepts.from_bytes(blob) if blob is not None else None)
