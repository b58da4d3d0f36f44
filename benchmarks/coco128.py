"""Open-vocabulary search, pointing and captions on coco128 (126 COCO photos, 80 classes, never
trained on), each with and without the concept bridge, in one run; and Flickr8k Recall@K with and
without it.

    PYTHONPATH=. .venv/bin/python benchmarks/coco128.py --model weights/align.pt \\
        --caption-model weights/caption.pt --flickr-features FEATS [--tune] [--json out.json]

- search: for each class present, the query "a <class>" over the 126 photos; mean average precision
  and precision@5 against the photos holding that class (chance: the class's share of photos);
- pointing game: for each relevant photo in a class's top 5, is the centre of the box that the
  class's word matched (the name's last scored word: "bear" of "teddy bear") inside a ground-truth
  box of that class;
- captions: the share of photos whose caption names one of their labelled classes, with the
  synonym list `SYNONYMS` below (the class name, its plural, and a few everyday words for it);
- Flickr8k (with --flickr-features): test-split Recall@K with 95% intervals, without and with the
  bridge; with --tune the weight is first re-tuned on the dev split (never test) and used here.

coco128 only measures: no choice is made on it. The shipped bridge weight comes from Flickr8k dev alone:

    PYTHONPATH=. .venv/bin/python benchmarks/coco128.py --tune-only --flickr-features FEATS --flickr-photos 200

prints the dev curve, the weight of the shipped rule (the largest within --tolerance 1.5 points of the best
dev mean Recall@K) and the best one, and stops before coco128 or any test photo is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vsa_search.bridge import weight as bridge_w
from vsa_search.bridge.words import BridgeConfig
from vsa_search.captioning import constrained as conscap
from vsa_search.captioning.rerank import best_candidate, default_weight, load_reranker
from vsa_search.core import paths
from vsa_search.data.text import tokenize
from vsa_search.evaluation import openvocab as openvocab_eval
from vsa_search.index import generation, openvocab
from vsa_search.index import query as vsearch
from vsa_search.index import store as vindex
from vsa_search.index.layout import Location
from vsa_search.models.alignment import load_align
from vsa_search.models.beam import generate_candidates
from vsa_search.models.captioner import load_caption, photo_input
from vsa_search.models.encode import photo_offset
from vsa_search.vision import concepts
from vsa_search.vision.features import FeatureStore, extract_to_store

# Words that count as naming a class in a caption (class name first). Plurals are added below.
SYNONYMS: dict[str, list[str]] = {
    "person": ["person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
               "baby", "player", "lady", "guy", "skier", "surfer", "skateboarder", "snowboarder", "rider",
               "biker", "climber", "swimmer", "crowd", "toddler"],
    "bicycle": ["bicycle", "bike", "cyclist"], "car": ["car", "taxi", "cab", "jeep", "convertible"],
    "motorcycle": ["motorcycle", "motorbike", "moped", "scooter", "dirt bike"],
    "airplane": ["airplane", "plane", "airliner", "jet", "aircraft"], "bus": ["bus"],
    "train": ["train", "locomotive"], "truck": ["truck", "pickup", "lorry"], "boat": ["boat", "ship", "canoe", "kayak"],
    "traffic light": ["traffic light"], "fire hydrant": ["fire hydrant", "hydrant"], "stop sign": ["stop sign"],
    "parking meter": ["parking meter"], "bench": ["bench"], "bird": ["bird", "duck", "seagull", "pigeon", "goose"],
    "cat": ["cat", "kitten"], "dog": ["dog", "puppy", "poodle", "terrier", "retriever", "hound", "collie"],
    "horse": ["horse", "pony"], "sheep": ["sheep", "lamb"], "cow": ["cow", "cattle", "bull", "ox"],
    "elephant": ["elephant"], "bear": ["bear"], "zebra": ["zebra"], "giraffe": ["giraffe"],
    "backpack": ["backpack"], "umbrella": ["umbrella"], "handbag": ["handbag", "purse", "bag"], "tie": ["tie"],
    "suitcase": ["suitcase", "luggage"], "frisbee": ["frisbee"], "skis": ["ski", "skis"], "snowboard": ["snowboard"],
    "sports ball": ["ball", "football", "soccer ball", "basketball", "baseball", "tennis ball"],
    "kite": ["kite"], "baseball bat": ["bat"], "baseball glove": ["glove", "mitt"], "skateboard": ["skateboard"],
    "surfboard": ["surfboard"], "tennis racket": ["racket", "racquet"], "bottle": ["bottle"],
    "wine glass": ["wine glass", "glass"], "cup": ["cup", "mug"], "fork": ["fork"], "knife": ["knife"],
    "spoon": ["spoon"], "bowl": ["bowl"], "banana": ["banana"], "apple": ["apple"], "sandwich": ["sandwich"],
    "orange": ["orange"], "broccoli": ["broccoli"], "carrot": ["carrot"], "hot dog": ["hot dog", "hotdog"],
    "pizza": ["pizza"], "donut": ["donut", "doughnut"], "cake": ["cake"], "chair": ["chair"],
    "couch": ["couch", "sofa"], "potted plant": ["plant", "flower"], "bed": ["bed"],
    "dining table": ["table"], "toilet": ["toilet"], "tv": ["tv", "television", "screen", "monitor"],
    "laptop": ["laptop", "computer"], "mouse": ["mouse"], "remote": ["remote", "remote control"],
    "keyboard": ["keyboard"], "cell phone": ["phone", "cellphone"], "microwave": ["microwave"], "oven": ["oven"],
    "toaster": ["toaster"], "sink": ["sink"], "refrigerator": ["refrigerator", "fridge"], "book": ["book"],
    "clock": ["clock"], "vase": ["vase"], "scissors": ["scissors"], "teddy bear": ["teddy bear", "teddy"],
    "hair drier": ["hair drier", "hair dryer"], "toothbrush": ["toothbrush"],
}


def synonym_phrases(name: str) -> list[list[str]]:
    out = []
    for s in SYNONYMS.get(name, [name]):
        t = tokenize(s)
        out += [t, t[:-1] + [t[-1] + "s"], t[:-1] + [t[-1] + "es"]]
    if name == "person":
        out += [["men"], ["women"], ["children"], ["people"]]
    return out


def names_class(caption: str, name: str) -> bool:
    toks = tokenize(caption)
    return any(toks[i:i + len(p)] == p for p in synonym_phrases(name) for i in range(len(toks) - len(p) + 1))


def load_coco(root: Path) -> tuple[dict[int, str], dict[str, Path], dict[str, list[tuple[int, np.ndarray]]]]:
    classes = {int(k): v for k, v in json.loads((root / "classes.json").read_text()).items()}
    photos = {p.name: p for p in sorted((root / "images").glob("*.jpg"))}
    labels: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name in photos:
        rows = []
        for line in (root / "labels" / (Path(name).stem + ".txt")).read_text().splitlines():
            if line.strip():
                c, *xywh = line.split()
                rows.append((int(c), np.array([float(v) for v in xywh])))
        labels[name] = rows
    return classes, photos, labels


def average_precision(ranked_relevant: np.ndarray, n_relevant: int) -> float:
    hits = np.cumsum(ranked_relevant)
    prec = hits / np.arange(1, len(ranked_relevant) + 1)
    return float((prec * ranked_relevant).sum() / max(n_relevant, 1))


def inside(box: list[int], size: tuple[int, int], gts: list[np.ndarray]) -> bool:
    cx, cy = (box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]
    return any(abs(cx - g[0]) <= g[2] / 2 and abs(cy - g[1]) <= g[3] / 2 for g in gts)


def search_rows(ix, model, classes, photos, labels, sizes, weight: float | None) -> dict:
    """mAP, P@5 and the pointing game of the queries "a <class>" (weight None: today's search)."""
    present = sorted({c for rows in labels.values() for c, _ in rows})
    aps, p5s, points, tried = [], [], 0, 0
    unscored = set()
    for c in present:
        name = classes[c]
        query = f"a {name}"
        if weight is None:
            try:
                res = vsearch.search_text(ix, model, query, k=len(photos))
            except Exception:  # a query of words the model does not know: today's search refuses it
                res = None
        else:
            res = openvocab.search_text(ix, model, query, k=len(photos),
                                        cfg=BridgeConfig(weight=weight))
        keys = [Path(h.key).name for h in res.hits] if res else []
        keys += [k for k in sorted(photos) if k not in set(keys)]  # unranked photos go last, in name order
        rel = np.array([any(cc == c for cc, _ in labels[k]) for k in keys], float)
        aps.append(average_precision(rel, int(rel.sum())))
        p5s.append(float(rel[:5].mean()))
        name_words = tokenize(name)
        for rank, h in enumerate(res.hits[:5] if res else []):
            key = Path(h.key).name
            if not rel[rank]:
                continue
            tried += 1
            matched = {m.word: m.box for m in h.words}
            word = next((w for w in reversed(name_words) if w in matched), None)
            if word is None:
                unscored.add(name)
                continue
            points += inside(matched[word], sizes[key], [g for cc, g in labels[key] if cc == c])
    return {"classes": len(present), "mAP": 100 * float(np.mean(aps)), "P@5": 100 * float(np.mean(p5s)),
            "pointing": 100 * points / max(tried, 1), "pointing_photos": tried,
            "classes_without_scored_word": sorted(unscored)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="align")
    ap.add_argument("--caption-model", default="caption")
    ap.add_argument("--coco", type=Path, default=paths.shared_dir() / "data" / "coco128")
    ap.add_argument("--flickr-features", type=Path, default=None,
                    help="Flickr8k feature store (vsa features extract): test Recall@K, and dev for --tune")
    ap.add_argument("--flickr-photos", type=int, default=None,
                    help="only the first N photos of each Flickr8k split (default: all present)")
    ap.add_argument("--tune", action="store_true", help="re-tune the bridge weight on Flickr8k dev first")
    ap.add_argument("--tune-only", action="store_true",
                    help="tune on Flickr8k dev, print the curve and the weight, and stop (no coco128, no test)")
    ap.add_argument("--tolerance", type=float, default=bridge_w.SHIPPED_TOLERANCE,
                    help="--tune: the largest weight within this many mean Recall@K points of the best "
                         "(the shipped rule: %(default)s; 0: the best)")
    ap.add_argument("--weight", type=float, default=None, help="bridge weight (default: the model's / tuned)")
    ap.add_argument("--write-weight", action="store_true",
                    help="with --tune: store the tuned weight in the model file, where the product reads it")
    ap.add_argument("--beam", type=int, default=7)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--coco-features", type=Path, default=None,
                    help="keep coco128's feature store here (outside the repo) and reuse it on the next run")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure and caption here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_align(paths.find_model(args.model))
    capm = load_caption(paths.find_model(args.caption_model))
    report: dict = {"model": str(model.path), "caption_model": str(capm.path)}

    weight = args.weight if args.weight is not None else bridge_w.bridge_weight(model)
    if args.tune or args.tune_only:
        if args.flickr_features is None:
            sys.exit("--tune needs --flickr-features")
        weight, table = openvocab_eval.tune_weight(model.path, args.flickr_features, "dev",
                                                   photos=args.flickr_photos, tolerance=args.tolerance)
        report["tuning"] = {str(w): round(r["mean_recall"], 2) for w, r in table["rows"].items()}
        print(f"bridge weight tuned on Flickr8k dev ({table['photos']} photos, {table['sentences']} sentences): "
              f"{weight} ({table['rule']}; the best: {table['best']}); the model file says "
              f"{bridge_w.bridge_weight(model)}")
        print("  mean Recall@K by weight: "
              + ", ".join(f"{w}: {r['mean_recall']:.2f}" for w, r in table["rows"].items()))
        if args.write_weight:
            bridge_w.store_weight(model.path, weight, {"split": "dev", "photos": table["photos"],
                                                             "mean_recall": report["tuning"], "rule": table["rule"]})
            print(f"  stored in {model.path} (metrics.bridge_weight)")
        if args.tune_only:
            return
    report["weight"] = weight

    classes, photos, labels = load_coco(args.coco)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        store_path = args.coco_features or Path(tmp) / "feats"
        extract_to_store(photos, store_path, model.region_config, top=model.top)
        with FeatureStore(store_path, readonly=True) as store:
            feats = {k: store.get(k) for k in photos}
            cons = {k: store.concepts(k) for k in photos}
        sizes = {k: (int(f.boxes[0][2]), int(f.boxes[0][3])) for k, f in feats.items()}
        items = []
        for k in sorted(photos, key=lambda k: str(photos[k].absolute())):
            with torch.inference_mode():
                v = model.model.encode_regions(torch.from_numpy(feats[k].features)[None])[0].float().numpy()
            v16 = v.astype(np.float16)  # as an index build stores it, with its querybank offset
            items.append(generation.Item(str(photos[k].absolute()), {"path": str(photos[k].absolute())},
                                         v16, feats[k].boxes[: len(v)], cons[k].to_bytes(), photo_offset(model, v16)))
        loc = Location(Path(tmp) / "index")
        generation.write_generation(loc, "photos", iter(items), model.model.out_dim, generation.model_info(model),
                                    "flat")
        with vindex.FragmentIndex(loc) as ix:
            report["search"] = {"without bridge": search_rows(ix, model, classes, photos, labels, sizes, None),
                                "with bridge": search_rows(ix, model, classes, photos, labels, sizes, weight)}
        regions = sum(len(c) for c in cons.values())
        stored = sum(len(c.to_bytes()) for c in cons.values())  # what the store and the index keep per photo
        report["bytes_per_region"] = {f"concepts (top {concepts.TOP_K})": round(stored / regions, 2),
                                      "features (float16)": 2 * feats[next(iter(feats))].features.shape[1],
                                      "index vector (float16)": 2 * model.model.out_dim}

    # Captions, without and with the concepts.
    keys = sorted(photos)
    full = torch.stack([photo_input(feats[k], capm.config) for k in keys])
    # Without the bridge: what `vsa caption` writes (the beams re-ranked by the alignment model when it fits).
    reranker = load_reranker(None, capm)
    cands = generate_candidates(capm, full, beam=args.beam)
    plain = [" ".join(capm.vocab.decode(best_candidate(c, capm.vocab, reranker, feats[k].features,
                                                       default_weight(capm)).tokens)) for c, k in zip(cands, keys)]
    guided = [conscap.caption_with_concepts(capm, full[i], cons[k], beam=args.beam) for i, k in enumerate(keys)]
    names = {k: sorted({classes[c] for c, _ in labels[k]}) for k in keys}
    hit_plain = [any(names_class(p, n) for n in names[k]) for k, p in zip(keys, plain)]
    hit_guided = [any(names_class(g["caption"], n) for n in names[k]) for k, g in zip(keys, guided)]
    report["captions"] = {"photos": len(keys), "without bridge": 100 * float(np.mean(hit_plain)),
                          "with bridge": 100 * float(np.mean(hit_guided)),
                          "constrained": sum(bool(g["constraints"]) for g in guided)}
    report["caption_examples"] = [{"photo": k, "labels": names[k], "without": p, "with": g["caption"],
                                   "constraints": g["constraints"]} for k, p, g in zip(keys, plain, guided)]

    if args.flickr_features is not None:
        res = openvocab_eval.recall_with_bridge(model.path, args.flickr_features, "test", (0.0, weight),
                                                photos=args.flickr_photos)
        report["flickr8k_test"] = {"photos": res["photos"], "sentences": res["sentences"],
                                   "rows": {str(w): r["metrics"] for w, r in res["rows"].items()}}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_table(r: dict) -> None:
    s0, s1 = r["search"]["without bridge"], r["search"]["with bridge"]
    print(f"\ncoco128 ({s0['classes']} classes present, 126 photos); model {Path(r['model']).name}, "
          f"captions {Path(r['caption_model']).name}, bridge weight {r['weight']}")
    print("| measure | without bridge | with bridge |\n|---|---|---|")
    print(f"| class search mAP | {s0['mAP']:.1f} | {s1['mAP']:.1f} |")
    print(f"| class search precision@5 | {s0['P@5']:.1f} | {s1['P@5']:.1f} |")
    print(f"| pointing game (relevant photos in the top 5) | {s0['pointing']:.1f} ({s0['pointing_photos']}) "
          f"| {s1['pointing']:.1f} ({s1['pointing_photos']}) |")
    c = r["captions"]
    print(f"| captions naming a labelled class | {c['without bridge']:.1f} | {c['with bridge']:.1f} "
          f"({c['constrained']} photos constrained) |")
    if "flickr8k_test" in r:
        f = r["flickr8k_test"]
        w0, w1 = list(f["rows"].values())[0], list(f["rows"].values())[-1]
        for d, label in (("image_annotation", "annotation"), ("image_search", "search")):
            for k in (1, 5, 10):
                lo, hi = w0[d][f"R@{k}_ci"]
                v1 = w1[d][f"R@{k}"]
                ok = "within" if lo <= v1 <= hi else ("above" if v1 > hi else "BELOW")
                print(f"| Flickr8k test {label} R@{k} ({f['photos']} photos) | {w0[d][f'R@{k}']:.1f} "
                      f"[{lo:.1f}-{hi:.1f}] | {v1:.1f} ({ok}) |")
    print("bytes per region: " + ", ".join(f"{k} {v:g}" for k, v in r["bytes_per_region"].items()))
    print(f"({r['seconds']} s)")


if __name__ == "__main__":
    main()
