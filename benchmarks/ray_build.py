"""Index-build speed: one process vs Ray with 1 and 2 model actors, in one run, plus Ray's start-up.

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/ray_build.py --photos 120

The photos are the first N shared Flickr8k photos (by name), linked into a temporary folder (the
data is never copied). Every build starts from an empty index with the shipped model; each Ray
build is checked to hold the same photos and regions as the single build. Ray runs as a local
cluster of --cpus CPUs; its actors take one CPU (and one torch thread) each, as the single build
runs with OMP_NUM_THREADS=1. Columns: wall = the whole call (for Ray: actors, model loads, shards
and merge); start-up = single: model and CNN load; Ray: from submitting the pipeline to the first
shard starting (actor start + model load); steady = photos/s between the first and the last photo
encoded. The single build runs while the (idle) local Ray cluster is up. The Ray start-up time
includes any start that missed Ray's fixed 30 s registration window and was tried again.
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

from vsa_search import index as ix
from vsa_search.core import paths


class Clock:
    """Timestamps of progress callbacks, for the steady-state rate and the start-up time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first_start: float | None = None
        self.events: list[tuple[float, int]] = []

    def started(self, *_: object) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter() - self.t0

    def progress(self, n: int) -> None:
        self.events.append((time.perf_counter() - self.t0, n))

    def steady(self) -> float:
        if len(self.events) < 2:
            return float("nan")
        (a, _), (b, _) = self.events[0], self.events[-1]
        done = sum(n for _, n in self.events[1:])
        return done / (b - a) if b > a else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--workers", default="1,2", help="Ray actor counts to measure")
    ap.add_argument("--shards", type=int, default=4, help="shards of every Ray build (the same for all)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--json", type=Path, help="also write the rows here (`make results` renders docs/RESULTS.md)")
    ap.add_argument("--start-tries", type=int, default=10, help="local Ray starts to try before giving up")
    args = ap.parse_args()
    from vsa_search import cluster
    from vsa_search.cluster import build as ray_build
    from vsa_search.models.alignment import load_align
    from vsa_search.vision.regions import RegionEncoder

    src = sorted((paths.flickr8k_root() / "images").glob("*.jpg"))[: args.photos]
    if len(src) < args.photos:
        raise SystemExit(f"only {len(src)} photos under {paths.flickr8k_root() / 'images'}")
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="vsa-ray-bench-"))
    rows: list[tuple[str, str, float, float, float, float]] = []
    try:
        photos = tmp / "photos"
        photos.mkdir()
        for p in src:
            os.symlink(p, photos / p.name)
        n = len(src)

        # Ray first: on a saturated machine its start may need several tries (cluster.START_TRIES).
        cluster.START_TRIES = args.start_tries
        t = time.perf_counter()
        with cluster.connected(num_cpus=args.cpus):
            init_s = time.perf_counter() - t
            print(f"ray.init: {init_s:.1f}s", file=sys.stderr, flush=True)
            t = time.perf_counter()
            model = load_align(paths.find_model("align"))
            encoder = RegionEncoder(model.region_config, "cpu", top=model.top)
            load_s = time.perf_counter() - t
            clock = Clock()
            single = ix.build_photos([photos], model, tmp / "single", encoder=encoder, on_progress=clock.progress)
            wall = time.perf_counter() - clock.t0
            rows.append(("single process", "-", wall, n / wall, clock.steady(), load_s))
            base = n / wall
            print(f"single: {wall:.1f}s", file=sys.stderr, flush=True)

            for w in (int(x) for x in args.workers.split(",")):
                clock = Clock()
                r = ray_build.build([photos], "align", tmp / f"ray{w}", workers=w, shards=args.shards,
                                    on_progress=clock.progress, on_shard_start=clock.started)
                wall = time.perf_counter() - clock.t0
                assert (r.photos, r.regions, r.encoded) == (single.photos, single.regions, n), r.to_dict()
                rows.append((f"Ray, {args.shards} shards", str(w), wall, n / wall, clock.steady(),
                             clock.first_start or float("nan")))
                print(f"ray {w}: {wall:.1f}s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{n} Flickr8k photos, shipped model, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
          f"Ray local cluster start-up (ray.init): {init_s:.1f} s\n")
    print("| build | actors | wall s | photos/s | vs single | steady photos/s | start-up s |")
    print("|---|---|---|---|---|---|---|")
    for name, w, wall, rate, steady, start in rows:
        print(f"| {name} | {w} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x | {steady:.2f} | {start:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "photos": n, "omp_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg()[0], "init_s": init_s,
            "rows": [dict(zip(("build", "actors", "wall_s", "photos_per_s", "steady_photos_per_s", "startup_s"), r))
                     for r in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
