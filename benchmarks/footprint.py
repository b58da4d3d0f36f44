"""What a real photo index costs and how close its search stays to exact scoring: an index of
Flickr8k photos built by the real build code (index.build_photos) from the evaluation cache's
CNN features (so no CNN runs; the features are the cache's float16 copies), then

- bytes on disk a photo, per file;
- what a warm search keeps in memory a photo: the first stage (FAISS files, read whole), the item
  table, and the region concepts a bridged word scans (memory-mapped);
- recall@10 of `two_stage` (what `vsa search --no-bridge` runs) against exact S_kl of every photo
  from the model's float32 vectors, over dev captions.

    .venv/bin/python benchmarks/footprint.py --split test                  # the 1,000 test photos
    .venv/bin/python benchmarks/footprint.py --split dev,test --queries 500
    .venv/bin/python benchmarks/footprint.py --split test --disk-only      # disk only (any index format)
    .venv/bin/python benchmarks/footprint.py --split all --features A --features B   # every photo in A or B

Queries are dev captions (choices are made on dev); the photos are the named splits' photos
present in the feature store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsa_search import index as ix  # noqa: E402
from vsa_search.core import paths  # noqa: E402
from vsa_search.data.datasets import load_flickr8k  # noqa: E402
from vsa_search.index import photos as photo_builds  # noqa: E402
from vsa_search.models.alignment import load_align  # noqa: E402
from vsa_search.vision.features import FeatureStore  # noqa: E402
from vsa_search.vision.regions import RegionFeatures  # noqa: E402


class Stores:
    """Several feature stores read as one (the first that holds a photo answers)."""

    def __init__(self, paths_: list[Path]):
        self.stores = [FeatureStore(p, readonly=True) for p in paths_]

    def __contains__(self, image_id: str) -> bool:
        return any(image_id in s for s in self.stores)

    def get(self, image_id: str):
        return next(s for s in self.stores if image_id in s).get(image_id)

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.stores:
            s.close()


def build_from_cache(link: Path, model, store: Stores, photo_dir: Path, imagenet: Stores | None = None) -> float:
    """index.build_photos over photo_dir, its CNN step answered from the feature store (and, for a model of a
    fine-tuned CNN top, ImageNet's features of the same regions from `imagenet`: the concepts' input)."""
    def cached(paths_, encoder, **kw):
        for p in paths_:
            f = store.get(Path(p).name)
            with Image.open(p) as im:  # the photo's metadata comes from the build's decode (photometa)
                im.load()
                photo = SimpleNamespace(image=im.convert("RGB"), size=im.size, exif=im.getexif())
            base = imagenet.get(Path(p).name).features if imagenet is not None else None
            yield p, RegionFeatures(f.boxes, f.features, photo, base)  # type: ignore[arg-type]

    photo_builds.extract = cached  # the one step that would run the CNN
    t0 = time.perf_counter()
    ix.build_photos([photo_dir], model, link, encoder=object(), batch_size=64)
    return time.perf_counter() - t0


def disk(gen: Path, n: int) -> dict[str, float]:
    out = {f.name if f.parent == gen else f"{f.parent.name}/{f.name}": f.stat().st_size / n
           for f in sorted(gen.rglob("*")) if f.is_file()}
    out["total"] = sum(out.values())
    return out


def resident(gen: Path, n: int) -> dict[str, float]:
    names = ["regions.faiss", "shared.faiss", "items.npy", "concept_ids.npy", "concept_probs.npy"]
    out = {name: (gen / name).stat().st_size / n for name in names if (gen / name).is_file()}
    out["total"] = sum(out.values())
    return out


def exact_top(model, store, ids: list[str], offsets: np.ndarray, qs: list[np.ndarray], k: int = 10):
    """Each query's top k by S_kl from the model's float32 vectors, less the index's offsets."""
    hd = model.config.hidden
    scores = np.zeros((len(qs), len(ids)), np.float32)
    qa = np.concatenate([q[:, :hd] for q in qs])
    qg = np.stack([q[:, hd:].sum(0) for q in qs])
    sizes = [len(q) for q in qs]
    for a in range(0, len(ids), 200):
        with torch.inference_mode():
            feats = [torch.from_numpy(store.get(i).features) for i in ids[a:a + 200]]
            v = [model.model.encode_regions(f[None])[0].numpy() for f in feats]
        for j, x in enumerate(v):
            best = (qa @ x[:, :hd].T).max(1)
            scores[:, a + j] = np.add.reduceat(best, np.cumsum([0] + sizes[:-1])) + qg @ x[0, hd:]
    scores -= offsets[None]
    return [np.argsort(-s, kind="stable")[:k] for s in scores]


