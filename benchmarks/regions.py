"""Region extraction speed on the shared Flickr8k photos: where the time goes, and the total
against a full-image-only baseline measured in the same run.

    .venv/bin/python benchmarks/regions.py [--photos 200] [--threads 2] [--json docs/results/regions.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from vsa_search.core import paths
from vsa_search.core.config import RegionConfig
from vsa_search.vision import images, regions


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here (`make results` renders docs/RESULTS.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted((paths.flickr8k_root() / "images").glob("*.jpg"))[: args.photos]
    n = len(files)
    base = RegionConfig()
    rows: list[tuple[str, float]] = []

    ims: list = []
    rows.append(("decode (PIL, EXIF, RGB)", timed(lambda: ims.extend(images.load(p) for p in files), n)))
    for label, cfg in [("proposals: selective search fast @128", base),
                       ("proposals: selective search single @128", replace(base, ss_mode="single")),
                       ("proposals: grid only", replace(base, proposals="grid"))]:
        rows.append((label, timed(lambda c=cfg: [regions.propose(im, c) for im in ims], n)))

    boxes = [regions.propose(im, base) for im in ims]
    for label, cfg in [("CNN: full image only (baseline)", replace(base, proposals="none")),
                       ("CNN: RoIAlign, 20 boxes, one pass @224", base),
                       ("CNN: RoIAlign, 20 boxes, one pass @320", replace(base, input_size=320)),
                       ("CNN: per-crop, 20 crops @160 (R-CNN style)", replace(base, pooling="crop"))]:
        enc = regions.RegionEncoder(cfg, device="cpu")
        bx = [b[:1] for b in boxes] if cfg.proposals == "none" else boxes
        m = n if cfg.pooling == "roi" else min(n, 24)  # per-crop is slow: time a slice
        enc.encode(ims[:4], bx[:4])  # warm-up

        def run(enc=enc, bx=bx, m=m) -> None:
            for i in range(0, m, 16):
                enc.encode(ims[i:i + 16][: m - i], bx[i:i + 16][: m - i])

        rows.append((label, timed(run, m)))

    totals = {}
    for label, cfg in [("TOTAL full image only (baseline)", replace(base, proposals="none")),
                       ("TOTAL default (selective + RoIAlign @224)", base),
                       ("TOTAL grid + RoIAlign @224", replace(base, proposals="grid")),
                       ("TOTAL single-strategy SS + RoIAlign @224", replace(base, ss_mode="single"))]:
        enc = regions.RegionEncoder(cfg, device="cpu")
        totals[label] = timed(lambda enc=enc: list(regions.extract(files, enc, batch_size=16)), n)
        rows.append((label, totals[label]))

    baseline = totals["TOTAL full image only (baseline)"]
    print(f"\n{n} shared Flickr8k photos (~200 px), {args.threads} torch threads, device cpu\n")
    print(f"{'stage':48} {'photos/s':>9} {'ms/photo':>9} {'vs full-image total':>20}")
    for label, rate in rows:
        print(f"{label:48} {rate:9.1f} {1000 / rate:9.1f} {rate / baseline:19.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"photos": n, "threads": args.threads, "baseline": "TOTAL full image only "
                                         "(baseline)", "rows": [{"stage": label, "photos_per_s": rate}
                                                               for label, rate in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
