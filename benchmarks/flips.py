"""Test-time horizontal flips, measured on Flickr8k dev: each photo's region features averaged with those of
its mirror image (boxes mirrored), through the model's fine-tuned CNN top, against the features as stored.
The querybank's own photos stay unflipped. Dev only: the test split is refused.

    .venv/bin/python benchmarks/flips.py --features TOP_FEATS [--split dev] [--json FILE]

TOP_FEATS: the model's feature store (`vsa features extract --model align ...`), whose boxes and concepts the
flipped store reuses. The CNN's lower stages run once more per photo, on the mirror image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vsa_search.core import paths
from vsa_search.core.config import MapConfig
from vsa_search.data.datasets import load_flickr8k
from vsa_search.evaluation.recall import evaluate_recall
from vsa_search.models.alignment import load_align
from vsa_search.vision.features import FeatureStore
from vsa_search.vision.regions import RegionFeatures
from vsa_search.vision.tops import top_cut
from vsa_search.vision.trunk import MapLower, tuned_top


def mirrored(boxes: np.ndarray) -> np.ndarray:
    """xyxy boxes of a photo whose full-image box is row 0, mirrored left to right."""
    w = float(boxes[0, 2])
    out = boxes.astype(np.float32)
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return out


def flipped_store(model, src: Path, out: Path, image_paths: dict[str, Path], batch: int = 32) -> None:
    """`out`: src's features averaged with the mirror image's; src's boxes, concepts and top."""
    cfg = model.region_config
    map_cfg = MapConfig(backbone=cfg.backbone, input_size=cfg.input_size, cut=top_cut(cfg))
    lower, top = MapLower(map_cfg), tuned_top(cfg, model.top, map_cfg)
    ids = list(image_paths)
    with FeatureStore(src, readonly=True) as fs, FeatureStore(out, cfg) as st, torch.no_grad():
        st.put_top(model.top)
        for a in range(0, len(ids), batch):
            chunk = ids[a : a + batch]
            stored = [fs.get(i) for i in chunk]
            maps = lower(torch.stack([lower.tensor(ImageOps.mirror(Image.open(image_paths[i]).convert("RGB")))
                                      for i in chunk]))
            boxes = [torch.from_numpy(mirrored(f.boxes)) for f in stored]
            flat = top.regions(maps, boxes).numpy()
            parts = np.split(flat, np.cumsum([len(b) for b in boxes])[:-1])
            st.put([(i, RegionFeatures(f.boxes, (f.features + m) / 2)) for i, f, m in zip(chunk, stored, parts)],
                   concepts={i: fs.concepts_bytes(i) for i in chunk})


def mean_recall(report: dict) -> dict:
    m = report["rows"][0]["metrics"]
    keys = [(d, f"R@{k}") for d in ("image_annotation", "image_search") for k in (1, 5, 10)]
    return {"mean R@K": round(float(np.mean([m[d][k] for d, k in keys])), 2),
            **{f"{d.split('_')[1]} {k}": round(m[d][k], 1) for d, k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="align")
    ap.add_argument("--features", type=Path, required=True, help="the model's feature store (TOP_FEATS)")
    ap.add_argument("--split", default="dev", choices=["dev", "train"])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_align(paths.find_model(a.model))
    if not model.region_config.top:
        raise SystemExit(f"{model.path}: no fine-tuned CNN top; this measures a top's features")
    recs = [r for r in load_flickr8k().present(a.split)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        flipped_store(model, a.features, Path(tmp) / "flipped", {r.image_id: r.path for r in recs})
        seconds = time.perf_counter() - t0
        rows = {name: mean_recall(evaluate_recall(model.path, store, a.split, baseline="none"))
                for name, store in (("as stored", a.features), ("with flips", Path(tmp) / "flipped"))}
    report = {"model": str(model.path), "split": a.split, "photos": len(recs),
              "flip_seconds": round(seconds, 1), "rows": rows}
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
