"""The FAISS index types of the first search stage (pq, ivfpq, ivf, hnsw; "flat" has none: it
scans the stored int8 vectors): choosing one for a size and a memory budget, and building it over
fragment vectors. Inner-product search throughout. The first stage only proposes candidates; the
stored vectors (arrays.py) rescore them, so compact codes cost recall, not precision."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ..core.errors import UsageError

INDEX_TYPES = ("auto", "flat", "pq", "ivfpq", "ivf", "hnsw")
# "auto": exact (flat) while the int8 vectors are small enough to scan whole (and too few to train
# PQ codes), PQ codes scanned exhaustively up to PQ_FLAT_MAX fragments, IVF-PQ beyond.
FLAT_MAX = 9_984
PQ_FLAT_MAX = 400_000
# "pq": FAISS's fast-scan PQ, 4-bit codes of 4 dims each (512-d region part: 64 bytes). Against 8-bit
# PQ of the same size on 160k real region parts: 2.6 vs 25.5 ms of CPU a 10-word query, 1.7 vs 99 s
# to train, and 0.94 vs 0.97 of each word's top 32 regions within its top 256 (the rescoring depth).
PQ_FS_DIMS = 4
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
    if n < FLAT_MAX:
        return "flat"
    return "pq" if n <= PQ_FLAT_MAX else "ivfpq"


def pq_layout(dim: int, per: int = PQ_BYTES_PER_DIMS) -> tuple[int, int]:
    """(sub-quantizers m, width) of a PQ code over dim-d vectors: m is the largest divisor
    of dim up to dim / per (PQ splits the vector evenly)."""
    m = max(1, dim // per)
    while dim % m:
        m -= 1
    return m, dim


def memory_bytes(index_type: str, n: int, dim: int) -> int:
    """RAM a FAISS index of n fragments of dim takes while searching (estimate, from FAISS's layout:
    float32 vectors, int64 ids in inverted lists, HNSW links, IVF centroids, PQ codes)."""
    if index_type == "flat":
        return 0  # no first-stage index: the search scans the memory-mapped int8 vectors
    if index_type == "pq":
        return n * pq_layout(dim, PQ_FS_DIMS)[0] // 2 + 16 * dim * 4
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
    """choose_type, and past the memory budget (bytes) IVF-PQ: one byte of code per 16 dims plus
    an id. The rescoring in query.py reads the stored vectors, so PQ only lowers first-stage
    recall (benchmarks/scale.py measures it). An explicit type is kept."""
    chosen = choose_type(index_type, n)
    if (index_type == "auto" and max_memory is not None and n >= PQ_MIN_TRAIN
            and memory_bytes(chosen, n, dim) > max_memory):
        return "ivfpq"
    return chosen


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists, a power of two, at least 1 and at most n / 39 (k-means needs points)."""
    want = 1 << max(0, round(np.log2(max(1.0, np.sqrt(n)))))
    return max(1, min(want, n // 39))


def make_faiss(vectors: Any, index_type: str, chunk: int = 65536) -> tuple[faiss.Index | None, str, dict[str, Any]]:
    """An inner-product index over `vectors` (N, h) (any float dtype, or arrays.Dequantized), and
    its parameters; None for "flat" (the search scans the stored vectors). Deterministic: the
    k-means and PQ training samples are fixed functions of N."""
    n, h = vectors.shape
    params: dict[str, Any] = {}
    if n == 0:
        index_type = "flat"  # nothing to train on; an empty index searches the same
    if index_type in ("pq", "ivfpq") and n < PQ_MIN_TRAIN:
        index_type = "flat" if index_type == "pq" else "ivf"  # too few fragments to train PQ codes
    if index_type == "flat":
        return None, "flat", params
    if index_type == "pq":
        # Flat fast-scan PQ codes, scanned whole per query word (SIMD): no lists to miss.
        m, _ = pq_layout(h, PQ_FS_DIMS)
        index = faiss.index_factory(h, f"PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)
        rows = _train_rows(n, -(-PQ_MIN_TRAIN // IVF_TRAIN_PER_LIST))
        index.pq.cp.seed = 1234
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        params.update(pq_m=m, pq_bits=4)
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
    _add(index, vectors, params, chunk)
    return index, index_type, params


def _add(index: faiss.Index, vectors: Any, params: dict[str, Any], chunk: int) -> None:
    for i in range(0, len(vectors), chunk):
        part = vectors[i:i + chunk]
        if "center" in params:
            part = part.astype(np.float32) - np.asarray(params["center"], np.float32)
        index.add(_augment(part, params["max_norm"]) if "max_norm" in params else
                  np.ascontiguousarray(part, dtype=np.float32))


def make_item_faiss(vectors: Any) -> faiss.Index:
    """The first stage of the per-photo shared part (a hybrid model's global term, one vector a
    photo): PQ codes, one byte per 16 dims, scanned whole (one query vector); 4-bit scalar codes
    when there are too few photos to train PQ."""
    n, h = vectors.shape
    if n >= PQ_MIN_TRAIN:
        index = faiss.IndexPQ(h, pq_layout(h)[0], 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = 1234
        index.train(np.ascontiguousarray(vectors[_train_rows(n, -(-PQ_MIN_TRAIN // IVF_TRAIN_PER_LIST))],
                                         dtype=np.float32))
    else:
        index = faiss.IndexScalarQuantizer(h, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(vectors[:], dtype=np.float32))
    _add(index, vectors, {}, 65536)
    return index


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
