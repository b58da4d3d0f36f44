"""One prepared check for a lent GPU machine (run by benchmarks/gpu_check.sh; about 3-4 minutes).

Installs nothing and needs nothing outside the repository: it uses whatever torch (and faiss,
timm, ...) the machine has, and each part that lacks a package says so and is skipped.

1. A training step of the alignment model, `default` embed preset, batch 100 (synthetic features
   (100, 20, 1280) and word ids of Flickr8k-like lengths): CPU vs GPU float32 vs GPU mixed
   precision (train.MixedPrecision, as `vsa train embed` uses it), ms per step.
2. Region extraction (proposals + CNN, `default` region preset) on the example photos, and the
   CNN alone: photos/s on GPU vs CPU.
3. `vsa index build` on GPU: photos/s for a whole build (hash, extract, encode, LMDB, FAISS) of
   48 distinct photos made from examples/photos (a random-weight default model: speed only).
4. FAISS: IVF and IVF-PQ builds of 100k synthetic 512-d vectors; on the GPU when faiss-gpu is there, else
   CPU (said so).

Prints a table; writes gpu_check.json to $OUT when that is set. `--smoke`: tiny sizes, to check
the script itself on a CPU-only machine in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROWS: list[dict] = []
SMOKE = "--smoke" in sys.argv
BATCH, PHOTOS, VECTORS = (8, 6, 20_000) if SMOKE else (100, 48, 100_000)


def row(part: str, what: str, value: float | str, unit: str, note: str = "") -> None:
    ROWS.append({"part": part, "what": what, "value": value, "unit": unit, "note": note})
    v = f"{value:,.2f}" if isinstance(value, float) else str(value)
    print(f"  {part:10s} {what:48s} {v:>12s} {unit:10s} {note}", flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def part(name: str):
    def wrap(fn):
        def run(*a, **kw):
            t = time.perf_counter()
            print(f"\n== {name}", flush=True)
            try:
                fn(*a, **kw)
            except ImportError as e:
                row(name, "skipped", "-", "", f"missing package: {e.name or e}")
            except Exception as e:  # a lent machine may lack anything: report, go on
                row(name, "failed", "-", "", f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
                traceback.print_exc(limit=3)
            print(f"   ({time.perf_counter() - t:.0f}s)", flush=True)
        return run
    return wrap


@part("env")
def env() -> None:
    row("env", "torch", torch.__version__, "")
    row("env", "cuda available", str(torch.cuda.is_available()), "")
    if torch.cuda.is_available():
        row("env", "gpu", torch.cuda.get_device_name(0), "", f"bf16: {torch.cuda.is_bf16_supported()}")
    row("env", "cpu cores (torch threads)", str(torch.get_num_threads()), "")
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        row("env", "faiss", faiss.__version__, "", f"GPUs seen by faiss: {gpus}" if gpus else
            "CPU faiss (faiss-gpu absent): IVF k-means runs on CPU")
    except ImportError:
        row("env", "faiss", "absent", "", "index parts will be skipped")


def _train_step_ms(dev: torch.device, amp: bool, batch: int, steps: int) -> float:
    from vsa_search.core.config import EMBED_PRESETS
    from vsa_search.models.alignment import build_model, ranking_loss
    from vsa_search.train.common import MixedPrecision, make_optimizer

    cfg = EMBED_PRESETS["default"]
    torch.manual_seed(0)
    model = build_model(cfg, 2539).to(dev).train()  # the Flickr8k vocabulary's size
    opt = make_optimizer(cfg, model.parameters())
    mp = MixedPrecision(dev, amp if dev.type == "cuda" else False)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, 20, 1280, generator=g).to(dev)
    region_mask = torch.ones(batch, 20, dtype=torch.bool, device=dev)
    lengths = torch.randint(6, 21, (batch,), generator=g)  # Flickr8k: ~11 words, few past 20
    ids = (torch.randint(4, 2539, (batch, int(lengths.max())), generator=g)
           * (torch.arange(int(lengths.max()))[None, :] < lengths[:, None])).to(dev)
    lengths = lengths.to(dev)

    def step() -> None:
        with mp.autocast():
            scores = model(feats, region_mask, ids, lengths)
            loss = ranking_loss(scores.float(), cfg.margin, hardest=cfg.loss == "max") / batch
        opt.zero_grad(set_to_none=True)
        mp.step(loss, opt, model.parameters(), cfg.clip)

    for _ in range(3):
        step()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    return (time.perf_counter() - t) / steps * 1000


@part("train")
def train_step() -> None:
    cpu = _train_step_ms(torch.device("cpu"), False, BATCH, 2 if SMOKE else 5)
    row("train", f"embed step, default preset, batch {BATCH}: CPU fp32", cpu, "ms/step")
    if not torch.cuda.is_available():
        return
    gpu = torch.device("cuda")
    f32 = _train_step_ms(gpu, False, BATCH, 40)
    row("train", "  GPU fp32", f32, "ms/step", f"{cpu / f32:.1f}x CPU")
    amp = _train_step_ms(gpu, True, BATCH, 40)
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    row("train", f"  GPU {dtype} autocast (--amp, the CUDA default)", amp, "ms/step", f"{cpu / amp:.1f}x CPU")
    b32 = _train_step_ms(gpu, True, 32, 40)
    row("train", f"  GPU {dtype}, batch 32 (the preset's own)", b32, "ms/step")


def _photos(tmp: Path, n: int) -> Path:
    """n distinct JPEGs made from examples/photos (mirrored, cropped, rotated variants)."""
    from PIL import Image, ImageOps

    src = sorted(p for p in (ROOT / "examples" / "photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    out = tmp / "photos"
    out.mkdir()
    variants = [lambda im: im, ImageOps.mirror, lambda im: im.crop((0, 0, im.width * 9 // 10, im.height * 9 // 10)),
                lambda im: im.rotate(90, expand=True)]
    k = 0
    for v in variants:
        for p in src:
            if k == n:
                return out
            v(Image.open(p).convert("RGB")).save(out / f"{k:03d}_{p.stem}.jpg", quality=90)
            k += 1
    return out


@part("extract")
def extraction(photos: Path) -> None:
    from vsa_search.core.config import REGION_PRESETS
    from vsa_search.vision import regions

    cfg = REGION_PRESETS["default"]
    paths = sorted(photos.iterdir())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from vsa_search.vision.images import load

    ims = [load(p) for p in paths]
    boxes = [regions.propose(im, cfg) for im in ims]
    base = {}
    for d in devices:
        enc = regions.RegionEncoder(cfg, d)
        enc.encode(ims[:4], boxes[:4])  # warm-up (cuDNN autotune, lazy init)
        sync(torch.device(d))
        t = time.perf_counter()
        for i in range(0, len(ims), 16):
            enc.encode(ims[i:i + 16], boxes[i:i + 16])
        sync(torch.device(d))
        cnn = len(ims) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = sum(1 for _, r in regions.extract(paths, enc, batch_size=16) if not isinstance(r, str))
        full = n / (time.perf_counter() - t)
        base.setdefault("cnn", cnn)
        base.setdefault("full", full)
        row("extract", f"CNN only (20 boxes, RoIAlign) on {d}", cnn, "photos/s",
            f"{cnn / base['cnn']:.1f}x CPU" if d != "cpu" else "")
        row("extract", f"  load + proposals + CNN on {d}", full, "photos/s",
            f"{full / base['full']:.1f}x CPU" if d != "cpu" else "proposals run on CPU threads either way")


@part("index")
def index_build(photos: Path, tmp: Path) -> None:
    from vsa_search import index as ix
    from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
    from vsa_search.data.vocab import SPECIALS, Vocab
    from vsa_search.models.alignment import build_model, load_align, save_align

    vocab = Vocab(list(SPECIALS) + ["a", "dog"])
    n = len(list(photos.iterdir()))
    for arch in ("hybrid", "brnn"):  # the default preset is hybrid; brnn in case its index build fails
        torch.manual_seed(0)
        cfg = dataclasses.replace(EMBED_PRESETS["default"], arch=arch)
        path = save_align(build_model(cfg, len(vocab)).eval(), vocab, REGION_PRESETS["default"], tmp / f"{arch}.pt")
        try:
            for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
                model = load_align(path, d)
                t = time.perf_counter()
                r = ix.build_photos([photos], model, tmp / f"idx-{arch}-{d}", device=d, batch_size=16)
                dt = time.perf_counter() - t
                row("index", f"vsa index build ({arch} model), {n} photos, on {d}", r.photos / dt, "photos/s",
                    f"{r.regions} regions, {r.index_type}")
            return
        except Exception as e:
            row("index", f"vsa index build ({arch} model)", "failed", "", str(e).splitlines()[0][-90:])


@part("faiss")
def faiss_build() -> None:
    import faiss

    from vsa_search.index import faiss_types

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, 512)).astype(np.float32) / np.sqrt(512)
    x = (centres[rng.integers(0, 4096, VECTORS)]
         + rng.standard_normal((VECTORS, 512), dtype=np.float32) * (0.6 / np.sqrt(512))).astype(np.float16)
    for kind in ("ivf", "ivfpq"):
        t = time.perf_counter()
        _, chosen, params = faiss_types.make_faiss(x, kind)
        dt = time.perf_counter() - t
        where = "GPU k-means" if params.get("kmeans") == "gpu" else f"CPU, {faiss.omp_get_max_threads()} threads"
        row("faiss", f"make_faiss {chosen}, {VECTORS:,} x 512", VECTORS / dt, "regions/s", f"{dt:.1f}s, {where}")


def main() -> None:
    t0 = time.perf_counter()
    env()
    train_step()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            photos = _photos(tmp, PHOTOS)
        except Exception as e:
            print(f"no example photos: {e}")
            photos = None
        if photos is not None:
            extraction(photos)
            index_build(photos, tmp)
    faiss_build()
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(ROWS, indent=1))


if __name__ == "__main__":
    main()
