"""The paper's region-level caption comparison (`vsa eval regions`): the region generator against
the full-frame one on held-out snippets, each region seen as its RoI feature and as a crop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..align.mrf import DEFAULT_BETA
from ..align.snippets import MIN_SNIPPET_WORDS, read_snippets, snippet_groups, snippets
from ..core import paths
from ..core.config import DEFAULT_BEAM
from ..core.device import pick_device
from ..core.errors import UsageError
from ..data.datasets import load_flickr8k
from ..models.alignment import load_align
from ..models.beam import generate_captions
from ..models.captioner import load_caption
from ..vision.features import FeatureStore, require_extractor
from ..vision.images import load as load_image
from ..vision.regions import RegionEncoder
from .captions import top_store
from .metrics import caption_metrics, paper_results


def crop_features(encoder: RegionEncoder, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """Each box cut out and encoded as a photo of its own (the full-image feature of the crop):
    how a full-frame model sees a region in the paper's comparison. (len(boxes), D)."""
    crops = [image.crop(tuple(int(v) for v in b)) for b in boxes]
    whole = [np.array([[0, 0, c.width, c.height]], np.int32) for c in crops]
    out = []
    for i in range(0, len(crops), 16):
        out += [f[0] for f in encoder.encode(crops[i:i + 16], whole[i:i + 16])]
    return np.stack(out).astype(np.float32)


def evaluate_regions(region_model: str | Path, full_model: str | Path, features: str | Path,
                     snippets_path: str | Path | None = None, align_model: str | Path | None = None,
                     beta: float = DEFAULT_BETA, beam: int = DEFAULT_BEAM, split: str = "test",
                     root: Path | None = None,
                     min_words: int = MIN_SNIPPET_WORDS, device: str | None = None, meteor: bool = False,
                     on_progress: Callable[[int], None] | None = None,
                     align_features: str | Path | None = None) -> dict[str, Any]:
    """The paper's region-level comparison without region annotations: held-out snippets (the `split`
    photos' sentences aligned to their regions; from `snippets_path`, or aligned here with `align_model`)
    are the references of their region; each of the two generators describes every such region (not
    the full image) from its RoI feature and from the region cut out as a photo. BLEU/CIDEr x100.
    An aligner of a fine-tuned CNN top's features reads them from `align_features` (default: the
    evaluation cache of its extractor), over the same boxes as `features`."""
    dev = pick_device(device)
    models = {"region": load_caption(region_model, device=dev), "full": load_caption(full_model, device=dev)}
    ds = load_flickr8k(root)
    recs = {r.image_id: r for r in ds.split(split)}
    with FeatureStore(features, readonly=True) as store:
        for m in models.values():
            require_extractor(store.config, m.region_config, features, m.path)
        if snippets_path is not None:
            rows = read_snippets(snippets_path)
            source = str(snippets_path)
        else:
            aligner = load_align(paths.find_model(str(align_model or paths.ALIGN_MODEL)))
            held = [r for r in recs.values() if r.image_id in store]
            if aligner.region_config.top:  # its own features, of the same boxes (as the re-ranker's)
                with FeatureStore(top_store(aligner, align_features), readonly=True) as own:
                    require_extractor(store.config, aligner.region_config.imagenet(), features, aligner.path)
                    rows = list(snippets(aligner, own, held, beta))
            else:
                rows = list(snippets(aligner, store, held, beta))
            source = f"aligned here: {aligner.path}, beta {beta:g}"
        if bad := sorted({r["image_id"] for r in rows} - set(recs)):
            raise UsageError(f"snippets of {len(bad)} photos outside the {split} split (e.g. {bad[0]})")
        groups = snippet_groups(rows, min_words, skip_full_image=True)
        if not groups:
            raise UsageError(f"no {split} snippets of {min_words}+ words on a region other than the full image")
        keys = sorted(groups)
        roi = np.stack([store.get(i).features[r] for i, r in keys]).astype(np.float32)
        boxes = [store.get(i).boxes[r] for i, r in keys]
    encoder = RegionEncoder(models["full"].region_config, dev)
    crops = np.zeros_like(roi)
    by_image: dict[str, list[int]] = {}
    for k, (i, _) in enumerate(keys):
        by_image.setdefault(i, []).append(k)
    for image_id, ks in by_image.items():
        crops[ks] = crop_features(encoder, load_image(recs[image_id].path), np.stack([boxes[k] for k in ks]))
        if on_progress:
            on_progress(len(ks))

    refs = {f"{i}#{r}": groups[(i, r)] for i, r in keys}
    inputs = {"RoI feature": torch.from_numpy(roi), "crop as a photo": torch.from_numpy(crops)}
    rows_out: dict[str, Any] = {}
    examples: dict[str, dict[str, str]] = {k: {} for k in refs}
    for mname, label in (("full", "full-frame model"), ("region", "region model")):
        for iname, x in inputs.items():
            caps = generate_captions(models[mname], x, beam=beam, on_progress=on_progress)
            text = {k: " ".join(models[mname].vocab.decode(c.tokens)) for k, c in zip(refs, caps)}
            name = f"{label}, {iname}"
            rows_out[name] = caption_metrics(refs, text, meteor=meteor)
            rows_out[name]["distinct captions"] = len(set(text.values()))
            for k in refs:
                examples[k][name] = text[k]
    paper = paper_results().get("region_generation", {})
    return {"split": split, "photos": len(by_image), "regions": len(keys),
            "paper": {"CIDEr": paper.get("CIDEr"), "note": "COCO, human region annotations (not snippets), "
                                                           "full-frame model on crops"},
            "references": sum(len(v) for v in refs.values()), "snippets": source, "beam": beam,
            "min_words": min_words, "region_model": str(models["region"].path),
            "full_model": str(models["full"].path), "features": str(features), "rows": rows_out,
            "examples": [{"region": k, "box": [int(v) for v in boxes[n]], "references": refs[k], **examples[k]}
                         for n, k in enumerate(refs)]}
