"""Recall@10 of search on a real photo index, per FAISS index type. The index's own stored region
vectors and querybank offsets are written again as flat, ivf and hnsw generations (no photo is
read), then queried with Flickr8k captions of its photos; each result is compared with the
exhaustive exact S_kl over every photo (query.exhaustive), the baseline of the same run.
Flat is exact by construction; the other rows show what FAISS's first stage misses on the
shipped model's vectors, whose regions of one photo share a large global part.

    .venv/bin/python benchmarks/index_recall.py --index dev1k --queries 200
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsa_search import index as ix  # noqa: E402
from vsa_search.data.datasets import load_flickr8k  # noqa: E402
from vsa_search.index import query  # noqa: E402
from vsa_search.models.encode import query_vectors  # noqa: E402

# (type, nprobe, first-stage regions per word): the product's defaults (flat: every region), then
# fixed depths (flat with a per-word cut is what two_stage does when given one).
SETTINGS = [("flat", 0, None), ("flat", 0, 1024), ("ivf", 8, None), ("ivf", 16, 1024), ("hnsw", 0, None),
            ("hnsw", 0, 1024)]


def items(x: ix.FragmentIndex) -> Iterator[ix.Item]:
    """The index's items as stored (what `vsa index merge` copies)."""
    recs = sorted(x.records(), key=lambda r: r["first"])
    for i, rec in enumerate(recs):
        info = {k: v for k, v in rec.items() if k not in ("key", "first", "count")}
        yield ix.Item(rec["key"], info, x.vectors([i])[0], x.boxes(i), None, float(x.offsets[i]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="a photo index of Flickr8k photos (name or path)")
    ap.add_argument("--queries", type=int, default=200, help="captions of the index's photos, drawn with seed 0")
    ap.add_argument("-k", type=int, default=10)
    a = ap.parse_args()

    src = ix.open_index(a.index)
    model = query.model_for(src)
    names = {Path(r["key"]).name for r in src.records()}
    sentences = [s for r in load_flickr8k().records if r.image_id in names for s in r.sentences]
    texts = random.Random(0).sample(sentences, min(a.queries, len(sentences)))
    qs = [query_vectors(model, t)[2] for t in texts]
    print(f"{a.index}: {len(src)} photos, {src.fragments} regions, {src.dim}-d; {len(qs)} captions of its photos "
          f"as queries, k={a.k}", flush=True)
    truth = [query.exhaustive(src, q, a.k)[0] for q in qs]

    work = Path(tempfile.mkdtemp(prefix="vsa-recall-"))
    try:
        print(f"{'type':>6} {'nprobe':>6} {'per word':>8} {'build s':>8} {'p50 ms':>7} {'recall@10':>9}")
        built: dict[str, ix.FragmentIndex] = {}
        for kind, nprobe, per_word in SETTINGS:
            if kind not in built:
                loc = ix.Location(work / kind)
                t = time.perf_counter()
                ix.write_generation(loc, "photos", items(src), src.dim, src.manifest["model"], kind)
                build = time.perf_counter() - t
                built[kind] = ix.FragmentIndex(loc, "photos")
            x = built[kind]
            if nprobe:
                x.faiss.nprobe = nprobe
            times, recalls = [], []
            for q, want in zip(qs, truth):
                t = time.perf_counter()
                r = query.two_stage(x, q, a.k, per_word, None if per_word else query.MAX_PER_WORD)
                times.append(time.perf_counter() - t)
                recalls.append(len(set(r.items.tolist()) & set(want.tolist())) / len(want))
            print(f"{kind:>6} {nprobe or '-':>6} {per_word or 'default':>8} {build:>8.1f} "
                  f"{1000 * float(np.median(times)):>7.1f} {float(np.mean(recalls)):>9.3f}", flush=True)
        for x in built.values():
            x.close()
    finally:
        src.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
