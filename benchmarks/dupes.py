"""Near-duplicate finding (`vsa dupes`) measured on a built set: Flickr8k dev and train photos (never
test), each with five transformed copies (JPEG quality 40, half size, a 10% crop, a 90-degree turn,
brighter or darker), among distinct photos that have no copy. The set is indexed with the shipped
model and grouped; the table gives pairwise precision and recall per transformation.

    .venv/bin/python benchmarks/dupes.py [--photos 200] [--distinct 100] [--keep DIR] [--sweep]

--keep DIR keeps (and on a second run reuses) the set and its index; --sweep prints the table for a
range of thresholds (how the default, vsa_search.index.dupes.DEFAULT_THRESHOLD, was chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageEnhance

from vsa_search.core import paths
from vsa_search.index import build, dupes

TRANSFORMS = ("jpeg40", "half", "crop10", "rot90", "bright")
# The one pair of identical files in Flickr8k (its README): never two "distinct" photos.
SAME_FILE = {"2851198725_37b6027625.jpg", "3050606344_af711c726c.jpg"}


def transform(im: Image.Image, name: str, rng: random.Random) -> tuple[Image.Image, int]:
    """The copy and the JPEG quality to save it at."""
    w, h = im.size
    if name == "jpeg40":
        return im, 40
    if name == "half":
        return im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 90
    if name == "crop10":  # 10% of each side's length cut away, split at random between its two ends
        left, top = rng.uniform(0, 0.1) * w, rng.uniform(0, 0.1) * h
        return im.crop((round(left), round(top), round(left + 0.9 * w), round(top + 0.9 * h))), 90
    if name == "rot90":
        return im.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])), 90
    if name == "bright":
        return ImageEnhance.Brightness(im).enhance(rng.choice([0.7, 1.3])), 90
    raise ValueError(name)


def make_set(folder: Path, n_photos: int, n_distinct: int, seed: int = 0) -> dict[str, str]:
    """Write the photos; returns file name -> the original it was made from."""
    root = paths.flickr8k_root()
    names = sorted({line.strip() for split in ("train", "dev")
                    for line in (root / "splits" / f"Flickr_8k.{split}Images.txt").read_text().split()}
                   - SAME_FILE)
    rng = random.Random(seed)
    chosen = rng.sample(names, n_photos + n_distinct)
    source: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(chosen):
        im = Image.open(root / "images" / name).convert("RGB")
        stem = Path(name).stem
        (folder / name).write_bytes((root / "images" / name).read_bytes())
        source[name] = stem
        if i >= n_photos:
            continue
        for t in TRANSFORMS:
            copy, quality = transform(im, t, rng)
            copy.save(folder / f"{stem}__{t}.jpg", quality=quality)
            source[f"{stem}__{t}.jpg"] = stem
    return source


def kind_of(name: str) -> str:
    return name.rsplit("__", 1)[1].removesuffix(".jpg") if "__" in name else "original"


def table(groups: list[dupes.Group], source: dict[str, str]) -> list[tuple[str, int, int, int, float, float]]:
    """(transformation, true pairs, found pairs, correct found, precision, recall) rows: a pair
    counts for a transformation when one of its photos is such a copy; "all" counts every pair."""
    group_of = {os.path.basename(p.path): gi for gi, g in enumerate(groups) for p in g.photos}
    names = sorted(source)
    true_n: dict[str, int] = defaultdict(int)
    found_n: dict[str, int] = defaultdict(int)
    right_n: dict[str, int] = defaultdict(int)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = source[a] == source[b]
            found = a in group_of and group_of.get(b) == group_of[a]
            if not (same or found):
                continue
            rows = {"all"} | {kind_of(x) for x in (a, b)} - {"original"}
            for r in rows:
                true_n[r] += same
                found_n[r] += found
                right_n[r] += same and found
    out = []
    for r in (*TRANSFORMS, "all"):
        p = right_n[r] / found_n[r] if found_n[r] else 1.0
        rec = right_n[r] / true_n[r] if true_n[r] else 1.0
        out.append((r, true_n[r], found_n[r], right_n[r], p, rec))
    return out


def print_table(rows: list[tuple[str, int, int, int, float, float]], threshold: float) -> None:
    print(f"\nthreshold {threshold:g}")
    print("| copy | true pairs | pairs found | correct | precision | recall |\n|---|---:|---:|---:|---:|---:|")
    for r, t, f, c, p, rec in rows:
        print(f"| {r} | {t} | {f} | {c} | {p:.3f} | {rec:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=200, help="photos with copies")
    ap.add_argument("--distinct", type=int, default=100, help="photos without copies")
    ap.add_argument("--keep", type=Path, help="keep the set and its index here (reused when present)")
    ap.add_argument("--threshold", type=float, default=dupes.DEFAULT_THRESHOLD)
    ap.add_argument("--sweep", action="store_true", help="the table for a range of thresholds")
    ap.add_argument("--grid", action="store_true", help="precision/recall over all pairs for a grid of the "
                                                         "cosine floor and bonus (how they were chosen)")
    ap.add_argument("--stats", action="store_true", help="how far each kind of copy is from its original, "
                                                          "in pHash bits and full-frame cosine, beside distinct pairs")
    ap.add_argument("--json", type=Path, help="also write every table here (`make results` renders docs/RESULTS.md)")
    args = ap.parse_args()
    if not (paths.flickr8k_root() / "images").is_dir():
        sys.exit(f"needs Flickr8k at {paths.flickr8k_root()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        photos, index = work / "photos", work / "index"
        if not photos.is_dir():
            make_set(photos, args.photos, args.distinct)
        source = _source_of(photos)
        report = build([photos], name=index)
        print(f"{report.photos} photos indexed ({args.photos} with {len(TRANSFORMS)} copies each, "
              f"{args.distinct} without), {report.encoded} encoded", file=sys.stderr)
        out: dict = {"photos": report.photos, "with_copies": args.photos, "distinct": args.distinct,
                     "copies": list(TRANSFORMS), "threshold": args.threshold, "thresholds": []}
        if args.stats:
            out["stats"] = stats(index)
        if args.grid:
            out["grid"] = grid(index, source, args.threshold)
        thresholds = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] if args.sweep else [args.threshold]
        for th in thresholds:
            t0 = time.perf_counter()
            groups = dupes.find(index, threshold=th).groups
            seconds = time.perf_counter() - t0
            rows = table(groups, source)
            print_table(rows, th)
            print(f"\ngrouping took {seconds:.2f} s")
            kept = sum("__" not in os.path.basename(g.keep) for g in groups)
            print(f"\nthe photo suggested to keep is the original in {kept} of {len(groups)} groups")
            out["thresholds"].append({"threshold": th, "seconds": seconds, "groups": len(groups), "kept_original": kept,
                                      "rows": [dict(zip(("copy", "true", "found", "correct", "precision", "recall"), r))
                                               for r in rows]})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def grid(index: Path, source: dict[str, str], threshold: float) -> list[dict]:
    default = dupes.CONFIRM_COSINE, dupes.CONFIRM_BONUS
    print(f"\nthreshold {threshold:g}: precision / recall over all pairs\n| cosine floor | bonus 0.4 | bonus 0.5 | "
          "bonus 0.6 |\n|---|---|---|---|")
    cells_out = []
    try:
        for floor in (0.86, 0.88, 0.90):
            cells = []
            for bonus in (0.4, 0.5, 0.6):
                dupes.CONFIRM_COSINE, dupes.CONFIRM_BONUS = floor, bonus
                row = table(dupes.find(index, threshold=threshold).groups, source)[-1]
                cells.append(f"{row[4]:.3f} / {row[5]:.3f}")
                cells_out.append({"floor": floor, "bonus": bonus, "precision": row[4], "recall": row[5]})
            print(f"| {floor} | " + " | ".join(cells) + " |")
    finally:
        dupes.CONFIRM_COSINE, dupes.CONFIRM_BONUS = default
    return cells_out


def stats(index: Path) -> dict:
    """pHash distance (over the four turns) and full-frame cosine of each copy to its original, and
    the same over every pair of photos from different originals."""
    import numpy as np

    from vsa_search.index import open_index
    from vsa_search.index.filters import index_meta

    with open_index(index) as ix:
        keys = [r["key"] for r in ix.records()]
        metas = index_meta(ix)
        sim = dupes.Similarity(np.array([int(metas[k]["phash"], 16) for k in keys], np.uint64),
                               dupes.full_frame(ix, list(range(len(keys)))))
    names = [os.path.basename(k) for k in keys]
    src = np.array([n.split("__")[0].removesuffix(".jpg") for n in names])
    dist = np.min([np.bitwise_count(sim.turns[:, t][:, None] ^ sim.turns[:, 0][None, :]) for t in range(4)], 0)
    cos = sim.vecs @ sim.vecs.T
    orig = {s: i for i, (s, n) in enumerate(zip(src, names, strict=True)) if "__" not in n}
    print("\n| copy | pHash bits to its original: median, max | cosine: min, median |\n|---|---|---|")
    out: dict = {"copies": []}
    for t in TRANSFORMS:
        idx = [i for i, n in enumerate(names) if kind_of(n) == t]
        d = np.array([dist[i, orig[src[i]]] for i in idx])
        c = np.array([cos[i, orig[src[i]]] for i in idx])
        print(f"| {t} | {np.median(d):.0f}, {d.max()} | {c.min():.3f}, {np.median(c):.3f} |")
        out["copies"].append({"copy": t, "bits_median": float(np.median(d)), "bits_max": int(d.max()),
                              "cosine_min": float(c.min()), "cosine_median": float(np.median(c))})
    iu = np.triu_indices(len(names), 1)
    other = src[iu[0]] != src[iu[1]]
    d, c = dist[iu][other], cos[iu][other]
    print(f"| distinct ({len(d)} pairs) | 0.1st percentile {np.percentile(d, 0.1):.0f}, min {d.min()} | "
          f"max {c.max():.3f}, pairs above 0.9: {(c >= 0.9).sum()} |")
    out["distinct"] = {"pairs": int(len(d)), "bits_p0.1": float(np.percentile(d, 0.1)), "bits_min": int(d.min()),
                       "cosine_max": float(c.max()), "above_0.9": int((c >= 0.9).sum())}
    return out


def _source_of(folder: Path) -> dict[str, str]:
    return {p.name: p.name.split("__")[0].removesuffix(".jpg") for p in folder.glob("*.jpg")}


if __name__ == "__main__":
    main()
