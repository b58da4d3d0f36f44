"""A finished index generation (reader: FragmentIndex): the memory-mapped int8 vectors and the
FAISS first stage, exact scores of items against query words, item records in LMDB; finding one
photo's regions in an index (find_photo). The writer is generation.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..core import paths
from ..core.device import one_thread
from ..core.errors import DamagedError, SearchIndexError
from ..core.kv import KV
from ..models.score import item_scores, split, starts_of
from ..vision.concepts import Concepts
from . import arrays
from .faiss_types import IVF_NPROBE
from .generation import Stored, file_digest
from .layout import (
    _ITEM,
    _SKIP,
    BOXES,
    CONCEPT_IDS,
    CONCEPT_PROBS,
    FIRST_STAGE,
    FORMAT_VERSION,
    ITEMS,
    MANIFEST,
    META,
    SCALES,
    SENTENCES_SUFFIX,
    SHARED,
    SHARED_SCALES,
    SHARED_STAGE,
    VECTORS,
    Location,
    resolve,
)

if TYPE_CHECKING:  # torch stays out of a search's imports (cold start)
    from ..models.alignment import LoadedAlign

_CHUNK = 65536  # fragment rows decoded at a time by scans (a few MB of float32)

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
            name = self.location.link.name.removesuffix(SENTENCES_SUFFIX) if self.location.link.parent == \
                paths.indexes_dir() else str(self.location.link).removesuffix(SENTENCES_SUFFIX)
            cmd = f"vsa index build --index {name}" if self.kind == "photos" else f"vsa index text FILE --index {name}"
            raise SearchIndexError(f"{self.location.link}: index format {version}, this version reads "
                                   f"{FORMAT_VERSION}; rebuild it with `{cmd}`")
        if manifest.get("kind") != self.kind:
            raise SearchIndexError(f"{self.location.link}: is a {manifest.get('kind')} index, not a {self.kind} index")
        self.manifest: dict[str, Any] = manifest
        files = manifest.get("checksums", {})
        if not all((gen / name).is_file() for name in files):
            raise FileNotFoundError(gen)
        # Sizes first (a stat each): numpy, FAISS and LMDB would read a truncated file as garbage or die of SIGBUS.
        for name, want in files.items():
            size = (gen / name).stat().st_size
            if size != want["size"]:
                raise self._damaged(f"{name} is {size} bytes, it was written with {want['size']}")
        self.dim: int = int(manifest["dim"])
        self.shared_dim: int = int(manifest.get("shared_dim", 0))
        try:
            self.codes = arrays.load(gen / VECTORS)  # (F, part) int8, memory-mapped
            self.scales = arrays.load(gen / SCALES)
            self.shared_codes = arrays.load(gen / SHARED) if SHARED in files else None
            self.shared_scales = arrays.load(gen / SHARED_SCALES) if SHARED in files else None
            items = np.load(gen / ITEMS)  # small: read whole
            self.faiss = faiss.read_index(str(gen / FIRST_STAGE)) if FIRST_STAGE in files else None
            self.faiss_shared = faiss.read_index(str(gen / SHARED_STAGE)) if SHARED_STAGE in files else None
        except (ValueError, OSError, RuntimeError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise self._damaged(f"cannot be read ({e})") from None
        if self.codes.shape[1] != self.dim - self.shared_dim:
            raise self._damaged(f"{VECTORS} holds {self.codes.shape[1]}-d vectors, the manifest says "
                                f"{self.dim - self.shared_dim}")
        try:
            self.kv = _open_shared(gen / META)
        except DamagedError as e:
            raise self._damaged(str(e)) from None
        self.first: np.ndarray = items["first"].astype(np.int64)
        self.count: np.ndarray = items["count"].astype(np.int64)
        # Querybank offsets per item (zeros for a model without a querybank)
        self.offsets: np.ndarray = items["offset"].astype(np.float32)
        self.has_concepts: np.ndarray = items["has_concepts"].astype(bool)
        self._files = set(files)
        self._maps: dict[str, np.ndarray] = {}
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
        return int(len(self.codes))

    @property
    def part_dim(self) -> int:
        """Width of each fragment's own part; the last `shared_dim` dims are the item's shared part."""
        return self.dim - self.shared_dim

    def check_model(self, model: LoadedAlign) -> None:
        built = self.manifest["model"]
        if built["fingerprint"] != model.fingerprint:
            raise SearchIndexError(
                f"index {self.location.name} was built with model {built['fingerprint']} ({built['path']}), "
                f"not {model.fingerprint} ({model.path}); search with --model {built['path']} "
                f"or rebuild the index with this model")

    # -- the stored vectors

    def rows_of(self, items: Iterable[int]) -> np.ndarray:
        """The fragment rows of `items`, in order (an item's rows are contiguous)."""
        items = np.asarray(list(items) if not isinstance(items, np.ndarray) else items, np.int64)
        if not len(items):
            return np.zeros(0, np.int64)
        counts = self.count[items]
        starts = np.repeat(self.first[items] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return starts + np.arange(int(counts.sum()))

    def part_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), part_dim) float32: the fragments' own parts, decoded."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            sl = slice(int(rows[0]), int(rows[-1]) + 1)  # one contiguous read of the map
            return arrays.dequantize(self.codes[sl], self.scales[sl])
        return arrays.dequantize(self.codes[rows], self.scales[rows])

    def shared_vectors(self, items: Iterable[int]) -> np.ndarray:
        """(len(items), shared_dim) float32: the items' shared parts (width 0 when there are none)."""
        items = np.asarray(list(items) if not isinstance(items, np.ndarray) else items, np.int64)
        if self.shared_codes is None or self.shared_scales is None:
            return np.zeros((len(items), 0), np.float32)
        return arrays.dequantize(self.shared_codes[items], self.shared_scales[items])

    def stored(self, i: int) -> Stored:
        """Item i's vectors as stored (int8 codes and scales), for a writer to copy unchanged."""
        a, n = int(self.first[i]), int(self.count[i])
        if self.shared_codes is None or self.shared_scales is None:
            sc, ss = np.zeros(0, np.int8), 0.0
        else:
            sc, ss = np.array(self.shared_codes[i]), float(self.shared_scales[i])
        return Stored(np.array(self.codes[a:a + n]), np.array(self.scales[a:a + n]), sc, ss)

    def vectors(self, items: Iterable[int]) -> list[np.ndarray]:
        """(count_i, dim) float32 full vectors of each item (its shared part repeated per fragment)."""
        items = np.asarray(list(items) if not isinstance(items, np.ndarray) else items, np.int64)
        part = self.part_vectors(self.rows_of(items))
        shared = self.shared_vectors(items)
        out, a = [], 0
        for j, n in enumerate(self.count[items]):
            v = part[a:a + n]
            if self.shared_dim:
                v = np.hstack([v, np.broadcast_to(shared[j], (n, self.shared_dim))])
            out.append(np.ascontiguousarray(v, np.float32))
            a += n
        return out

    def scores(self, q: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact S = Σ_t max_i v_i·s_t of `items` against query words q (T, dim), from the stored
        vectors, before querybank offsets: scores (C,), each word's best dot per item (T, C). With a
        shared part only the fragments' own parts need the max (score.item_scores)."""
        items = np.asarray(items, np.int64)
        q = np.ascontiguousarray(q, np.float32)
        if not len(items):
            return np.zeros(0, np.float32), np.zeros((len(q), 0), np.float32)
        q_own, q_shared = split(q, self.shared_dim)
        with one_thread():
            dots = np.ascontiguousarray(q_own) @ self.part_vectors(self.rows_of(items)).T  # (T, ΣR)
        shared = (self.shared_vectors(items) @ q_shared.T).T if self.shared_dim else None  # (T, C): u·g_t
        return item_scores(dots, starts_of(self.count[items]), shared)

    def all_dots(self, q: np.ndarray) -> np.ndarray:
        """(Q, fragments) inner products of q (Q, dim) with every stored vector, decoded chunk by
        chunk from the map (one thread, as `search`)."""
        q_own, q_shared = split(np.ascontiguousarray(q, np.float32), self.shared_dim)
        out = self.all_part_dots(q_own)
        if self.shared_dim and len(self):
            out += np.repeat(self.shared_vectors(np.arange(len(self))) @ q_shared.T, self.count, axis=0).T
        return out

    def all_part_dots(self, q: np.ndarray) -> np.ndarray:
        """(Q, fragments) inner products of q (Q, part_dim) with the fragments' own parts."""
        out = np.empty((len(q), self.fragments), np.float32)
        q = np.ascontiguousarray(q, np.float32)
        with one_thread():
            for a in range(0, self.fragments, _CHUNK):
                v = self.part_vectors(np.arange(a, min(a + _CHUNK, self.fragments)))
                out[:, a:a + len(v)] = q @ v.T
        return out

    # -- the first stage

    def search(self, queries: np.ndarray, n: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-n fragments by the inner product of their own part with each query's first
        part_dim dims (the whole vector where nothing is shared): dots (Q, n), ids (Q, n); id -1
        (dot -inf) where fewer were found. Exact for "flat" (a scan of the stored vectors), the
        FAISS first stage otherwise. One thread by default: a query is a few vectors, and on a
        shared machine an OpenMP team mostly waits (see core.device.one_thread)."""
        q = np.ascontiguousarray(split(np.asarray(queries, np.float32), self.shared_dim)[0])
        n = max(1, min(n, self.fragments)) if self.fragments else 1
        if self.faiss is None:
            return arrays.top_n(self.all_part_dots(q), n)
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            return self._search(q, n)
        finally:
            faiss.omp_set_num_threads(prev)

    def search_shared(self, g: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-m items by u·g, u the items' shared parts and g (shared_dim,) (for a query, Σ_t g_t):
        dots (m',), items (m',), best first. Exact for "flat", the FAISS codes otherwise."""
        g = np.ascontiguousarray(np.asarray(g, np.float32).reshape(1, -1))
        m = max(1, min(m, len(self)))
        if not self.shared_dim or not len(self):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.faiss_shared is None:
            d, i = arrays.top_n(self.shared_vectors(np.arange(len(self))).dot(g[0])[None, :], m)
        else:
            with one_thread():
                d, i = self.faiss_shared.search(g, m)
        keep = i[0] >= 0
        return d[0][keep].astype(np.float32), i[0][keep].astype(np.int64)

    def _search(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.faiss is not None
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

    def items_of(self, ids: np.ndarray) -> np.ndarray:
        """Fragment ids -> the items that own them."""
        return np.searchsorted(self.first, ids, side="right") - 1

    # -- per fragment: boxes and concepts

    def boxes(self, i: int) -> np.ndarray:
        boxes = self._map(BOXES)
        if boxes is None:
            return np.zeros((0, 4), np.int32)
        a, n = int(self.first[i]), int(self.count[i])
        return np.asarray(boxes[a:a + n], np.int32)

    def _map(self, name: str) -> np.ndarray | None:
        """A row file of the generation, memory-mapped once (None when the generation has none)."""
        if name not in self._files:
            return None
        if name not in self._maps:
            self._maps[name] = arrays.load(self.dir / name)
        return self._maps[name]

    def concept_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every fragment's concepts, memory-mapped: ids (F, K) uint16, probs (F, K) float16, and
        which items have none (an index built from items without them); None when none has any."""
        ids, probs = self._map(CONCEPT_IDS), self._map(CONCEPT_PROBS)
        if ids is None or probs is None:
            return None
        return ids, probs, ~self.has_concepts

    def concepts_bytes(self, items: Iterable[int]) -> list[bytes | None]:
        """Each item's stored region concepts (None where it has none)."""
        got = self.concept_arrays()
        out: list[bytes | None] = []
        for i in items:
            if got is None or not self.has_concepts[i]:
                out.append(None)
                continue
            a, n = int(self.first[i]), int(self.count[i])
            out.append(Concepts(np.asarray(got[0][a:a + n]), np.asarray(got[1][a:a + n])).to_bytes())
        return out

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
