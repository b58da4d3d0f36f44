"""Caption speed on CPU: ms per photo for beam 1 (greedy, the baseline) and beam 7, decoding only
(features ready, all photos decoded as one batch, as `vsa caption` does) and including feature
extraction (load + region proposals + CNN, photo by photo, as `vsa caption` does).

    .venv/bin/python benchmarks/caption.py [--photos 50] [--model caption] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from vsa_search.core import paths
from vsa_search.models.beam import generate_captions
from vsa_search.models.captioner import load_caption, photo_input
from vsa_search.vision import images
from vsa_search.vision.regions import RegionEncoder


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--model", default="caption")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_caption(paths.find_model(args.model), device="cpu")
    photos = sorted((paths.flickr8k_root() / "images").glob("*.jpg"))[: args.photos]
    encoder = RegionEncoder(loaded.region_config, device="cpu")
    encoder.encode_one(images.load(photos[0]))  # warm-up (first CNN call allocates)

    def extract() -> torch.Tensor:
        return torch.stack([photo_input(encoder.encode_one(images.load(p)), loaded.config) for p in photos])

    t_feat = best_of(extract, 1)  # the slow part; once is enough to see it dominate
    feats = extract()
    n = len(photos)
    rows = []
    for beam in (1, 7):
        generate_captions(loaded, feats[:4], beam=beam)  # warm-up
        t_dec = best_of(lambda b=beam: generate_captions(loaded, feats, beam=b), args.repeat)
        rows.append((beam, 1000 * t_dec / n, 1000 * (t_dec + t_feat) / n))
    base_dec, base_tot = rows[0][1], rows[0][2]
    print(f"{n} photos, {loaded.config.cell} h={loaded.config.hidden}, vocab {len(loaded.vocab)}, "
          f"region preset {loaded.region_config.extractor_id()}, CPU threads {args.threads}")
    print(f"features (load + proposals + CNN): {1000 * t_feat / n:.1f} ms/photo")
    print(f"{'beam':>5s} {'decode ms/photo':>16s} {'vs beam 1':>10s} {'total ms/photo':>15s} {'vs beam 1':>10s}")
    for beam, dec, tot in rows:
        print(f"{beam:5d} {dec:16.2f} {dec / base_dec:9.2f}x {tot:15.1f} {tot / base_tot:9.2f}x")


if __name__ == "__main__":
    main()
