"""The photo index (and its image->text twin, the sentence index): fragment vectors in a FAISS
inner-product index, per-item metadata in LMDB, and a manifest. The only module that knows FAISS.

On disk, `indexes/NAME` is a symlink to a hidden generation directory beside it:

    indexes/NAME -> .NAME.g000003/      manifest.json, regions.faiss, meta.lmdb/
    indexes/.NAME.work/                 vectors encoded by a build in progress (LMDB, by content hash)
    indexes/.NAME.lock                  held by a running build

A build writes a complete new generation to a temporary sibling, renames it, then swaps the
symlink with one atomic rename: a reader resolves the link once, so it sees the old index or
the new one, never a mix. Vectors are persisted to the work area batch by batch as they are
encoded, so a build killed at any moment resumes where it stopped; the generation is rebuilt
deterministically from those vectors (items sorted by key), so it ends equal to a clean build.

An "item" is a photo (fragments = its regions, with boxes) or a sentence (fragments = its
words). Fragment ids are consecutive per item: item i owns ids first[i] .. first[i] + count[i].
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from . import paths
from .embedding import LoadedAlign
from .errors import IndexError_, UsageError
from .images import DEFAULT_MAX_MEGAPIXELS, is_photo
from .metadata import KV

FORMAT_VERSION = 1
KINDS = {"photos": ("photos", "regions"), "sentences": ("sentences", "words")}
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
# Past this many fragments "auto" leaves exact search for IVF: one thread scans a flat index
# of 100k x 512 in ~45 ms per query, an IVF one in ~10 ms at recall@10 >= 0.99
# (benchmarks/search.py, 2 shared cores).
FLAT_MAX = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
IVF_TRAIN_PER_LIST = 40  # k-means sample size per list (FAISS asks for >= 39)
IVF_NPROBE = 8  # lists probed per query vector (benchmarks/search.py: recall@10 1.0 at 100k and 1M)
# ivfpq: one byte of PQ code per 16 dimensions (512-d: 32 bytes, 64x less than float32). On clustered
# 512-d vectors 32-byte codes ranked as well as 64-byte ones (0.99 recall@10 after the exact re-ranking
# either way) and FAISS encodes them faster (sub-vectors of >= 16 dims use BLAS).
PQ_BYTES_PER_DIMS = 16
PQ_MIN_TRAIN = 256 * 39  # FAISS wants >= 39 points per PQ centroid (256 of them, 8 bits)

MANIFEST = "manifest.json"
VECTORS = "regions.faiss"
META = "meta.lmdb"
DEFAULT_NAME = "default"
SENTENCES_SUFFIX = ".sentences"

_ITEM = "i/"  # i/000000042 -> JSON item record (key, info, first, count)
_VEC = "v/"  # v/000000042 -> raw float16 (count, h)
_BOX = "b/"  # b/000000042 -> raw int32 (count, 4), photos only
_CON = "c/"  # c/000000042 -> region concepts (concepts.Concepts bytes), photos only; absent in older indexes
_SKIP = "s/"  # s/<path> -> reason (photos that could not be read)
_IDMAP = "idmap"  # arrays: first (N,) int64, count (N,) int64
_WORK_META = "meta"
_WORK_VEC = "w/"  # w/<content hash> -> arrays boxes, vectors (a build in progress)


# --------------------------------------------------------------------------- where an index lives


def resolve(name: str | Path | None = None, kind: str = "photos") -> Path:
    """The link path of an index: a bare NAME lives under `paths.indexes_dir()`; anything that
    looks like a path (has a separator, starts with . or ~) is used as given."""
    s = str(name) if name is not None else DEFAULT_NAME
    if not s.strip():
        raise UsageError("empty index name")
    if isinstance(name, Path) or os.sep in s or s.startswith((".", "~")):
        p = Path(s).expanduser()
        p = p.parent.resolve() / p.name  # resolve the parent only: the link itself must stay a link
    else:
        p = paths.indexes_dir() / s
    return p.with_name(p.name + SENTENCES_SUFFIX) if kind == "sentences" else p


@dataclass(frozen=True)
class Location:
    link: Path

    @property
    def name(self) -> str:
        return self.link.name

    def sibling(self, suffix: str) -> Path:
        return self.link.parent / f".{self.link.name}.{suffix}"

    @property
    def work(self) -> Path:
        return self.sibling("work")

    @property
    def lockfile(self) -> Path:
        return self.sibling("lock")

    def generations(self) -> list[Path]:
        """Generation directories, finished (.gNNNNNN) or not (.gNNNNNN.tmp), oldest first."""
        if not self.link.parent.is_dir():
            return []
        pattern = re.compile(re.escape(f".{self.link.name}.g") + r"(\d{6})(\.tmp)?")
        return sorted(p for p in self.link.parent.iterdir() if pattern.fullmatch(p.name))

    def current(self) -> Path | None:
        """The generation directory the link points at (None when there is no index)."""
        if not self.link.is_symlink():
            if self.link.exists():
                raise IndexError_(f"{self.link}: exists but is not a vsa index")
            return None
        return self.link.parent / os.readlink(self.link)

    def next_generation(self) -> Path:
        n = max((int(g.name.rsplit(".g", 1)[1][:6]) for g in self.generations()), default=0)
        return self.sibling(f"g{n + 1:06d}")

    def swap_in(self, gen: Path) -> None:
        """Point the link at `gen` with one atomic rename, then drop older generations."""
        tmp_link = self.sibling(f"link.{os.getpid()}")
        tmp_link.unlink(missing_ok=True)
        os.symlink(gen.name, tmp_link)
        os.replace(tmp_link, self.link)
        _fsync_dir(self.link.parent)
        for g in self.generations():
            if g != gen:
                shutil.rmtree(g, ignore_errors=True)

    def lock(self) -> _Lock:
        return _Lock(self.lockfile, self.name)


class _Lock:
    """One build (or remove) of an index at a time; a second one fails at once, clearly."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.fd = path, name, -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise IndexError_(f"index {self.name} is being built by another process; try again when it ends") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- FAISS


