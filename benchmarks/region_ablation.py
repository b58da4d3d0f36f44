"""The regions' map and number (weights/align.md): feature stores of the Flickr8k train and dev photos through
the shipped model's CNN top, without flips, with another region count or the top's map at stride 16, and a copy
of the hybrid member to continue on them. Dev only: the test photos are never read.

    python benchmarks/region_ablation.py --maps MAPS6 --boxes FEATS --regions 10 --stride 32 \
        --init HYBRID0 --out R10            # writes the store R10 and R10/init.pt
    vsa train embed --features R10 --init R10/init.pt --lr 2e-4 --lr-decay-epoch 0 --epochs 5 --out H.pt

MAPS6: `vsa features maps --preset stage6` of the train and dev photos; FEATS: ImageNet's features of the same
photos (their boxes and concepts are reused). With more regions than FEATS holds, ImageNet's features with that
many are extracted first, into OUT-imagenet (the proposals are ranked, so FEATS's come first).
Stride 16 runs the top densely, as DeepLab does a classifier: the first depthwise convolution of its first
stage at stride 1 instead of 2, every later one dilated by 2, so it computes the same function at every second
position of a 14 x 14 map."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsa_search.core.config import REGION_PRESETS
from vsa_search.data.datasets import load_dataset
from vsa_search.models.alignment import load_align, save_align
from vsa_search.vision.features import FeatureStore, extract_to_store
from vsa_search.vision.regions import RegionFeatures, pool_boxes
from vsa_search.vision.trunk import CNNTop, MapStore, tuned_top


def dense(top: CNNTop) -> CNNTop:
    """The top at half its output stride: the first strided depthwise convolution at stride 1, the later ones
    dilated by 2 (their padding with them), so that no weight changes."""
    convs = [block.conv_dw for stage in top.blocks for block in stage]
    if convs[0].stride != (2, 2):
        raise SystemExit("the top's first block does not halve the map: nothing to make dense")
    convs[0].stride = (1, 1)
    for conv in convs[1:]:
        if conv.stride != (1, 1) or type(conv) is not nn.Conv2d:
            raise SystemExit(f"a later strided or dynamically padded convolution: {conv}")
        conv.dilation = (2, 2)
        conv.padding = ((conv.kernel_size[0] - 1) // 2 * 2,) * 2
    return top


def build(model: str, maps: Path, boxes: Path, regions: int, stride: int, out: Path, batch: int = 64) -> int:
    m = load_align(model)
    cfg = dataclasses.replace(m.region_config, flip=False, max_regions=regions)
    ds = load_dataset("flickr8k")
    recs = list({r.image_id: r for s in ("train", "dev") for r in ds.present(s)}.values())
    with FeatureStore(boxes, readonly=True) as fs:
        held = fs.config.max_regions
    if regions > held:  # more boxes than FEATS holds: ImageNet's features of that many first
        boxes = Path(f"{out}-imagenet")
        extract_to_store({r.image_id: r.path for r in recs}, boxes,
                         dataclasses.replace(REGION_PRESETS["default"], max_regions=regions))
    with FeatureStore(out, cfg) as store, MapStore(maps, readonly=True) as ms, FeatureStore(boxes, readonly=True) as fs:
        net = tuned_top(cfg, m.top, ms.config)
        net = dense(net) if stride == 16 else net
        store.put_top(m.top)
        ids = [r.image_id for r in recs if r.image_id not in store]
        for a in range(0, len(ids), batch):
            chunk = ids[a:a + batch]
            ref = [fs.get(i) for i in chunk]
            kept = [r.boxes[:regions] for r in ref]
            x = torch.from_numpy(np.stack([ms.get(i) for i in chunk]))
            with torch.inference_mode():
                flat = pool_boxes(net(x), kept, [(int(b[0, 2]), int(b[0, 3])) for b in kept], cfg.input_size,
                                  cfg.roi_output).numpy()
            feats = np.split(flat, np.cumsum([len(b) for b in kept])[:-1])
            store.put([(i, RegionFeatures(b, f)) for i, b, f in zip(chunk, kept, feats)],
                      concepts={i: fs.concepts_bytes(i) for i in chunk})
        return len(ids)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="weights/align.pt", help="the model whose CNN top is run")
    ap.add_argument("--maps", type=Path, required=True, help="stage6 maps of the train and dev photos")
    ap.add_argument("--boxes", type=Path, required=True, help="ImageNet's features of the same photos (FEATS)")
    ap.add_argument("--regions", type=int, default=20, help="full image + proposals kept")
    ap.add_argument("--stride", type=int, choices=(16, 32), default=32, help="the top's output stride")
    ap.add_argument("--init", help="a model to continue on the store: copied as OUT/init.pt with its region count")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    n = build(a.model, a.maps, a.boxes, a.regions, a.stride, a.out)
    report = {"out": str(a.out), "photos_written": n, "regions": a.regions, "stride": a.stride}
    print(json.dumps(report) if a.json else f"{a.out}: {n} photos written ({a.regions} regions, stride {a.stride})")
    if a.init:
        init = load_align(a.init)
        save_align(init.model, init.vocab, dataclasses.replace(init.region_config, max_regions=a.regions),
                   a.out / "init.pt", init.metrics)


if __name__ == "__main__":
    main()
