"""The FAISS index types (flat, ivf, hnsw, ivfpq): choosing one for a size and a memory budget,
and building it over fragment vectors. Inner-product search throughout."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ..core.errors import UsageError

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
# Past this many fragments "auto" leaves exact search for IVF, whose query time grows far slower
# (benchmarks/search.py: synthetic 512-d regions, recall@10 1.0 at 100k and 1M). Real region
# vectors of the shipped model share a large global part and IVF finds fewer of the exact top 10
# on them (benchmarks/index_recall.py: 0.89 on 1,000 dev photos), so search stays exact for as long
# as a flat scan is fast enough.
FLAT_MAX = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
IVF_TRAIN_PER_LIST = 40  # k-means sample size per list (FAISS asks for >= 39)
IVF_NPROBE = 8  # lists probed per query vector (benchmarks/search.py: recall@10 1.0 on synthetic regions)
# ivfpq: one byte of PQ code per 16 dimensions (512-d: 32 bytes, 64x less than float32). On clustered
# 512-d vectors 32-byte codes ranked as well as 64-byte ones (0.99 recall@10 after the exact re-ranking
# either way) and FAISS encodes them faster (sub-vectors of >= 16 dims use BLAS).
PQ_BYTES_PER_DIMS = 16
PQ_MIN_TRAIN = 256 * 39  # FAISS wants >= 39 points per PQ centroid (256 of them, 8 bits)



def check_index_type(index_type: str, allowed: tuple[str, ...] = INDEX_TYPES) -> str:
    if index_type not in allowed:
        raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(allowed)}")
    return index_type


def choose_type(index_type: str, n: int) -> str:
    check_index_type(index_type)
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
    check_index_type(index_type)  # "auto" (no layout of its own) or a name that is none of the above
    raise UsageError(f"index type {index_type!r} has no memory estimate; choose one of {', '.join(INDEX_TYPES[1:])}")


def choose_for_memory(index_type: str, n: int, dim: int, max_memory: int | None) -> str:
    """choose_type, and past the memory budget (bytes) IVF-PQ: one byte of code per
    PQ_BYTES_PER_DIMS dims plus an 8-byte id, instead of float vectors. The exact re-ranking in
    query.py reads LMDB, so PQ only lowers first-stage recall (benchmarks/scale.py measures it).
    An explicit type is kept."""
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
        check_index_type(index_type, INDEX_TYPES[1:])  # raises: "auto" is chosen before this point
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