def choose_type(index_type: str, n: int) -> str:
    if index_type not in INDEX_TYPES:
        raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n <= FLAT_MAX else "ivf"


def pq_layout(dim: int) -> tuple[int, int]:
    """(sub-quantizers m, width) of an ivfpq index over dim-d vectors: m is the largest divisor
    of dim up to dim / PQ_BYTES_PER_DIMS (PQ splits the vector evenly)."""
    m = max(1, dim // PQ_BYTES_PER_DIMS)
    while dim % m:
        m -= 1
    return m, dim


def memory_bytes(index_type: str, n: int, dim: int) -> int:
    """RAM a FAISS index of n fragments of dim takes while searching (estimate, from FAISS's layout:
    float32 vectors, int64 ids in inverted lists, HNSW links, IVF centroids, PQ codes)."""
    if index_type == "flat":
        return n * dim * 4
    nlist = ivf_lists(n)
    if index_type == "ivf":
        return n * ((dim + 1) * 4 + 8) + nlist * (dim + 1) * 4
    if index_type == "hnsw":
        return n * ((dim + 1) * 4 + HNSW_M * 2 * 4)
    if index_type == "ivfpq":
        m, _ = pq_layout(dim)
        return n * (m + 8) + nlist * dim * 4 + 256 * dim * 4
    raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")


def choose_for_memory(index_type: str, n: int, dim: int, max_memory: int | None) -> str:
    """choose_type, and past the memory budget (bytes) IVF-PQ: 8 bytes of code per 8 dims plus
    an id, instead of float vectors. The exact re-ranking in search.py reads LMDB, so PQ only
    lowers first-stage recall (benchmarks/scale.py measures it). An explicit type is kept."""
    chosen = choose_type(index_type, n)
    if (index_type == "auto" and max_memory is not None and n >= PQ_MIN_TRAIN
            and memory_bytes(chosen, n, dim) > max_memory):
        return "ivfpq"
    return chosen


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists, a power of two, at least 1 and at most n / 39 (k-means needs points)."""
    want = 1 << max(0, round(np.log2(max(1.0, np.sqrt(n)))))
    return max(1, min(want, n // 39))


def make_faiss(vectors: np.ndarray, index_type: str, chunk: int = 65536) -> tuple[faiss.Index, str, dict[str, Any]]:
    """An inner-product index over `vectors` (N, h) (any float dtype), and its parameters.
    Deterministic: the k-means sample is a fixed function of N."""
    n, h = vectors.shape
    params: dict[str, Any] = {}
    if n == 0:
        index_type = "flat"  # nothing to train IVF on; an empty index searches the same
    if index_type == "ivfpq" and n < PQ_MIN_TRAIN:
        index_type = "ivf"  # too few fragments to train PQ codes (and too few to need them)
    if index_type == "flat":
        index = faiss.IndexFlatIP(h)
    elif index_type == "hnsw":
        # HNSW's graph needs a metric and inner product is not one (recall 0.57 on real region
        # vectors), so it runs on the L2 reduction (see _augment).
        max_norm = _max_norm(vectors, chunk)
        index = faiss.IndexHNSWFlat(h + 1, HNSW_M, faiss.METRIC_L2)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "max_norm": max_norm}
    elif index_type == "ivf":
        # Inner-product IVF over centred vectors. Subtracting the mean vector mu from every x
        # changes no query's ranking (q.x = q.(x - mu) + q.mu: one shift for all x, added back
        # by FragmentIndex.search) but removes the direction every region shares, which herded
        # them into a few giant lists: on 1M synthetic regions list imbalance 19 -> 2 and the
        # first stage 122 -> 18 ms at recall@10 1.0 (vs the L2 reduction used before). Spherical
        # k-means clusters directions, so a vector's norm does not choose its list.
        nlist = ivf_lists(n)
        rows = _train_rows(n, nlist)
        center = vectors[rows].astype(np.float32).mean(0)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(h), h, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.cp.spherical = True
        _gpu_kmeans(index, params)
        index.train(vectors[rows].astype(np.float32) - center)
        params.update(nlist=nlist, nprobe=IVF_NPROBE, center=center.tolist())
    elif index_type == "ivfpq":
        # IVF over PQ codes of the residuals, centred and spherical as "ivf" above. Against the
        # L2 reduction: recall@10 after the exact re-ranking 0.93 vs 0.86 (400k x 128-d, 8-byte
        # codes) and 0.98 vs 0.96 (200k x 512-d, 32 bytes), same build time.
        nlist = ivf_lists(n)
        m, _ = pq_layout(h)
        # PQ's k-means needs PQ_MIN_TRAIN points whatever nlist is.
        rows = _train_rows(n, max(nlist, -(-PQ_MIN_TRAIN // IVF_TRAIN_PER_LIST)))
        center = vectors[rows].astype(np.float32).mean(0)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(h), h, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.cp.spherical = True
        _gpu_kmeans(index, params)
        index.train(vectors[rows].astype(np.float32) - center)
        params.update(nlist=nlist, nprobe=IVF_NPROBE, center=center.tolist(), pq_m=m)
    else:
        raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES[1:])}")
    for i in range(0, n, chunk):
        part = vectors[i:i + chunk]
        if "center" in params:
            part = part.astype(np.float32) - np.asarray(params["center"], np.float32)
        index.add(_augment(part, params["max_norm"]) if "max_norm" in params else
                  np.ascontiguousarray(part, dtype=np.float32))
    return index, index_type, params


def _gpu_kmeans(index: faiss.IndexIVF, params: dict[str, Any]) -> None:
    """IVF k-means on the GPUs when faiss-gpu (the `gpu` extra) sees any; CPU otherwise. The
    manifest notes it ("kmeans": "gpu"): GPU k-means is not bit-identical to CPU k-means."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        flat = faiss.IndexFlatIP if index.metric_type == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2
        index.clustering_index = faiss.index_cpu_to_all_gpus(flat(index.d))
        params["kmeans"] = "gpu"


def _train_rows(n: int, nlist: int) -> np.ndarray:
    """A fixed sample for k-means (a function of n only, so builds are reproducible)."""
    sample = min(n, nlist * IVF_TRAIN_PER_LIST)
    return np.sort(np.random.default_rng(0).choice(n, sample, replace=False)) if sample < n else np.arange(n)


def _max_norm(vectors: np.ndarray, chunk: int) -> float:
    m = 0.0
    for i in range(0, len(vectors), chunk):
        m = max(m, float(np.linalg.norm(vectors[i:i + chunk].astype(np.float32), axis=1).max()))
    return m


def _augment(x: np.ndarray, max_norm: float) -> np.ndarray:
    """Inner-product search as L2 search: append sqrt(M^2 - |x|^2) to every x (all then have
    norm M) and 0 to the query; |q - x'|^2 = |q|^2 + M^2 - 2 q.x, so L2 order is dot order."""
    x = x.astype(np.float32)
    extra = np.sqrt(np.clip(max_norm ** 2 - (x * x).sum(1), 0, None))[:, None]
    return np.ascontiguousarray(np.hstack([x, extra]), dtype=np.float32)


# --------------------------------------------------------------------------- a finished index (reader)


@dataclass
class Item:
    key: str  # photo path | sentence source
    info: dict[str, Any]  # photos: size, mtime_ns, hash | sentences: text, words
    vectors: np.ndarray  # (n, h) float16
    boxes: np.ndarray | None = None  # (n, 4) int32 xyxy for photos
    concepts: bytes | None = None  # region concepts (concepts.Concepts.to_bytes), photos only


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
                raise IndexError_(f"no {what} {location.name.removesuffix(SENTENCES_SUFFIX)!r} "
                                  f"at {location.link} (create it with `{cmd}`)")
            try:
                self._open(gen)
                return
            except FileNotFoundError:
                # A build swapped generations between our readlink and open: read the link again.
                if attempt == 2:
                    raise IndexError_(f"{location.link}: index files are missing; build it again") from None
                time.sleep(0.05)

    def _open(self, gen: Path) -> None:
        self.dir = gen
        try:
            manifest = json.loads((gen / MANIFEST).read_text())
        except json.JSONDecodeError:
            raise IndexError_(f"{gen / MANIFEST}: unreadable manifest; build the index again") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexError_(f"{self.location.link}: index format {version}, this version reads "
                              f"{FORMAT_VERSION}; remove it (`vsa index remove`) and build it again")
        if manifest.get("kind") != self.kind:
            raise IndexError_(f"{self.location.link}: is a {manifest.get('kind')} index, not a {self.kind} index")
        self.manifest: dict[str, Any] = manifest
        if not (gen / VECTORS).is_file() or not (gen / META / "data.mdb").is_file():
            raise FileNotFoundError(gen)
        self.faiss = faiss.read_index(str(gen / VECTORS))
        self.kv = _open_shared(gen / META)
        ids = self.kv.get_arrays(_IDMAP) or {"first": np.zeros(0, np.int64), "count": np.zeros(0, np.int64)}
        self.first: np.ndarray = ids["first"]
        self.count: np.ndarray = ids["count"]
        self.dim: int = int(manifest["dim"])
        params = manifest.get("faiss", {})
        if isinstance(self.faiss, faiss.IndexIVF):
            self.faiss.nprobe = int(params.get("nprobe", IVF_NPROBE))

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
            raise IndexError_(
                f"index {self.location.name} was built with model {built['fingerprint']} ({built['path']}), "
                f"not {model.fingerprint} ({model.path}); search with --model {built['path']} "
                f"or rebuild the index with this model")

    def search(self, queries: np.ndarray, n: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-n fragments by inner product for each query vector: dots (Q, n), ids (Q, n);
        id -1 (dot -inf) where fewer were found. One thread by default: a query is a few
        vectors, and on a shared machine an OpenMP team mostly waits (see search.one_thread)."""
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
            raise IndexError_(f"{self.location.link}: all_dots needs a flat index, not {self.index_type}")
        xb = faiss.rev_swig_ptr(self.faiss.get_xb(), self.fragments * self.faiss.d).reshape(self.fragments, -1)
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return (torch.from_numpy(np.ascontiguousarray(q, np.float32)) @ torch.from_numpy(xb).T).numpy()
        finally:
            torch.set_num_threads(prev)

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

    def record(self, i: int) -> dict[str, Any]:
        return self.kv.get_json(f"{_ITEM}{i:09d}")

    def concepts_bytes(self, items: Iterable[int]) -> list[bytes | None]:
        """Each item's stored region concepts (None where the index predates them)."""
        return self.kv.get_many_bytes([f"{_CON}{i:09d}" for i in items])  # type: ignore[return-value]

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


# --------------------------------------------------------------------------- writing a generation


def write_generation(location: Location, kind: str, items: Iterable[Item], dim: int, model: dict[str, Any],
                     index_type: str, extra: dict[str, Any] | None = None,
                     skipped: dict[str, str] | None = None, total_hint: int | None = None) -> Path:
    """Write a complete generation to a temporary sibling, rename it, swap the link. `items`
    must come sorted by key: ids follow their order, which makes a build reproducible."""
    gen = location.next_generation()
    tmp = gen.with_name(gen.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    firsts: list[int] = []
    counts: list[int] = []
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
                        raise IndexError_(f"{it.key}: vectors of shape {v.shape}, expected (n, {dim})")
                    b.put_json(f"{_ITEM}{i:09d}", {"key": it.key, **it.info, "first": total, "count": len(v)})
                    b.put_bytes(f"{_VEC}{i:09d}", v.tobytes())
                    if it.boxes is not None:
                        b.put_bytes(f"{_BOX}{i:09d}", np.ascontiguousarray(it.boxes, np.int32).tobytes())
                    if it.concepts is not None:
                        b.put_bytes(f"{_CON}{i:09d}", it.concepts)
                    firsts.append(total)
                    counts.append(len(v))
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
            b.put_arrays(_IDMAP, first=np.array(firsts, np.int64), count=np.array(counts, np.int64))
            for key, why in sorted((skipped or {}).items()):
                b.put_json(_SKIP + key, why)
    all_vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float16)
    chunks.clear()
    chosen = choose_type(index_type, len(all_vectors))
    index, chosen, params = make_faiss(all_vectors, chosen)
    del all_vectors
    faiss.write_index(index, str(tmp / VECTORS))
    item_name, frag_name = KINDS[kind]
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "model": model, "dim": dim,
                "index_type": chosen, "faiss": params,
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


# --------------------------------------------------------------------------- photo index build


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan(roots: list[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime_ns) of every photo under the roots, sorted by path."""
    found: dict[str, tuple[int, int]] = {}
    for root in roots:
        if not root.exists():
            raise UsageError(f"{root}: no such file or directory")
        files = [root] if root.is_file() else (p for p in root.rglob("*"))
        for p in files:
            if not is_photo(p):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            if not p.is_file():
                continue
            found[os.path.abspath(p)] = (st.st_size, st.st_mtime_ns)  # normalised: no ./ or ../
    return [(p, s, m) for p, (s, m) in sorted(found.items())]


@dataclass
class PlannedPhoto:
    path: str
    size: int
    mtime_ns: int
    hash: str
    source: str  # where its vectors come from: old (the current index) | work (an interrupted build) | encode
    status: str  # added | changed | moved | unchanged


@dataclass
class BuildReport:
    index: str
    photos: int = 0
    regions: int = 0
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0  # photos that went through the CNN in this run
    resumed: int = 0  # photos whose vectors an interrupted build had already stored
    skipped: dict[str, str] = field(default_factory=dict)
    index_type: str = ""
    model: str = ""
    up_to_date: bool = False
    model_changed: bool = False
    replaced: str | None = None  # why the previous index could not be reused at all
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "photos": self.photos, "regions": self.regions, "added": self.added,
                "changed": self.changed, "moved": self.moved, "removed": self.removed,
                "unchanged": self.unchanged, "encoded": self.encoded, "resumed": self.resumed,
                "skipped": [{"path": p, "reason": r} for p, r in sorted(self.skipped.items())],
                "index_type": self.index_type, "model": self.model, "up_to_date": self.up_to_date,
                "model_changed": self.model_changed, "replaced": self.replaced}


class PhotoBuild:
    """`with PhotoBuild(...) as b: b.plan(); b.run(on_progress)` — planning is cheap (stat and
    hash), so the CLI can size its progress bar before the CNN starts."""

    def __init__(self, roots: list[Path] | None, model: LoadedAlign, name: str | Path | None = None,
                 index_type: str = "auto", device: str | torch.device | None = None, batch_size: int = 8,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, encoder: Any = None,
                 max_memory: int | None = None, shard: tuple[int, int] | None = None):
        if index_type not in INDEX_TYPES:
            raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        self.location = Location(resolve(name))
        self.model = model
        self.roots = [Path(os.path.abspath(Path(r).expanduser())) for r in roots] if roots else None
        self.index_type = index_type
        self.device = device
        self.batch_size = batch_size
        self.max_megapixels = max_megapixels
        self.encoder = encoder
        self.max_memory = max_memory  # bytes of FAISS RAM; past it "auto" builds IVF-PQ (choose_for_memory)
        self.shard = check_shard(shard) if shard is not None else None  # (i, n): index only slice i of n
        self.report = BuildReport(index=str(self.location.link), model=model.fingerprint)
        self.planned: list[PlannedPhoto] = []
        self._lock: _Lock | None = None
        self.old: FragmentIndex | None = None
        self.work: KV | None = None

    def __enter__(self) -> PhotoBuild:
        self._lock = self.location.lock().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    def _close(self) -> None:
        if self.old is not None:
            self.old.close()
            self.old = None
        if self.work is not None:
            self.work.close()
            self.work = None

    # -- planning
    def plan(self) -> int:
        """Compare the photos on disk with the current index; returns how many need the CNN."""
        loc, r = self.location, self.report
        if loc.current() is not None:
            try:
                self.old = FragmentIndex(loc, "photos")
            except IndexError_ as e:
                # An index this version cannot read (old format, files deleted): build it anew.
                r.replaced = str(e)
        old_manifest = self.old.manifest if self.old else None
        if self.roots is None:
            if old_manifest is None:
                raise UsageError(f"give the folders to index: vsa index build PATH... ({r.replaced})" if r.replaced
                                 else "give the folders to index: vsa index build PATH...")
            self.roots = [Path(p) for p in old_manifest["roots"]]
        if old_manifest and old_manifest["model"]["fingerprint"] != self.model.fingerprint:
            r.model_changed = True
            self.old.close()  # type: ignore[union-attr]
            self.old = None  # its vectors belong to another model: encode everything again
        old_by_path: dict[str, dict[str, Any]] = {}
        self.old_item_by_hash: dict[str, int] = {}
        if self.old is not None:
            for i, rec in enumerate(self.old.records()):
                old_by_path[rec["key"]] = rec
                self.old_item_by_hash.setdefault(rec["hash"], i)
        entries = scan(self.roots)
        if not entries and not (old_manifest and old_manifest["counts"].get("photos")):
            # Nothing to index and nothing indexed before: almost certainly the wrong folder.
            # (An index whose photos were all deleted is still updated: that is a real removal.)
            where = ", ".join(str(r) for r in self.roots)
            raise UsageError(f"no photos (jpg, jpeg, png, webp, bmp, gif) under {where}")
        self.work = self._open_work()
        in_work = {k[len(_WORK_VEC):] for k in self.work.keys(_WORK_VEC)}

        if self.shard is not None:
            entries = [e for e in entries if shard_of(e[0], self.roots, self.shard[1]) == self.shard[0]]
        present = {p for p, _, _ in entries}
        # A photo gone from its old path and present under a new one was moved, not removed.
        gone = Counter(rec["hash"] for p, rec in old_by_path.items() if p not in present)
        missing = sum(gone.values())
        seen_encode: set[str] = set()
        self.touched = 0  # same content, new size/mtime: only the record needs rewriting
        for path, size, mtime in entries:
            old = old_by_path.get(path)
            if old is not None and old["size"] == size and old["mtime_ns"] == mtime:
                digest: str | None = old["hash"]
            else:
                self.touched += old is not None
                try:
                    digest = file_hash(Path(path))
                except OSError as e:
                    digest = None
                    r.skipped[path] = f"{path}: cannot read ({e.strerror or e})"
            if digest is None:
                continue
            if old is not None:
                status = "unchanged" if digest == old["hash"] else "changed"
            elif gone[digest] > 0:
                gone[digest] -= 1
                status = "moved"
            else:
                status = "added"
            if digest in self.old_item_by_hash:
                source = "old"
            elif digest in in_work:
                source = "work"
            else:
                source = "encode"
                seen_encode.add(digest)
            self.planned.append(PlannedPhoto(path, size, mtime, digest, source, status))
        self.to_encode = len(seen_encode)
        self._tally()
        r.removed = missing - r.moved
        return self.to_encode

    def _tally(self) -> None:
        r = self.report
        for status in ("added", "changed", "moved", "unchanged"):
            setattr(r, status, sum(1 for p in self.planned if p.status == status))
        r.resumed = sum(1 for p in self.planned if p.source == "work")

    def _open_work(self) -> KV:
        """The work area of an interrupted build continues only if made for the same model."""
        w = self.location.work
        if w.exists():
            kv = KV(w)
            meta = kv.get_json(_WORK_META)
            if meta == {"model": self.model.fingerprint, "format_version": FORMAT_VERSION}:
                return kv
            kv.close()
            shutil.rmtree(w)
        kv = KV(w)
        kv.put_json(_WORK_META, {"model": self.model.fingerprint, "format_version": FORMAT_VERSION})
        return kv

    # -- encoding and writing
    def run(self, on_progress: Callable[[int], None] | None = None) -> BuildReport:
        t0 = time.perf_counter()
        r = self.report
        try:
            self._encode(on_progress)
            chosen = choose_for_memory(self.index_type, self._fragment_estimate(), self.model.model.out_dim,
                                       self.max_memory)
            prev_skipped = self.old.skipped() if self.old else {}
            nothing_new = (self.old is not None and not (r.added or r.changed or r.moved or r.removed)
                           and r.encoded == 0 and self.touched == 0 and r.skipped == prev_skipped
                           and self.old.manifest["roots"] == [str(p) for p in self.roots or []]
                           and self.old.manifest["index_type"] == chosen)
            if nothing_new:
                r.up_to_date = True
                r.index_type = chosen
                r.photos, r.regions = len(self.old), self.old.fragments  # type: ignore[arg-type]
            else:
                self._write(chosen)
        finally:
            self._close()
        shutil.rmtree(self.location.work, ignore_errors=True)
        r.seconds = time.perf_counter() - t0
        return r

    def _fragment_estimate(self) -> int:
        return len(self.planned) * self.model.region_config.max_regions

    def _encode(self, on_progress: Callable[[int], None] | None) -> None:
        todo: dict[str, str] = {}  # hash -> first path with it
        for p in self.planned:
            if p.source == "encode" and p.hash not in todo:
                todo[p.hash] = p.path
        if not todo:
            return
        from .regions import RegionEncoder, extract

        encoder = self.encoder or RegionEncoder(self.model.region_config, self.device)
        by_path = {path: h for h, path in todo.items()}
        pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        failed: dict[str, str] = {}

        def commit() -> None:
            with self.work.batch() as b:
                for digest, boxes, vecs, con in pending:
                    b.put_arrays(_WORK_VEC + digest, boxes=boxes, vectors=vecs, concepts=con)
            n = len(pending)
            pending.clear()
            if on_progress:
                on_progress(n)

        for path, result in extract([Path(p) for p in todo.values()], encoder, batch_size=self.batch_size,
                                    max_megapixels=self.max_megapixels):
            digest = by_path[str(path)]
            if isinstance(result, str):
                failed[digest] = result
                if on_progress:
                    on_progress(1)
                continue
            with torch.inference_mode():
                feats = torch.from_numpy(result.features).to(self.device or "cpu")[None]
                vecs = self.model.model.encode_regions(feats)[0].float().cpu().numpy()  # (R', h)
            boxes = result.boxes[: len(vecs)]  # a global model keeps region 0 only
            pending.append((digest, boxes.astype(np.int32), vecs.astype(np.float16),
                            _concepts_of(result.features[: len(vecs)], self.model)))
            self.report.encoded += 1
            if len(pending) >= self.batch_size:
                commit()
        if pending:
            commit()
        if failed:
            for p in self.planned:
                if p.hash in failed:
                    self.report.skipped[p.path] = _short(failed[p.hash], p.path)
            self.planned = [p for p in self.planned if p.hash not in failed]
            self._tally()

    def _items(self) -> Iterator[Item]:
        for p in self.planned:
            if p.source == "old":
                i = self.old_item_by_hash[p.hash]
                vecs = self.old.vectors([i])[0]  # type: ignore[union-attr]
                boxes = self.old.boxes(i)  # type: ignore[union-attr]
                con = self.old.concepts_bytes([i])[0]  # type: ignore[union-attr]
            else:
                a = self.work.get_arrays(_WORK_VEC + p.hash)
                if a is None:  # pragma: no cover - the plan only names hashes it saw stored
                    raise IndexError_(f"{p.path}: vectors missing from the build's work area; build again")
                vecs, boxes = a["vectors"], a["boxes"]
                con = a["concepts"].tobytes() if "concepts" in a else None
            info = {"path": p.path, "size": p.size, "mtime_ns": p.mtime_ns, "hash": p.hash}
            yield Item(p.path, info, vecs, boxes, con)

    def _write(self, chosen: str) -> None:
        r = self.report
        skipped = {p: why for p, why in r.skipped.items()}
        extra: dict[str, Any] = {"roots": [str(p) for p in self.roots or []]}
        if self.shard is not None:  # what `merge` needs to check the set and choose the type as one build would
            extra.update(shard=list(self.shard), max_regions=self.model.region_config.max_regions)
        gen = write_generation(self.location, "photos", self._items(), self.model.model.out_dim,
                               model_info(self.model), chosen, extra=extra, skipped=skipped)
        manifest = json.loads((gen / MANIFEST).read_text())
        r.photos, r.regions = manifest["counts"]["photos"], manifest["counts"]["regions"]
        r.index_type = manifest["index_type"]


def _concepts_of(features: np.ndarray, model: LoadedAlign) -> np.ndarray:
    """Region concepts (the backbone's own ImageNet classes, top K) as a uint8 array for the work area."""
    from .concepts import from_features

    return np.frombuffer(from_features(features, backbone=model.region_config.backbone).to_bytes(), np.uint8)


def _short(reason: str, path: str) -> str:
    return reason if reason.startswith(path) else f"{path}: {reason}"


def build_photos(roots: list[Path] | None, model: LoadedAlign, name: str | Path | None = None,
                 index_type: str = "auto", on_progress: Callable[[int], None] | None = None,
                 **kw: Any) -> BuildReport:
    """Plan and run a build in one call (the CLI uses PhotoBuild to show a progress bar)."""
    with PhotoBuild(roots, model, name, index_type, **kw) as b:
        b.plan()
        return b.run(on_progress)


# --------------------------------------------------------------------------- sentence index (image -> text)


def read_sentences(files: list[Path]) -> list[tuple[str, str]]:
    """(source, sentence) pairs: one sentence per line, or Flickr8k captions `name#n<TAB>caption`
    (the source is then `name#n`; otherwise `file:line`)."""
    out: list[tuple[str, str]] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise UsageError(f"{f}: no such file") from None
        except (IsADirectoryError, PermissionError) as e:
            raise UsageError(f"{f}: cannot read ({e.strerror})") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            head, tab, rest = line.partition("\t")
            if tab and "#" in head and head.rsplit("#", 1)[1].isdigit():
                out.append((head, rest.strip()))
            else:
                out.append((f"{f.name}:{n}", line))
    return out


def encode_sentences(model: LoadedAlign, sentences: list[str], batch_size: int = 256,
                     on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """For each sentence: its known words and their vectors (n_known, h) float32. Unknown words
    still feed the sentence encoder as <unk> (context) but are not fragments of their own."""
    from .text import tokenize
    from .vocab import UNK

    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        toks = [tokenize(s) for s in chunk]
        ids = [model.vocab.encode(t) for t in toks]
        lengths = torch.tensor([max(1, len(x)) for x in ids])
        batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for j, x in enumerate(ids):
            batch[j, :len(x)] = torch.tensor(x, dtype=torch.long)
        with torch.inference_mode():
            s = model.model.encode_words(batch, lengths).float().cpu().numpy()  # (B, T, h)
        for j, (t, x) in enumerate(zip(toks, ids)):
            keep = [k for k, w in enumerate(x) if w != UNK]
            yield [t[k] for k in keep], s[j, keep]
        if on_progress:
            on_progress(len(chunk))


@dataclass
class TextReport:
    index: str
    sentences: int = 0
    words: int = 0
    skipped: int = 0  # empty or all-unknown lines
    duplicates: int = 0
    index_type: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "sentences": self.sentences, "words": self.words, "skipped": self.skipped,
                "duplicates": self.duplicates, "index_type": self.index_type}


def build_sentences(files: list[Path], model: LoadedAlign, name: str | Path | None = None,
                    index_type: str = "auto", on_total: Callable[[int], None] | None = None,
                    on_progress: Callable[[int], None] | None = None) -> TextReport:
    """Replace the sentence index NAME with the sentences of `files`."""
    t0 = time.perf_counter()
    location = Location(resolve(name, "sentences"))
    report = TextReport(index=str(location.link))
    pairs = read_sentences(files)
    if not pairs:
        raise UsageError(f"no sentences in {', '.join(str(f) for f in files)}")
    # One item per distinct source; sorted so ids (and the index) do not depend on file order.
    by_source: dict[str, str] = {}
    for src, s in pairs:
        if src in by_source:
            report.duplicates += 1
        by_source.setdefault(src, s)
    keys = sorted(by_source)
    if on_total:
        on_total(len(keys))
    items: list[Item] = []
    for key, (words, vecs) in zip(keys, encode_sentences(model, [by_source[k] for k in keys],
                                                         on_progress=on_progress)):
        if not words:
            report.skipped += 1
            continue
        items.append(Item(key, {"text": by_source[key], "words": words}, vecs.astype(np.float16)))
    with location.lock():
        gen = write_generation(location, "sentences", items, model.model.out_dim, model_info(model), index_type,
                               extra={"files": [os.path.abspath(f) for f in files]})
    manifest = json.loads((gen / MANIFEST).read_text())
    report.sentences, report.words = manifest["counts"]["sentences"], manifest["counts"]["words"]
    report.index_type = manifest["index_type"]
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------- status and remove


def status(name: str | Path | None = None) -> dict[str, Any]:
    """What an index holds: counts, model, type, size on disk; and its sentence twin if any."""
    out: dict[str, Any] = {"index": str(resolve(name))}
    found = False
    for kind in KINDS:
        loc = Location(resolve(name, kind))
        gen = loc.current()
        work = loc.work.exists()
        if gen is None and not work:
            continue
        found = True
        entry: dict[str, Any] = {"path": str(loc.link)}
        if gen is not None:
            with FragmentIndex(loc, kind) as ix:
                m = ix.manifest
                entry.update({**m["counts"], "index_type": m["index_type"], "model": m["model"]["fingerprint"],
                              "model_path": m["model"]["path"], "dim": m["dim"],
                              "bytes": disk_size(ix.dir)})
                if kind == "photos":
                    entry["roots"] = m["roots"]
        if work:
            entry["interrupted_build"] = True
        out[kind] = entry
    if not found:
        raise IndexError_(f"no index {resolve(name).name!r} at {resolve(name)} (create it with `vsa index build PATH`)")
    return out


def remove(name: str | Path | None = None) -> list[str]:
    """Delete an index (photos and sentences, finished or interrupted); returns what was removed."""
    removed: list[str] = []
    for kind in KINDS:
        loc = Location(resolve(name, kind))
        if loc.current() is None and not loc.generations() and not loc.work.exists():
            continue
        with loc.lock():
            if loc.link.is_symlink():
                loc.link.unlink()  # first: from here on readers see no index, never a partial one
            for g in loc.generations():
                shutil.rmtree(g, ignore_errors=True)
            shutil.rmtree(loc.work, ignore_errors=True)
        loc.lockfile.unlink(missing_ok=True)
        removed.append(str(loc.link))
    if not removed:
        raise IndexError_(f"no index {resolve(name).name!r} at {resolve(name)}")
    return removed


# --------------------------------------------------------------------------- sharded builds


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {i}/{n}: want i/n with 0 <= i < n")
    return int(i), int(n)


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n): slice i (0-based) of n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: want i/n, e.g. 0/4 (slice 0 of 4)") from None
    return check_shard((i, n))


def parse_size(text: str) -> int:
    """"512M", "4G", "1.5GB", "1000000" -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", text)
    if not m:
        raise UsageError(f"{text!r}: not a size (examples: 512M, 4G)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def shard_of(path: str, roots: list[Path], n: int) -> int:
    """Which of n shards a photo belongs to: a stable hash of its path relative to the root that
    holds it, so the split is the same on every machine and for every build of the same roots."""
    rel = path
    for root in roots:
        r = str(root).rstrip(os.sep)
        if path == r:
            rel = os.path.basename(path)
            break
        if path.startswith(r + os.sep):
            rel = path[len(r) + 1:]
            break
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=8).digest(), "big") % n


@dataclass
class MergeReport:
    index: str
    parts: list[str]
    photos: int = 0
    regions: int = 0
    skipped: int = 0
    index_type: str = ""
    memory_bytes: int = 0  # FAISS RAM while searching (estimate, memory_bytes())
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "parts": self.parts, "photos": self.photos, "regions": self.regions,
                "skipped": self.skipped, "index_type": self.index_type, "memory_bytes": self.memory_bytes,
                "seconds": round(self.seconds, 2)}


def merge(parts: list[str | Path], name: str | Path | None = None, index_type: str = "auto",
          max_memory: int | None = None, on_progress: Callable[[int], None] | None = None) -> MergeReport:
    """Combine photo indexes (the shards of `vsa index build --shard i/n`) into the index NAME.
    Items are merged in key order and their fragment id ranges renumbered, and the FAISS index is
    built from the parts' stored vectors as one build would: with the same photos, roots, model
    and options the result equals a single build byte for byte (so do its search results). No
    photo is read or encoded again. on_progress(n) counts photos."""
    import heapq

    t0 = time.perf_counter()
    if not parts:
        raise UsageError("give the shard indexes to merge")
    location = Location(resolve(name))
    report = MergeReport(index=str(location.link), parts=[])
    opened: list[FragmentIndex] = []
    try:
        for p in parts:
            loc = Location(resolve(p))
            if loc.link == location.link:
                raise UsageError(f"{loc.link}: the merged index cannot also be one of its parts")
            opened.append(FragmentIndex(loc, "photos"))
            report.parts.append(str(loc.link))
        first = opened[0].manifest
        for x in opened[1:]:
            if x.manifest["model"]["fingerprint"] != first["model"]["fingerprint"] or x.dim != opened[0].dim:
                raise IndexError_(f"{x.location.link} was built with model {x.manifest['model']['fingerprint']}, "
                                  f"{opened[0].location.link} with {first['model']['fingerprint']}: "
                                  "build every shard with the same --model")
        _check_shard_set(opened)
        roots: list[str] = []
        for x in opened:
            roots += [r for r in x.manifest.get("roots", []) if r not in roots]
        skipped: dict[str, str] = {}
        for x in opened:
            skipped.update(x.skipped())
        photos = sum(len(x) for x in opened)
        per_photo = first.get("max_regions")
        # As PhotoBuild.run: "auto" decides on photos x max_regions (the count it knows before writing).
        estimate = photos * per_photo if per_photo else sum(x.fragments for x in opened)
        chosen = choose_for_memory(index_type, estimate, opened[0].dim, max_memory)

        def items(x: FragmentIndex) -> Iterator[Item]:
            recs = list(x.records())
            for a in range(0, len(recs), 512):
                chunk = recs[a:a + 512]
                cons = x.concepts_bytes(range(a, a + len(chunk)))
                for j, (rec, vecs) in enumerate(zip(chunk, x.vectors(range(a, a + len(chunk))))):
                    info = {k: v for k, v in rec.items() if k not in ("key", "first", "count")}
                    yield Item(rec["key"], info, vecs, x.boxes(a + j), cons[j])
                if on_progress:
                    on_progress(len(chunk))

        last: list[str] = []

        def unique(stream: Iterator[Item]) -> Iterator[Item]:
            for it in stream:
                if last and it.key == last[0]:
                    raise IndexError_(f"{it.key} is in two of the parts: merge shards of one split (i/n)")
                last[:] = [it.key]
                yield it

        merged = unique(heapq.merge(*(items(x) for x in opened), key=lambda it: it.key))
        with location.lock():
            gen = write_generation(location, "photos", merged, opened[0].dim, first["model"], chosen,
                                   extra={"roots": roots}, skipped=skipped)
    finally:
        for x in opened:
            x.close()
    manifest = json.loads((gen / MANIFEST).read_text())
    report.photos, report.regions = manifest["counts"]["photos"], manifest["counts"]["regions"]
    report.skipped, report.index_type = manifest["counts"]["skipped"], manifest["index_type"]
    report.memory_bytes = memory_bytes(report.index_type, report.regions, int(manifest["dim"]))
    report.seconds = time.perf_counter() - t0
    return report


def _check_shard_set(opened: list[FragmentIndex]) -> None:
    """Shards of one split, each once, none missing (plain indexes of other folders may join too)."""
    specs = [(x.manifest["shard"], x.location.link) for x in opened if "shard" in x.manifest]
    if not specs:
        return
    ns = {n for (_, n), _ in specs}
    if len(ns) > 1:
        raise UsageError("the parts come from different splits (" + ", ".join(f"{i}/{n}" for (i, n), _ in specs)
                         + "): merge the shards of one split")
    n = ns.pop()
    seen: dict[int, Path] = {}
    for (i, _), link in specs:
        if i in seen:
            raise UsageError(f"shard {i}/{n} is given twice ({seen[i]} and {link})")
        seen[i] = link
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise UsageError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: "
                         "build them (vsa index build PATH --shard i/n) before merging")


# --------------------------------------------------------------------------- library API


def build(roots: list[str | Path], name: str | Path | None = None, model: str | Path | LoadedAlign = "align",
          index_type: str = "auto", device: str | None = None,
          on_progress: Callable[[int], None] | None = None) -> BuildReport:
    """Index (or update) the photos under `roots` into index `name` with an alignment model."""
    from .embedding import load_align

    loaded = model if isinstance(model, LoadedAlign) else load_align(paths.find_model(str(model)), device or "cpu")
    return build_photos([Path(r) for r in roots], loaded, name, index_type, on_progress=on_progress, device=device)


def search(text: str, name: str | Path | None = None, k: int = 10, model: str | Path | None = None) -> Any:
    """Photos of index `name` for `text`, best first: a `search.Result` with `.hits` (path, score,
    and the box each word matched)."""
    from . import search as _search

    with open_index(name, "photos") as ix:
        return _search.search_text(ix, _search.model_for(ix, model), text, k)
