"""Photo index build speed and memory on phone-sized photos: 640 px, 4032x3024 JPEG and HEIC, this
checkout against a baseline checkout (e.g. the main branch) in one run.

    nice python benchmarks/build.py --baseline /work/main [--photos 40] [--heic-photos 12] [--repeat 3]
    nice python benchmarks/build.py --baseline . --baseline-model OTHER.pt    # two models, the same code

The photos are the first N of the shared coco128 set, resized to 640 px on the long side, then
upscaled to 4032x3024 (3024x4032 for portrait) as JPEG (quality 90) and as HEIC, in a temporary
folder (--workdir keeps them for the next run). Each (code, photo set) runs in its own process
with PYTHONPATH set to that checkout, the same model file (--model) and `batch_size` 8; with
--repeat N the runs are interleaved N times and each (code, photo set) keeps its fastest run (on a
shared machine, the one other load disturbed least):

- build: `PhotoBuild` plan + run into an empty index, with the model and CNN already loaded (as in
  a long build; `load s` is that loading, once per process). photos/s is wall-clock; CPU ms/photo
  is the process's user+sys time over the build, all threads; peak RSS is the process's maximum
  resident memory up to the end of the build (model and CNN included);
- CPU-bound photos/s: what the build's CPU time per photo allows on this machine's cores kept busy
  (cores x 1000 / CPU ms per photo); on a shared machine it is the figure that other load disturbs least;
- stages: each stage alone over the first 20 photos, one torch thread, CPU time per photo (the
  process's; robust to other load on the machine): decode (as the build decodes: the
  baseline in full, this checkout at the reduced scale the CNN needs), proposals, CNN (batches of 8),
  alignment encoding (region vectors, concepts, querybank offset), write (the generation write of the
  build above, wall-clock).

Skips cleanly when the coco128 data is absent.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SETS = ("640", "4032", "heic")
LABELS = {"640": "640 px JPEG", "4032": "phone JPEG 4032x3024", "heic": "phone HEIC 4032x3024"}


# --------------------------------------------------------------------------- photos


def make_photos(src: Path, out: Path, n: int, n_heic: int) -> dict[str, Path]:
    from PIL import Image

    dirs = {s: out / s for s in SETS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))[:n]
    for i, p in enumerate(files):
        small, big, heic = dirs["640"] / p.name, dirs["4032"] / p.name, dirs["heic"] / f"{p.stem}.heic"
        if small.exists() and big.exists() and (i >= n_heic or heic.exists()):
            continue
        im = Image.open(p).convert("RGB")
        s = 640 / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
        im.save(small, quality=90)
        im = im.resize((4032, 3024) if im.width >= im.height else (3024, 4032), Image.BICUBIC)
        im.save(big, quality=90)
        if i < n_heic:
            import pillow_heif

            pillow_heif.register_heif_opener()
            # x265's default preset takes ~45 s per 12 MP photo here; the file reads the same way.
            im.save(heic, quality=85, enc_params={"preset": "ultrafast"})
    return dirs


# --------------------------------------------------------------------------- one (code, set) run


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(photo_dir: Path, model_path: Path, batch: int) -> dict[str, Any]:
    """Runs with PYTHONPATH at the checkout being measured; prints one JSON line."""
    import numpy as np
    import torch

    from vsa_search.core.errors import VSAError
    from vsa_search.index import photos as photos_mod
    from vsa_search.models.alignment import load_align
    from vsa_search.models.encode import encode_regions, photo_offset
    from vsa_search.vision import images, regions

    res: dict[str, Any] = {}
    t = time.perf_counter()
    model = load_align(model_path, "cpu")
    cfg = model.region_config
    top = getattr(model, "top", None)  # a fine-tuned CNN top runs beside ImageNet's, as the build runs it
    enc = regions.RegionEncoder(cfg, "cpu", **({"top": top} if top else {}))
    bank = getattr(model, "querybank", None)
    if bank is not None and hasattr(bank, "split_words"):
        # The bank's sentences are encoded once, at the first photo: loading, in a long build (~1 s).
        from vsa_search.models.score import shared_width

        bank.split_words(model.model, "cpu", shared_width(model.model))
    res["load_s"] = time.perf_counter() - t
    files = sorted(p for p in photo_dir.iterdir() if p.is_file())

    write_s = [0.0]
    real_write = photos_mod.write_generation

    def timed_write(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_write(*a, **k)
        finally:
            write_s[0] += time.perf_counter() - t

    photos_mod.write_generation = timed_write
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), _cpu()
        try:
            with photos_mod.PhotoBuild([photo_dir], model, Path(tmp) / "ix", encoder=enc, batch_size=batch) as b:
                b.plan()
                report = b.run()
        except VSAError as e:
            return {"error": str(e)}
        wall, cpu = time.perf_counter() - t, _cpu() - c
    n = report.encoded
    res.update(photos=n, skipped=len(report.skipped), regions=report.regions, build_s=wall,
               rate=n / wall if n else 0.0, cpu_ms=1000 * cpu / max(n, 1),
               peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               write_ms=1000 * write_s[0] / max(n, 1))

    # Stages alone, one thread, CPU time of this thread.
    torch.set_num_threads(1)
    sub = files[:20]
    new = hasattr(images, "decode")

    def stage(fn: Any) -> tuple[Any, float]:
        c = _cpu()  # the process's: libheif decodes in threads of its own
        out = fn()
        return out, 1000 * (_cpu() - c) / len(sub)

    if new:
        side = regions.decode_side(cfg)
        dec, res["decode_ms"] = stage(lambda: [images.decode(p, min_side=side) for p in sub])
        ims, sizes = [d.image for d in dec], [d.size for d in dec]
        boxes, res["proposals_ms"] = stage(lambda: [regions.propose(im, cfg, s) for im, s in zip(ims, sizes)])
    else:
        ims, res["decode_ms"] = stage(lambda: [images.load(p) for p in sub])
        sizes = [im.size for im in ims]
        boxes, res["proposals_ms"] = stage(lambda: [regions.propose(im, cfg) for im in ims])

    def cnn() -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(ims), 8):
            sl = slice(i, i + 8)
            out += enc.encode(ims[sl], boxes[sl], sizes[sl]) if new else enc.encode(ims[sl], boxes[sl])
        return out

    cnn()  # warm-up
    feats, res["cnn_ms"] = stage(cnn)

    # The concepts step's signature: (features, model) before fine-tuned tops, (result, regions, model) since.
    by_result = len(inspect.signature(photos_mod._concepts_of).parameters) == 3

    def align() -> None:
        for f, b in zip(feats, boxes):
            v = encode_regions(model, f).astype(np.float16)
            if by_result:
                photos_mod._concepts_of(regions.RegionFeatures(b, f), len(v), model)
            else:
                photos_mod._concepts_of(f[: len(v)], model)
            photo_offset(model, v)

    align()  # warm-up: the querybank's vectors are computed once per process
    _, res["align_ms"] = stage(align)
    return res


def run_child(code: Path, photo_dir: Path, args: argparse.Namespace, model: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(code))
    cmd = [sys.executable, __file__, "--child", str(photo_dir), "--model", str(model), "--batch", str(args.batch)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- tables


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def tables(results: dict[tuple[str, str], dict[str, Any]], codes: list[str]) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = ["| photos | code | photos/s | vs 640 px, same code | vs baseline | CPU ms/photo "
           f"| CPU-bound photos/s ({cores} cores) | peak RSS GB | load s |", "|---|---|---|---|---|---|---|---|---|"]
    for s in SETS:
        for c in codes:
            r = results.get((c, s), {})
            if "error" in r or not r.get("photos"):
                why = r.get("error", f"no photo read ({r.get('skipped', 0)} skipped)")
                out.append(f"| {LABELS[s]} | {c} | not read: {why} | | | | | | |")
                continue
            r640 = results.get((c, "640"), {}).get("rate")
            base = results.get((codes[0], s), {}).get("rate") if c != codes[0] else None
            vs640 = _f(r["rate"] / r640 if r640 else None, "{:.2f}x")
            out.append(f"| {LABELS[s]} | {c} | **{r['rate']:.1f}** | {vs640} "
                       f"| {_f(r['rate'] / base if base else None, '{:.2f}x')} | {r['cpu_ms']:.0f} "
                       f"| {cores * 1000 / r['cpu_ms']:.1f} "
                       f"| {r['peak_gb']:.2f} | {r['load_s']:.1f} |")
    out += ["", "| photos | code | decode | proposals | CNN | alignment encoding | write | sum (CPU ms/photo) |",
            "|---|---|---|---|---|---|---|---|"]
    for s in SETS:
        for c in codes:
            r = results.get((c, s), {})
            if "decode_ms" not in r:
                continue
            parts = [r[k] for k in ("decode_ms", "proposals_ms", "cnn_ms", "align_ms", "write_ms")]
            out.append(f"| {LABELS[s]} | {c} | " + " | ".join(f"{x:.1f}" for x in parts) + f" | {sum(parts):.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run (e.g. /work/main)")
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--heic-photos", type=int, default=12, help="HEIC encoding is slow: fewer of them")
    ap.add_argument("--model", type=Path, default=REPO / "weights" / "align.pt")
    ap.add_argument("--baseline-model", type=Path, help="the baseline's model file (default: --model); with "
                    "--baseline . it measures one model against another on the same code")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs; the fastest of each is kept")
    ap.add_argument("--workdir", type=Path, help="keep the generated photos here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write every result here (`make results` renders docs/RESULTS.md)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch)))
        return
    src = Path(os.environ.get("VSA_SHARED", REPO.parent / "shared")) / "data" / "coco128" / "images"
    if not src.is_dir():
        print(f"skipped: no coco128 photos at {src} (set VSA_SHARED to the folder that holds data/coco128)")
        return
    codes = {"baseline": args.baseline.resolve(), "this": REPO} if args.baseline else {"this": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_photos(src, args.workdir or Path(tmp), args.photos, args.heic_photos)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for _ in range(args.repeat):
            for s in SETS:
                for name, code in codes.items():
                    model = args.baseline_model if name == "baseline" and args.baseline_model else args.model
                    r = run_child(code, dirs[s], args, model)
                    print(f"{name} {s}: {json.dumps(r)}", file=sys.stderr)
                    if r.get("rate", 0) >= results.get((name, s), {}).get("rate", -1):
                        results[(name, s)] = r
    print(tables(results, list(codes)))
    if args.json:
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        models = {n: str(args.baseline_model if n == "baseline" and args.baseline_model else args.model) for n in codes}
        args.json.write_text(json.dumps({"repeat": args.repeat, "codes": list(codes), "models": models,
                                         "load_end": load,
                                         "results": [{"code": c, "photos_set": s, "label": LABELS[s], **r}
                                                     for (c, s), r in results.items()]}, indent=1) + "\n")
    if hasattr(os, "getloadavg"):  # other work on the machine slows the wall-clock figures, not the CPU ones
        print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
