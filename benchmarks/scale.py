"""The photo index at scale, on synthetic region vectors: build time, memory per photo, p50/p95
latency and recall@10 against exact search, for the index types `vsa index build` can choose
(index.make_faiss, the code the product runs), in one run.

    .venv/bin/python benchmarks/scale.py            # 1M x 512-d (flat, ivf, ivfpq), 10M x 128-d (flat, ivfpq)
                                                    # (10M flat needs --max-ram 11: 5 GB, doubling while adding)
    .venv/bin/python benchmarks/scale.py --quick    # 50k x 512-d and 200k x 128-d, a minute or two

Vectors: `--dim` (default 512, the default model's joint space) float16, 20 regions per photo,
drawn around 4,096 cluster centres (real region vectors cluster; uniform noise would be the
worst case for any IVF). They are generated chunk by chunk into a float16 file under --workdir
(10M x 512 is 10 GB on disk, never in RAM at once); the exact top 10 of every query comes from
a chunked scan of that file. Queries are word-like vectors: a centre plus noise. The 10M run is
at `--dim-10m` (default 128): on 2 shared cores a 512-d IVF over 4,096 lists takes most of an hour
to build (the coarse assignment is 10M x 4,096 dot products of 513 dims); the bytes per region
of any dim follow from index.memory_bytes, checked here at 1M x 512.

Latency: one query vector, top 10, one thread (as `vsa search` runs each word). recall@10:
the FAISS top 10 against the exact top 10; "re-ranked": the FAISS top 256 (search.PER_WORD_APPROX)
re-scored exactly from the stored vectors, as index/query.py's second stage does. RAM is FAISS's own estimate
(index.memory_bytes) checked against the written index file; disk per photo adds the LMDB
record that every index keeps (float16 vectors, boxes, ~200 bytes of JSON).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy's BLAS too: the machine is shared (see --threads)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from vsa_search import index as ix  # noqa: E402
from vsa_search.index import faiss_types  # noqa: E402
from vsa_search.index.query import PER_WORD_APPROX  # noqa: E402

REGIONS_PER_PHOTO = 20
CENTRES = 4096
CHUNK = 1 << 17


def make_vectors(path: Path, n: int, dim: int, seed: int = 0) -> tuple[np.memmap, np.ndarray]:
    """n clustered float16 vectors in a file (written in chunks), and the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32) / np.sqrt(dim)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        x = centres[rng.integers(0, CENTRES, b - a)]
        x += rng.standard_normal((b - a, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
        mm[a:b] = x
    mm.flush()
    return np.load(path, mmap_mode="r"), centres


def make_queries(centres: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    x = centres[rng.integers(0, CENTRES, q)] + rng.standard_normal((q, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
    return x.astype(np.float32)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) ids of the largest inner products, by a chunked scan."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for a in range(0, len(vectors), CHUNK):
        s = queries @ np.asarray(vectors[a:a + CHUNK], np.float32).T  # (Q, c)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # the chunk's own top k first: small merges
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + a], 1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return np.take_along_axis(best_i, np.argsort(-best_s, 1), 1)


def search(index: faiss.Index, params: dict, q: np.ndarray, k: int) -> np.ndarray:
    """As FragmentIndex._search: the L2-reduced types take the query padded with zeros."""
    if "max_norm" in params:
        q = np.hstack([q, np.zeros((len(q), index.d - q.shape[1]), np.float32)])
    return index.search(np.ascontiguousarray(q), k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(n: int, dim: int, types: list[str], queries: int, workdir: Path, threads: int,
        max_ram: float = float("inf"), more_probes: tuple[int, ...] = ()) -> list[dict]:
    t = time.perf_counter()
    vecs, centres = make_vectors(workdir / f"vectors_{n}_{dim}.npy", n, dim)
    q = make_queries(centres, queries)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    truth = exact_top(vecs, q, 10)
    exact_s = time.perf_counter() - t
    print(f"{n:,} regions x {dim}: generated in {gen_s:.0f}s, exact top-10 of {queries} queries by a scan in "
          f"{exact_s:.0f}s", flush=True)
    rows = []
    photos = n // REGIONS_PER_PHOTO
    for kind in types:
        if ix.memory_bytes(kind, n, dim) * 2 > max_ram:  # adding grows FAISS's arrays by doubling: up to 2x
            print(f"  {kind:6s} skipped: needs ~{ix.memory_bytes(kind, n, dim) / 1e9:.1f} GB (up to twice that while "
                  f"adding), over --max-ram {max_ram / 1e9:.0f} GB", flush=True)
            continue
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        index, chosen, params = faiss_types.make_faiss(vecs, kind)
        if index is None:  # "flat" has no first stage (search scans the stored vectors): FAISS's flat scan stands in
            index = faiss.IndexFlatIP(dim)
            index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        build_s = time.perf_counter() - t
        f = workdir / f"{chosen}.faiss"
        faiss.write_index(index, str(f))
        file_bytes = f.stat().st_size
        f.unlink()
        faiss.omp_set_num_threads(1)
        probes = [params["nprobe"], *(p for p in more_probes if p != params["nprobe"])] if "nprobe" in params else [0]
        for nprobe in probes:
            if nprobe:
                index.nprobe = nprobe
            search(index, params, q[:5], 10)  # warm-up
            lat = []
            found = np.zeros((len(q), 10), np.int64)
            for i in range(len(q)):
                t = time.perf_counter()
                found[i] = search(index, params, q[i:i + 1], 10)[0]
                lat.append(time.perf_counter() - t)
            deep = search(index, params, q, PER_WORD_APPROX)  # what index/query.py's second stage re-scores exactly
            reranked = []
            for i in range(len(q)):
                ids = np.sort(deep[i][deep[i] >= 0])
                reranked.append(ids[np.argsort(-(np.asarray(vecs[ids], np.float32) @ q[i]))][:10])
            lmdb_per_photo = REGIONS_PER_PHOTO * (dim * 2 + 16) + 200
            rows.append({"regions": n, "dim": dim, "photos": photos, "type": chosen,
                         "nlist": params.get("nlist", ""), "nprobe": nprobe or "", "build_s": build_s,
                         "ram_bytes": ix.memory_bytes(chosen, n, dim), "file_bytes": file_bytes,
                         "ram_per_photo": file_bytes / photos, "disk_per_photo": file_bytes / photos + lmdb_per_photo,
                         "p50_ms": 1000 * float(np.percentile(lat, 50)),
                         "p95_ms": 1000 * float(np.percentile(lat, 95)),
                         "recall10": recall(found, truth), "recall10_rr": recall(np.array(reranked), truth)})
            r = rows[-1]
            print(f"  {chosen:6s} nprobe {nprobe or '-':>3} built in {build_s:7.1f}s  "
                  f"RAM {r['file_bytes'] / 1e9:6.2f} GB "
                  f"({r['ram_per_photo']:,.0f} B/photo)  p50 {r['p50_ms']:.2f} ms  p95 {r['p95_ms']:.2f} ms  "
                  f"recall@10 {r['recall10']:.3f} (re-ranked {r['recall10_rr']:.3f})  peak RSS {rss_gb():.1f} GB",
                  flush=True)
        del index
    del vecs
    (workdir / f"vectors_{n}_{dim}.npy").unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50k and 200k regions (a minute or two)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dim-10m", type=int, default=128, help="dimension of the 10M (and quick 200k) run")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1,
                    help="FAISS threads for building (1: an OpenMP team on shared, loaded cores mostly spins)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the vector files go (default: a temp dir)")
    ap.add_argument("--max-ram", type=float, default=8.0, help="GB: skip index types that would need more")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[32],
                    help="IVF lists probed, measured besides the product's default (index.IVF_NPROBE)")
    ap.add_argument("--json", type=Path, help="also write the rows here (`make results` renders docs/RESULTS.md)")
    args = ap.parse_args()
    plan = ([(50_000, args.dim, ["flat", "ivf", "ivfpq"]), (200_000, args.dim_10m, ["flat", "ivf", "ivfpq"])]
            if args.quick else
            [(1_000_000, args.dim, ["flat", "ivf", "ivfpq"]), (10_000_000, args.dim_10m, ["flat", "ivfpq"])])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n, dim, types in plan:
            rows += run(n, dim, types, args.queries, Path(tmp), args.threads, args.max_ram * 1e9, tuple(args.nprobe))
    print(f"\nfloat16 region vectors, {REGIONS_PER_PHOTO} regions per photo, built with {args.threads} "
          "thread(s); latency: 1 query vector, top 10, 1 thread; recall@10 vs the exact top 10 (re-ranked: FAISS "
          f"top {PER_WORD_APPROX} re-scored exactly, as index/query.py does); 'vs flat': p50 speed-up over exact flat "
          "search of the same size and dim")
    head = (f"| {'regions':>10} | {'dim':>4} | {'photos':>9} | {'type':6} | {'nlist':>5} | {'nprobe':>6} | "
            f"{'build s':>8} | "
            f"{'RAM GB':>7} | "
            f"{'RAM B/photo':>11} | {'disk B/photo':>12} | {'p50 ms':>7} | {'p95 ms':>7} | {'recall@10':>9} | "
            f"{'re-ranked':>9} | {'vs flat':>7} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['regions']:>10,} | {r['dim']:>4} | {r['photos']:>9,} | {r['type']:6} | {r['nlist']!s:>5} | "
              f"{r['nprobe']!s:>6} | "
              f"{r['build_s']:>8.1f} | "
              f"{r['file_bytes'] / 1e9:>7.2f} | {r['ram_per_photo']:>11,.0f} | {r['disk_per_photo']:>12,.0f} | "
              f"{r['p50_ms']:>7.2f} | {r['p95_ms']:>7.2f} | {r['recall10']:>9.3f} | {r['recall10_rr']:>9.3f} | "
              f"{_vs_flat(r, rows):>7} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "queries": args.queries, "rows": rows}, indent=1)
                             + "\n")


def _vs_flat(r: dict, rows: list[dict]) -> str:
    flat = [f for f in rows if f["type"] == "flat" and (f["regions"], f["dim"]) == (r["regions"], r["dim"])]
    return f"{flat[0]['p50_ms'] / r['p50_ms']:.1f}x" if flat else "-"


if __name__ == "__main__":
    main()
