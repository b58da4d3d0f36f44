"""A photo library at scale: an index of N photos (default 100,000) in the real layout, written by
the real writer (index.write_generation) with the shipped model's shape (20 regions a photo,
512-d region parts, a 1,024-d global part stored once a photo, querybank offsets, boxes and
concepts), from synthetic vectors. Reports disk, build time and peak memory, resident memory
of a searching process, warm and cold query latency (p50/p95) and recall@10 against exact
scoring, as a markdown table beside rclip's published figures.

    .venv/bin/python benchmarks/library.py                  # 100,000 photos (about 2 GB on disk)
    .venv/bin/python benchmarks/library.py --photos 2000    # smoke run

Synthetic data: C concepts, each a unit direction in the region space and one in the global
space; a photo shows 2-4 of them (each region one, plus noise; its global vector their blend).
A query is one photo's concepts as 8 word vectors (mean-pooled: each scaled by 1/8, as the
shipped model's). "Exact" is S_kl from the float32 vectors before they were stored, regenerated
from the same seeds; "cold" evicts the index's files from the page cache (posix_fadvise) and
opens the index anew before each query; "warm" queries an open index.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsa_search import index as ix  # noqa: E402
from vsa_search.index import layout, query  # noqa: E402
from vsa_search.vision.concepts import Concepts  # noqa: E402

REGIONS, PART, SHARED, WORDS, CONCEPTS, CHUNK = 20, 512, 1024, 8, 4096, 2000
RCLIP = ("rclip (published): one 512-d CLIP vector a photo; 3.7 s a query (0.5 s with ONNX); "
         "84,725 photos indexed in 15 h on a small NAS")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def concept_space(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal((CONCEPTS, PART))), _unit(rng.standard_normal((CONCEPTS, SHARED)))


def photo_chunk(lo: int, n: int, space: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Photos lo..lo+n: full vectors (n, 20, 1536) float32 and their concepts (n, 4), -1 padded.
    A function of lo alone, so the exact scores can regenerate them."""
    cp, cg = space
    rng = np.random.default_rng(1000 + lo)
    k = rng.integers(2, 5, n)
    cs = rng.integers(0, CONCEPTS, (n, 4))
    shows = np.where(np.arange(4)[None] < k[:, None], cs, -1)
    pick = np.take_along_axis(cs, rng.integers(0, 4, (n, REGIONS)) % k[:, None], 1)
    a = _unit(cp[pick] + rng.normal(0, 0.9 / np.sqrt(PART), (n, REGIONS, PART)) * np.sqrt(PART) * 0.05)
    a[:, 0] = _unit(cp[cs].mean(1))
    u = _unit(np.where(shows[..., None] >= 0, cg[cs], 0).sum(1) + rng.normal(0, 0.05, (n, SHARED)))
    return np.concatenate([a, np.broadcast_to(u[:, None], (n, REGIONS, SHARED))], axis=2), shows


def items(n_photos: int, space: tuple[np.ndarray, np.ndarray]):
    k = 10
    for lo in range(0, n_photos, CHUNK):
        m = min(CHUNK, n_photos - lo)
        v, _ = photo_chunk(lo, m, space)
        rng = np.random.default_rng(5000 + lo)
        for j in range(m):
            i = lo + j
            boxes = np.sort(rng.integers(0, 1000, (REGIONS, 2, 2)), axis=1).reshape(REGIONS, 4).astype(np.int32)
            con = Concepts(rng.integers(0, 1000, (REGIONS, k)).astype(np.uint16),
                           rng.dirichlet(np.ones(k), REGIONS).astype(np.float16)).to_bytes()
            info = {"path": f"/photos/{i:09d}.jpg", "size": 100_000, "mtime_ns": 0, "hash": f"{i:032x}"}
            yield ix.Item(f"/photos/{i:09d}.jpg", info, v[j], boxes, con, float(rng.normal(0, 0.02)))


