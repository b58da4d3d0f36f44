"""The paper's caption evaluation (`vsa eval caption`): a generator's test captions beside the
nearest-neighbour baseline and the paper's figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..captioning.rerank import alignment_scores, best_candidate, default_length_norm, default_weight, load_reranker
from ..core import paths
from ..core.config import DEFAULT_BEAM
from ..core.device import pick_device
from ..core.errors import DatasetError, StoreError, UsageError
from ..data.datasets import Dataset, load_flickr8k
from ..models.beam import Caption, best, generate_candidates
from ..models.captioner import full_image, load_caption, photo_input
from ..vision.features import FeatureStore, extract_to_cache, require_extractor
from ..vision.regions import RegionFeatures
from .metrics import caption_metrics, nearest_neighbour, paper_results


def evaluate_captions(model: str | Path, features: str | Path | None = None, beam: int = DEFAULT_BEAM,
                      length_norm: float | None = None, device: str | None = None, root: Path | None = None,
                      meteor: bool = True, on_extract: Callable[[int], None] | None = None,
                      on_progress: Callable[[int], None] | None = None, dataset: Dataset | None = None,
                      split: str = "test", rerank_with: str | Path | None = None,
                      rerank_weight: float | None = None,
                      rerank_features: str | Path | None = None) -> dict[str, Any]:
    """The paper's caption table for the `split` photos present of `dataset` (default: Flickr8k's
    test split; "all": every photo), in one run: this model, the nearest-neighbour baseline (the first
    reference sentence of the closest training-split photo of the same data set, cosine on full-image
    features; none when the data set has no training split) and the paper's published figures.

    Features come from the store `features` (it must be made with the model's region config) or,
    when None, are extracted once into the cache (extract_to_cache) (test photos and, for the baseline,
    training photos).

    rerank_with: the alignment model that picks among the finished beams (captioning/rerank.py; None: the
    shipped one when it fits, "none": beam search alone); the table then shows the captions with and
    without it. A re-ranker of a fine-tuned CNN top's features reads them from `rerank_features` (see
    reranker_features)."""
    loaded = load_caption(model, device=pick_device(device))
    align = load_reranker(None if rerank_with is None else str(rerank_with), loaded, pick_device(device))
    rerank_weight = default_weight(loaded) if rerank_weight is None else rerank_weight
    length_norm = default_length_norm(loaded) if length_norm is None else length_norm
    ds = dataset if dataset is not None else load_flickr8k(root)
    test = ds.present(split)
    test_ids = {r.image_id for r in test}
    train = [r for r in ds.present("train") if r.image_id not in test_ids]
    if not test:
        hint = " (a data set without splits, such as a COCO captions file, is --split all)" if split != "all" else ""
        raise DatasetError(f"no {split} photos of the {ds.name} data set on disk{hint}")
    if features is None:
        features = extract_to_cache({r.image_id: r.path for r in test + train}, loaded.region_config, device,
                                    on_extract)
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, loaded.region_config, features, loaded.path)
        test = [r for r in test if r.image_id in store]
        train = [r for r in train if r.image_id in store]
        if not test:
            raise StoreError(f"{features}: holds none of the {len(test_ids)} {split} photos")
        got = [store.get(r.image_id) for r in test]
        test_feats = torch.stack([full_image(f) for f in got])  # (M, D) for the nearest neighbour
        model_in = torch.stack([photo_input(f, loaded.config) for f in got])  # the generator's input
        train_feats = torch.stack([full_image(store.get(r.image_id)) for r in train]) if train else None

    region_feats = reranker_features(align, rerank_features, features, dict(zip((r.image_id for r in test), got))) \
        if align is not None else []
    cands = generate_candidates(loaded, model_in, beam=beam, length_norm=length_norm, on_progress=on_progress,
                                stop_at_best=align is None)
    beam_caps = [best(c) for c in cands]
    caps = [best_candidate(c, loaded.vocab, align, f, rerank_weight) for c, f in zip(cands, region_feats)] \
        if align is not None else beam_caps
    model_text = {r.image_id: " ".join(loaded.vocab.decode(c.tokens)) for r, c in zip(test, caps)}
    nn_text: dict[str, str] = {}
    if train_feats is not None:
        nn_idx = nearest_neighbour(train_feats, test_feats).tolist()
        nn_text = {r.image_id: train[j].sentences[0] for r, j in zip(test, nn_idx)}
    refs = {r.image_id: list(r.sentences) for r in test}

    paper = paper_results()["generation"]["flickr8k"]
    rows = {"this model": caption_metrics(refs, model_text, meteor=meteor)}
    rows["this model"]["distinct captions"] = len(set(model_text.values()))
    if align is not None:
        beam_text = {r.image_id: " ".join(loaded.vocab.decode(c.tokens)) for r, c in zip(test, beam_caps)}
        rows["this model, beam only"] = caption_metrics(refs, beam_text, meteor=meteor)
        rows["this model, beam only"]["distinct captions"] = len(set(beam_text.values()))
    if nn_text:
        rows["nearest neighbour"] = caption_metrics(refs, nn_text, meteor=meteor)
        rows["nearest neighbour"]["distinct captions"] = len(set(nn_text.values()))
    rows["paper (Flickr8k, 1,000 test)"] = {k: paper.get(k) for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
                                                                       "METEOR", "CIDEr")}
    return {
        "model": str(loaded.path), "cell": loaded.config.cell, "beam": beam, "length_norm": length_norm,
        "rerank": _rerank_row(align, rerank_weight, rerank_features),
        "features": str(features), "dataset": ds.name, "split": split, "test_photos": len(test),
        "train_photos_for_nn": len(train), "rows": rows,
        "note": (f"this model and the baseline: the {len(test):,} {split} photos of {ds.name} present here; "
                 "the paper: Flickr8k's 1,000 test images (its Flickr8k figures are unconfirmed, see "
                 "paper_results.json); CIDEr [lo-hi]: 95% bootstrap interval over photos"),
        "captions": [{"image": r.image_id, "model": model_text[r.image_id], "logprob": round(c.logprob, 3),
                      "nearest_neighbour": nn_text.get(r.image_id)} for r, c in zip(test, caps)],
    }


RERANK_GRID = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)
BLEU_TIE = 0.1  # BLEU-4 points within which two re-rankings of 1,000 photos count as level (then CIDEr decides)


def tune_rerank_weight(model: str | Path, features: str | Path, split: str = "dev",
                       weights: tuple[float, ...] = RERANK_GRID, beam: int = DEFAULT_BEAM, device: str | None = None,
                       dataset: Dataset | None = None, rerank_with: str | Path | None = None,
                       on_progress: Callable[[int], None] | None = None,
                       rerank_features: str | Path | None = None,
                       length_norms: tuple[float, ...] = (0.0,), meteor: bool = False) -> tuple[float, dict[str, Any]]:
    """The re-ranking weight and length normalisation (captioning/rerank.py) chosen on the `split` photos of
    `dataset` (default: Flickr8k dev; never test) in the store `features`, by pick_rerank's rule. One beam
    search: every pair re-ranks the same finished beams; a re-ranker of a fine-tuned CNN top's features reads
    them from `rerank_features` (see reranker_features). Returns (weight, {"rows": [{length_norm, weight,
    BLEU-4, CIDEr, distinct captions, words a caption, and METEOR if `meteor`}], "length_norm": the chosen
    one, ...})."""
    if split == "test":
        raise UsageError("choose the re-ranking weight on dev (or train), never on test")
    loaded = load_caption(model, device=pick_device(device))
    align = load_reranker(None if rerank_with is None else str(rerank_with), loaded, pick_device(device))
    if align is None:
        raise UsageError(f"{loaded.path}: no alignment model of its features to re-rank with (give --rerank)")
    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, loaded.region_config, features, loaded.path)
        recs = [r for r in ds.present(split) if r.image_id in store]
        if not recs:
            raise StoreError(f"{features}: holds none of the {split} photos of {ds.name}")
        stored = [store.get(r.image_id) for r in recs]
    got = reranker_features(align, rerank_features, features, dict(zip((r.image_id for r in recs), stored)))
    cands = generate_candidates(loaded, torch.stack([photo_input(f, loaded.config) for f in stored]), beam=beam,
                                on_progress=on_progress)
    texts = [[" ".join(loaded.vocab.decode(c.tokens)) for c in cs] for cs in cands]
    fit = [alignment_scores(align, f, t) for f, t in zip(got, texts)]  # S' once per photo and candidate
    refs = {r.image_id: list(r.sentences) for r in recs}
    rows = []
    for a in length_norms:
        for w in weights:  # what best_candidate picks, the beams ranked with length_norm a
            pick = {r.image_id: t[int(np.argmax([Caption.ranked(c.tokens, c.logprob, a).score + w * float(s)
                                                 for c, s in zip(cs, f)]))]
                    for r, cs, t, f in zip(recs, cands, texts, fit)}
            m = caption_metrics(refs, pick, meteor=meteor, reps=0)
            rows.append({"length_norm": a, "weight": w, "BLEU-4": m["BLEU-4"], "CIDEr": m["CIDEr"],
                         **({"METEOR": m["METEOR"]} if meteor else {}), "distinct captions": len(set(pick.values())),
                         "words": float(np.mean([len(t.split()) for t in pick.values()]))})
    best = pick_rerank(rows)
    where = top_store(align, rerank_features)
    return best["weight"], {"model": str(loaded.path), "rerank": str(align.path), "dataset": ds.name,
                            "split": split, "photos": len(recs), "beam": beam, "rows": rows,
                            "length_norm": best["length_norm"],
                            "rule": rerank_rule(meteor, split),
                            **({"rerank_features": str(where)} if where is not None else {})}


def pick_rerank(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The pair of re-ranking rows (length_norm, weight, BLEU-4, CIDEr, METEOR if measured) that the rule
    picks. With METEOR: the best sum of BLEU-4 and METEOR, in points (BLEU-4 alone favours short captions,
    METEOR long ones; a caption needs both); within BLEU_TIE of that sum the best CIDEr. Without: those within
    BLEU_TIE of the best BLEU-4 are level, and of them the best CIDEr. Ties: the smaller weight, then the
    smaller normalisation."""
    with_meteor = all(r.get("METEOR") is not None for r in rows)

    def key(r: dict[str, Any]) -> float:
        return r["BLEU-4"] + (r["METEOR"] if with_meteor else 0.0)

    best = max(map(key, rows))
    level = [r for r in rows if key(r) >= best - BLEU_TIE]
    return max(level, key=lambda r: (round(r["CIDEr"], 6), -r["weight"], -r["length_norm"]))