def stored_top(x, qs: list[np.ndarray], k: int = 10, chunk: int = 2000) -> list[np.ndarray]:
    """Each query's top k by exact scoring of every photo's stored (int8) vectors (what
    query.exhaustive gives), all queries in one pass over the index."""
    allq = np.concatenate(qs)
    starts = np.cumsum([0] + [len(q) for q in qs[:-1]])
    scores = np.empty((len(qs), len(x)), np.float32)
    for lo in range(0, len(x), chunk):
        items = np.arange(lo, min(lo + chunk, len(x)))
        _, best = x.scores(allq, items)  # (ΣT, C): each word's best dot per photo
        scores[:, items] = np.add.reduceat(best, starts, axis=0) - x.offsets[items]
    return [np.argsort(-s, kind="stable")[:k] for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test", help="comma-separated Flickr8k splits whose photos to index "
                                                    "(all: every photo of the data set)")
    ap.add_argument("--features", type=Path, action="append", help="feature store, repeatable (default: the "
                                                                   "evaluation cache)")
    ap.add_argument("--imagenet-features", type=Path, action="append",
                    help="for a model of a fine-tuned CNN top: stores of ImageNet's features of the same photos, "
                         "the concepts' input (default: the evaluation cache)")
    ap.add_argument("--queries", type=int, default=500, help="dev captions to search with")
    ap.add_argument("--photos", type=int, default=0, help="only the first N photos of the splits (0: all)")
    ap.add_argument("--disk-only", action="store_true", help="build and report disk bytes only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = load_align(paths.find_model("align"))
    feats = a.features or [paths.cache_dir() / "features" / model.region_config.extractor_id()]
    base = (a.imagenet_features or [paths.cache_dir() / "features" / model.region_config.imagenet().extractor_id()]
            if model.region_config.top else [])
    ds = load_flickr8k()
    with Stores(feats) as store, Stores(base) as imagenet, tempfile.TemporaryDirectory() as tmp:
        recs = [r for s in a.split.split(",") for r in (ds.records if s == "all" else ds.present(s))
                if r.image_id in store][: a.photos or None]
        photo_dir = Path(tmp) / "photos"
        photo_dir.mkdir()
        for r in recs:
            os.symlink(r.path, photo_dir / r.image_id)
        link = Path(tmp) / "idx"
        seconds = build_from_cache(link, model, store, photo_dir, imagenet if base else None)
        gen = ix.Location(link).current()
        report = {"photos": len(recs), "dim": model.model.out_dim, "build_seconds": round(seconds, 1),
                  "disk": disk(gen, len(recs))}
        if not a.disk_only:
            report.update(search_report(link, gen, model, store, ds, a.queries))
    if a.json:
        print(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        print(f"{k}: " + (", ".join(f"{n} {b:,.0f}" for n, b in v.items()) if isinstance(v, dict) else f"{v}"))


def search_report(link: Path, gen: Path, model, store, ds, n_queries: int) -> dict:
    from vsa_search.index import query
    from vsa_search.models.encode import query_vectors

    caps = [s for r in ds.present("dev") for s in r.sentences][:: 5][:n_queries]
    qs = [query_vectors(model, c)[2] for c in caps]
    with ix.open_index(link) as x:
        ids = [Path(r["key"]).name for r in x.records()]
        got, times = [], []
        for q in qs:
            t = time.perf_counter()
            got.append(query.two_stage(x, q, 10).items)
            times.append(time.perf_counter() - t)
        stored = stored_top(x, qs)
        offsets = x.offsets.copy()
        index_type = x.index_type
    want = exact_top(model, store, ids, offsets, qs)

    def recall(g, w):
        return round(float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(g, w)])), 4)

    return {"index_type": index_type, "resident": resident(gen, len(ids)), "queries": len(qs),
            "recall@10 vs exact (float32)": recall(got, want),
            "recall@10 vs exhaustive (stored int8)": recall(got, stored),
            "exhaustive (stored int8) vs exact (float32)": recall(stored, want),
            "query p50 ms": round(float(np.median(times)) * 1000, 1)}


if __name__ == "__main__":
    main()
