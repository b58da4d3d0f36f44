"""Photo search at scale, on synthetic region sets: build time, bytes per region, query
p50/p95, and recall@10 of the two-stage search (FAISS candidates, exact S_kl re-rank) against
the exhaustive exact S_kl over every photo, measured in the same run (the "exhaustive" row is
the baseline the speed-ups are relative to). "cpu50" is the median CPU time of a query: the
search runs on one thread, so on a machine shared with other work it is the latency an idle
core would give, while p50/p95 are wall-clock (what the shared machine gave).

    .venv/bin/python benchmarks/search.py            # 10k, 100k and 1M regions (~15 min, ~7 GB RAM)
    .venv/bin/python benchmarks/search.py --quick    # 10k and 100k only

With `--json FILE` it writes the rows that `make results` renders as docs/RESULTS.md's table.

Synthetic data that behaves like region and word vectors: C "concepts" (unit directions);
every photo shows a few concepts, each of its 20 regions shows one of them (region 0, the full
image, a blend) with a random strength, plus noise and a shared "background" direction that
function words ("a", "the", "on") also point along. A query is the concepts of one photo
(its "caption") plus function words, each word vector noisy. Goals: recall@10 >= 0.99
and p50 <= 50 ms at 1M regions on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsa_search import index as ix  # noqa: E402
from vsa_search.index import faiss_types, layout, query  # noqa: E402

REGIONS_PER_PHOTO = 20


def make_photos(n_regions: int, dim: int, concepts: np.ndarray, background: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Region vectors (P, 20, dim) float16 and each photo's concepts (P, 4)."""
    rng = np.random.default_rng(seed)
    p = n_regions // REGIONS_PER_PHOTO
    c = len(concepts)
    out = np.empty((p, REGIONS_PER_PHOTO, dim), np.float16)
    shows = np.empty((p, 4), np.int64)
    for lo in range(0, p, 2048):  # chunks keep the float32 temporaries small
        m = min(2048, p - lo)
        k = rng.integers(2, 5, m)  # 2..4 concepts per photo
        cs = rng.integers(0, c, (m, 4))
        shows[lo:lo + m] = np.where(np.arange(4)[None] < k[:, None], cs, -1)
        pick = rng.integers(0, 4, (m, REGIONS_PER_PHOTO)) % k[:, None]  # which concept a region shows
        strength = rng.uniform(0.3, 1.2, (m, REGIONS_PER_PHOTO, 1)).astype(np.float32)
        v = strength * concepts[np.take_along_axis(cs, pick, 1)]  # (m, 20, dim)
        v[:, 0] = concepts[cs].mean(1) * 1.2  # the full image blends all of its concepts
        v += rng.uniform(0.2, 0.8, (m, REGIONS_PER_PHOTO, 1)).astype(np.float32) * background
        v += rng.normal(0, 0.6 / np.sqrt(dim), (m, REGIONS_PER_PHOTO, dim)).astype(np.float32)
        out[lo:lo + m] = v
    return out, shows