def rerank_rule(meteor: bool, split: str) -> str:
    """pick_rerank's rule in words."""
    what = "BLEU-4 + METEOR" if meteor else "BLEU-4"
    return f"the best {split} CIDEr within {BLEU_TIE} of the best {split} {what}"


def top_store(align: Any, rerank_features: str | Path | None) -> Path | None:
    """Where an alignment model of a fine-tuned CNN top's features (a re-ranker, an aligner) finds them:
    `rerank_features`, by default the evaluation cache of its extractor ($VSA_HOME/cache/features/<extractor
    id>, as `eval recall`'s); None for a model of ImageNet's features (the captioner's own)."""
    if align is None or not align.region_config.top:
        return None
    return Path(rerank_features) if rerank_features is not None else \
        paths.cache_dir() / "features" / align.region_config.extractor_id()


def reranker_features(align: Any, rerank_features: str | Path | None, features: str | Path,
                      stored: dict[str, RegionFeatures]) -> list[np.ndarray]:
    """The region features the re-ranker scores, photo by photo of `stored` (image id -> its features in the
    captioner's store `features`): those themselves, or for a re-ranker of a fine-tuned CNN top those of the
    same boxes in a store of its extractor (top_store), which must hold every photo."""
    where = top_store(align, rerank_features)
    if where is None:
        return [f.features for f in stored.values()]
    if not (where / "data.mdb").exists():
        raise StoreError(f"{where}: no store of {align.path}'s features (CNN top {align.region_config.top}); "
                         "extract the photos with its extractor, or give --rerank-features")
    with FeatureStore(where, readonly=True) as store:
        require_extractor(store.config, align.region_config, where, align.path)
        missing = [i for i in stored if i not in store]
        if missing:
            raise StoreError(f"{where}: lacks {len(missing):,} of the {len(stored):,} photos to caption "
                             f"(such as {missing[0]}); extract them with {align.path}'s extractor")
        out = []
        for image_id, f in stored.items():
            g = store.get(image_id)
            if not np.array_equal(g.boxes, f.boxes):
                raise StoreError(f"{where}: the regions of {image_id} are not those in {features}")
            out.append(g.features)
    return out


def _rerank_row(align: Any, weight: float, rerank_features: str | Path | None) -> dict[str, Any] | None:
    if align is None:
        return None
    where = top_store(align, rerank_features)
    return {"model": str(align.path), "weight": weight, **({"features": str(where)} if where is not None else {})}