def queries(n: int, n_photos: int, space: tuple[np.ndarray, np.ndarray], seed: int = 7) -> list[np.ndarray]:
    cp, cg = space
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = int(rng.integers(n_photos))
        lo = p // CHUNK * CHUNK
        _, shows = photo_chunk(lo, min(CHUNK, n_photos - lo), space)
        cs = shows[p - lo][shows[p - lo] >= 0]
        w = cs[rng.integers(0, len(cs), WORDS)]
        b = _unit(cp[w] + rng.normal(0, 0.04, (WORDS, PART)))
        g = _unit(cg[w] + rng.normal(0, 0.04, (WORDS, SHARED)))
        out.append(np.hstack([b, g]).astype(np.float32) / WORDS)
    return out


def exact_top(qs: list[np.ndarray], n_photos: int, space: tuple[np.ndarray, np.ndarray],
              offsets: np.ndarray, k: int = 10) -> list[np.ndarray]:
    """Each query's exact top k from the float32 vectors (regenerated chunk by chunk)."""
    scores = np.empty((len(qs), n_photos), np.float32)
    qa = np.concatenate([q[:, :PART] for q in qs])  # (Q*T, 512)
    qg = np.stack([q[:, PART:].sum(0) for q in qs])  # (Q, 1024)
    for lo in range(0, n_photos, CHUNK):
        m = min(CHUNK, n_photos - lo)
        v, _ = photo_chunk(lo, m, space)
        dots = (qa @ v[:, :, :PART].reshape(-1, PART).T).reshape(len(qs), WORDS, m, REGIONS)
        scores[:, lo:lo + m] = dots.max(-1).sum(1) + qg @ v[:, 0, PART:].T
    scores -= offsets[None]
    return [np.argsort(-s, kind="stable")[:k] for s in scores]


def stored_top(x: ix.FragmentIndex, qs: list[np.ndarray], k: int = 10, chunk: int = 5000) -> list[np.ndarray]:
    """Each query's top k by exact scoring of every photo's stored (int8) vectors, all queries in
    one pass over the index (FragmentIndex.scores gives each word's best per photo)."""
    allq = np.concatenate(qs)  # (Q*T, 1536)
    scores = np.empty((len(qs), len(x)), np.float32)
    for lo in range(0, len(x), chunk):
        items = np.arange(lo, min(lo + chunk, len(x)))
        _, best = x.scores(allq, items)  # (Q*T, C)
        scores[:, items] = best.reshape(len(qs), WORDS, -1).sum(1) - x.offsets[items]
    return [np.argsort(-s, kind="stable")[:k] for s in scores]