def make_queries(n: int, shows: np.ndarray, concepts: np.ndarray, background: np.ndarray,
                 seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dim = concepts.shape[1]
    queries = []
    for _ in range(n):
        own = shows[rng.integers(len(shows))]
        own = own[own >= 0]
        words = [concepts[j] for j in own[: rng.integers(1, len(own) + 1)]]
        words += [background * rng.uniform(0.5, 1.0)] * int(rng.integers(1, 4))  # "a", "on", "the"
        q = np.stack(words) + rng.normal(0, 0.4 / np.sqrt(dim), (len(words), dim))
        queries.append(q.astype(np.float32))
    return queries


def exhaustive_top(vectors: np.ndarray, q: np.ndarray, k: int, chunk: int = 8192) -> np.ndarray:
    """Exact S_kl of q against every photo (numpy, no index): the top k photo ids."""
    scores = np.empty(len(vectors), np.float32)
    for lo in range(0, len(vectors), chunk):
        v = vectors[lo:lo + chunk].astype(np.float32)  # (m, 20, dim)
        scores[lo:lo + chunk] = np.einsum("mrd,td->mtr", v, q).max(-1).sum(-1)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def bench(n_regions: int, types: list[str], dim: int, n_queries: int, k: int, per_words: list[int | None],
          nprobes: list[int], workdir: Path, rows: list[dict]) -> None:
    rng = np.random.default_rng(0)
    concepts = rng.normal(0, 1, (max(200, n_regions // 500), dim)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    background = rng.normal(0, 1, dim).astype(np.float32)
    background /= np.linalg.norm(background)
    t = time.perf_counter()
    vectors, shows = make_photos(n_regions, dim, concepts, background, seed=1)
    print(f"[{n_regions:,} regions] generated {len(vectors):,} photos in {time.perf_counter() - t:.1f}s", flush=True)
    queries = make_queries(n_queries, shows, concepts, background, seed=2)

    # Baseline: exhaustive exact S_kl in numpy, the reference for recall and speed.
    truth, times, cpu = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        truth.append(exhaustive_top(vectors, q, k))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    base_p50 = float(np.median(times))
    rows.append({"regions": n_regions, "type": "exhaustive", "build_s": 0.0, "bytes": vectors[0].nbytes / 20,
                 "p50": base_p50, "p95": float(np.percentile(times, 95)), "cpu50": float(np.median(cpu)),
                 "recall": 1.0, "proven": 1.0, "cands": float(len(vectors)), "setting": "numpy"})
    _print_row(rows[-1], base_p50)

    for kind in types:
        loc = ix.Location(workdir / f"bench-{n_regions}-{kind}")
        items = (ix.Item(f"p{i:08d}.jpg", {"path": f"p{i:08d}.jpg"}, vectors[i],
                         np.zeros((REGIONS_PER_PHOTO, 4), np.int32)) for i in range(len(vectors)))
        t = time.perf_counter()
        gen = ix.write_generation(loc, "photos", items, dim, {"fingerprint": "synthetic", "path": "-"}, kind)
        build = time.perf_counter() - t
        size = layout.disk_size(gen)
        with ix.FragmentIndex(loc, "photos") as x:
            query.two_stage(x, queries[0], k)  # warm-up (page cache, FAISS threads)
            for nprobe in nprobes if kind == "ivf" else [0]:
                if nprobe:
                    x.faiss.nprobe = nprobe
                for per_word in per_words:
                    times, cpu, recalls, proven, cands = [], [], [], [], []
                    for q, want in zip(queries, truth):
                        t, c = time.perf_counter(), time.process_time()
                        # A given depth is fixed; the default is the product's (adaptive on flat).
                        r = query.two_stage(x, q, k, per_word, None if per_word else query.MAX_PER_WORD)
                        times.append(time.perf_counter() - t)
                        cpu.append(time.process_time() - c)
                        recalls.append(len(set(r.items.tolist()) & set(want.tolist())) / k)
                        proven.append(r.exact)
                        cands.append(r.candidates)
                    setting = f"N={per_word}" if per_word else "N=default"
                    rows.append({"regions": n_regions, "type": kind, "build_s": build, "bytes": size / n_regions,
                                 "p50": float(np.median(times)), "p95": float(np.percentile(times, 95)),
                                 "cpu50": float(np.median(cpu)),
                                 "recall": float(np.mean(recalls)), "proven": float(np.mean(proven)),
                                 "cands": float(np.mean(cands)),
                                 "setting": setting + (f" nprobe={x.faiss.nprobe}" if kind == "ivf" else "")})
                    _print_row(rows[-1], base_p50)
        shutil.rmtree(gen, ignore_errors=True)
        loc.link.unlink(missing_ok=True)
    del vectors


HEADER = (f"{'regions':>9} {'index':>10} {'first stage':>22} {'build s':>8} {'B/region':>9} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'cpu50 ms':>8} {'x faster':>9} {'recall@10':>9} {'proven':>7} {'cands':>8}")


def _print_row(r: dict, base_p50: float) -> None:
    print(f"{r['regions']:>9,} {r['type']:>10} {r['setting']:>22} {r['build_s']:>8.1f} {r['bytes']:>9.0f} "
          f"{1000 * r['p50']:>8.1f} {1000 * r['p95']:>8.1f} {1000 * r['cpu50']:>8.1f} {base_p50 / r['p50']:>9.1f} "
          f"{r['recall']:>9.3f} {r['proven']:>7.2f} {r['cands']:>8.0f}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (argv as on the command line); prints the tables, returns the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k regions only")
    ap.add_argument("--sizes", type=int, nargs="*", help="region counts (default 10k 100k 1M)")
    ap.add_argument("--types", nargs="*", help="index types at every size (default: flat, ivf, hnsw up to 100k; "
                                               "flat and ivf at 1M)")
    ap.add_argument("--dim", type=int, default=512, help="vector size (the model's hidden size)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--per-word", type=int, nargs="*", default=[0],
                    help="fixed first-stage depths to compare (0: the product's default)")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[faiss_types.IVF_NPROBE], help="IVF lists probed")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the rows here (`make results` renders docs/RESULTS.md)")
    a = ap.parse_args(argv)
    sizes = a.sizes or ([10_000, 100_000] if a.quick else [10_000, 100_000, 1_000_000])
    workdir = Path(tempfile.mkdtemp(prefix="vsa-bench-", dir=a.workdir))
    import faiss

    print(f"dim {a.dim}, {REGIONS_PER_PHOTO} regions per photo, {a.queries} queries, k={a.k}, "
          f"{os.cpu_count()} cores, FAISS {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"default first stage: flat every region (exact), ivf/hnsw {query.PER_WORD_APPROX} per word")
    print(HEADER)
    rows: list[dict] = []
    try:
        for n in sizes:
            types = a.types or (["flat", "ivf", "hnsw"] if n <= 100_000 else ["flat", "ivf"])
            bench(n, types, a.dim, a.queries, a.k, [p or None for p in a.per_word], a.nprobe, workdir, rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary")
    print(HEADER)
    base = {r["regions"]: r["p50"] for r in rows if r["type"] == "exhaustive"}
    for r in rows:
        _print_row(r, base[r["regions"]])
    if a.json:
        default = ("N=default", f"N=default nprobe={faiss_types.IVF_NPROBE}")
        a.json.write_text(json.dumps({"dim": a.dim, "queries": a.queries, "k": a.k, "rows": [
            {**r, "auto": faiss_types.choose_type("auto", r["regions"]) == r["type"],
             "default_setting": r["setting"] in default} for r in rows]}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
