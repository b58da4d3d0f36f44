"""The build's per-photo metadata (pHash, sharpness, size, EXIF: index/photometa.py) on phone-sized
JPEGs: measured from the decode the CNN's features come from (of_prepared, what a build does) against
a separate full decode of the photo (describe without min_side, the baseline), in one run.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/photometa.py [--photos 10]

The photos are the first N of the shared coco128 set upscaled to 4032x3024 (3024x4032 for portrait),
JPEG quality 90, in a temporary folder. Prints CPU ms per photo (process time) of the decode and
proposals a build runs anyway (regions.prepare), of each metadata path, and how far the reduced
decode's values are from the full decode's. Skips cleanly when the coco128 data is absent.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from vsa_search.core import paths
from vsa_search.core.config import RegionConfig
from vsa_search.index import photometa
from vsa_search.vision.phash import hamming
from vsa_search.vision.regions import decode_side, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=10)
    args = ap.parse_args()
    src = Path(os.environ.get("VSA_SHARED", paths.REPO_ROOT.parent / "shared")) / "data" / "coco128" / "images"
    if not src.is_dir():
        print(f"skipped: no coco128 photos at {src} (set VSA_SHARED to the folder that holds data/coco128)")
        return
    cfg = RegionConfig()
    with tempfile.TemporaryDirectory() as tmp:
        photos = []
        for i, p in enumerate(sorted(src.glob("*.jpg"))[: args.photos]):
            im = Image.open(p).convert("RGB")
            size = (4032, 3024) if im.width >= im.height else (3024, 4032)
            photos.append(Path(tmp) / f"{i}.jpg")
            im.resize(size, Image.Resampling.BICUBIC).save(photos[-1], quality=90)
        n = len(photos)
        t = time.process_time()
        prepared = [prepare(p, cfg) for p in photos]
        t_prep = time.process_time() - t
        t = time.process_time()
        full = [photometa.describe(p) for p in photos]
        t_full = time.process_time() - t
        t = time.process_time()
        same = [photometa.of_prepared(x) for x in prepared]
        t_same = time.process_time() - t
    bits = [hamming(int(a["phash"], 16), int(b["phash"], 16)) for a, b in zip(full, same)]
    ratio = [b["sharp"] / a["sharp"] for a, b in zip(full, same)]
    kept = all({k: v for k, v in a.items() if k not in ("phash", "sharp")} ==
               {k: v for k, v in b.items() if k not in ("phash", "sharp")} for a, b in zip(full, same))
    print(f"{n} JPEGs 4032x3024, decoded for the CNN at {prepared[0].image.size if prepared else '-'} "
          f"(decode_side {decode_side(cfg)})\n")
    print("| step | CPU ms/photo |\n|---|---:|")
    print(f"| decode + proposals (regions.prepare, the build's own) | {1000 * t_prep / n:.1f} |")
    print(f"| metadata, own full decode (baseline) | {1000 * t_full / n:.1f} |")
    print(f"| metadata, from the build's decode | {1000 * t_same / n:.1f} |")
    print(f"\npHash bits apart (reduced vs full decode): max {max(bits)}, mean {sum(bits) / n:.2f}; "
          f"sharpness reduced/full: {min(ratio):.3f}..{max(ratio):.3f}; size and EXIF identical: {kept}")


if __name__ == "__main__":
    main()