def evict(gen: Path) -> None:
    for f in gen.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rss() -> tuple[int, int]:
    """(private, file-backed) resident bytes of this process: mapped index pages a search read are
    file-backed page cache, which the kernel drops when memory is short; private memory it cannot."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                got[line.split(":")[0]] = int(line.split()[1]) * 1024
    return got.get("RssAnon", 0), got.get("RssFile", 0)


def build(link: Path, n_photos: int) -> dict:
    """Child process: write the index; its time and peak memory."""
    t0 = time.perf_counter()
    gen = ix.write_generation(ix.Location(link), "photos", items(n_photos, concept_space()), PART + SHARED,
                              {"fingerprint": "synthetic", "path": "-"}, "auto", extra={"roots": ["/photos"]},
                              shared_dim=SHARED)
    m = json.loads((gen / layout.MANIFEST).read_text())
    return {"seconds": time.perf_counter() - t0, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "index_type": m["index_type"], "bytes": layout.disk_size(gen),
            "files": {name: c["size"] for name, c in m["checksums"].items()}}


def search(link: Path, n_photos: int, n_queries: int, cold: int) -> dict:
    """Child process: warm and cold latency, resident memory, recall@10 against exact."""
    space = concept_space()
    qs = queries(n_queries, n_photos, space)
    base = rss()
    x = ix.open_index(link)
    opened = rss()
    got, warm = [], []
    for q in qs:
        t = time.perf_counter()
        r = query.two_stage(x, q, 10)
        warm.append(time.perf_counter() - t)
        got.append(r.items)
    resident = [b - a for a, b in zip(base, rss())]
    stored = stored_top(x, qs)
    offsets = x.offsets.copy()
    gen = x.dir
    x.close()
    cold_t = []
    for q in qs[:cold]:
        evict(gen)
        t = time.perf_counter()
        with ix.open_index(link) as y:
            query.two_stage(y, q, 10)
        cold_t.append(time.perf_counter() - t)
    want = exact_top(qs, n_photos, space, offsets)
    return {"warm": warm, "cold": cold_t, "resident": resident, "open_rss": [b - a for a, b in zip(base, opened)],
            "recall": _recall(got, want), "recall_stored": _recall(got, stored)}


def _recall(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / 10 for g, w in zip(got, want)]))


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_rows(n: int, b: dict, s: dict) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows of the table."""
    kib = 1024
    p = lambda xs, q: f"{np.percentile(np.array(xs) * 1000, q):,.1f}"  # noqa: E731
    rows = [
        ("photos", f"{n:,} (x 20 regions, 1,536-d; type `{b['index_type']}`)", ""),
        ("disk", f"{b['bytes'] / 2**20:,.1f} MiB", f"{b['bytes'] / n / kib:.1f} KiB a photo"),
        ("build", f"{b['seconds']:.1f} s", f"{n / b['seconds']:,.0f} photos/s, vectors given"),
        ("build peak memory", f"{b['peak_rss'] / 2**20:,.0f} MiB", "whole process"),
        ("search memory, private", f"{s['resident'][0] / 2**20:,.1f} MiB",
         f"{s['resident'][0] / n / kib:.2f} KiB a photo, after {len(s['warm'])} queries (first stage, tables)"),
        ("search memory, mapped pages read", f"{s['resident'][1] / 2**20:,.1f} MiB",
         f"{s['resident'][1] / n / kib:.2f} KiB a photo (rescored photos' rows; page cache, reclaimable)"),
        ("warm query p50 / p95", f"{p(s['warm'], 50)} / {p(s['warm'], 95)} ms", "open index, one thread"),
        ("cold query p50 / p95", f"{p(s['cold'], 50)} / {p(s['cold'], 95)} ms",
         "files evicted from the page cache; open + first query"),
        ("recall@10 vs exact", f"{s['recall']:.3f}", "exact: S_kl from the float32 vectors"),
        ("recall@10 vs exhaustive", f"{s['recall_stored']:.3f}", "every photo scored from the stored int8 vectors"),
        ("rclip, for reference", "3,700 ms a query (500 ms with ONNX)", "84,725 photos in 15 h; 512-d, ~2 KiB a photo"),
    ]
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measure | value | note |", "|---|---|---|"] + [f"| {a} | {v} | {c} |" for a, v, c in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cold", type=int, default=10, help="cold queries (each reopens the index)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the table's rows here (`make results` renders "
                                              "docs/RESULTS.md)")
    ap.add_argument("--child", choices=["build", "search"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        link = a.dir / "library"
        got = build(link, a.photos) if a.child == "build" else search(link, a.photos, a.queries, a.cold)
        print(json.dumps(got))
        return
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        common = ["--photos", str(a.photos), "--dir", tmp]
        b = child(["--child", "build", *common])
        s = child(["--child", "search", *common, "--queries", str(a.queries), "--cold", str(a.cold)])
    rows = table_rows(a.photos, b, s)
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps({"photos": a.photos, "queries": a.queries, "cold": a.cold,
                                      "rows": [list(r) for r in rows]}, indent=1) + "\n")
    print(f"\n{RCLIP}.")


if __name__ == "__main__":
    main()
