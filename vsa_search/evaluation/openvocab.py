"""Recall@K with the concept bridge inside the paper's score, and the tuning of its weight.

    S_kl(weight) = Σ_t max_i ( v_i · s_t + weight · bridge(t, i) / T )

over every photo x sentence of a split, for several weights in one pass (the model's dots are
computed once per chunk of photos). `tune_weight` picks the weight on a split that is not the test
split (Flickr8k dev): the largest one whose mean Recall@K is within a tolerance of the best."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bridge.scores import sentence_bridge
from ..bridge.weight import SHIPPED_TOLERANCE, WEIGHT_GRID, pick_weight
from ..bridge.words import DEFAULT_BRIDGE, BridgeConfig
from ..models.score import flat_words, mask_regions, shared_width, split, sum_words, word_mask


@torch.no_grad()
def scores_with_bridge(model: Any, data: Any, weights: tuple[float, ...], cfg: BridgeConfig = DEFAULT_BRIDGE,
                       backbone: str = "tf_efficientnet_lite0", chunk: int = 20,
                       on_progress: Callable[[int], None] | None = None) -> dict[float, torch.Tensor]:
    """(N_img, N_sent) scores for each bridge weight; weight 0 equals recall.score_all.

    Words run flat (no padding), and only the few words with a bridge (nouns that name or resemble
    a class) are re-maximised per weight; every other word's best region is the model's alone."""
    was = model.training
    model.eval()
    try:
        # The model sees at most data.ids.shape[1] tokens; an empty sentence was one UNK.
        b, idx = (torch.from_numpy(x) for x in sentence_bridge(
            data.feats.numpy(), data.region_mask.numpy(), data.sentences, data.ids.shape[1], cfg, backbone))
        wm = word_mask(data.lengths, data.ids.shape[1])  # (M, T)
        s_flat, sent_of = flat_words(model.encode_words(data.ids, data.lengths), wm)  # (W, h), (W,)
        word_of = idx[wm]  # (W,) row of b
        # The hybrid split: a global part is the same for every region of a photo, so it is added
        # once per photo instead of once per region (4x fewer multiplications for the shipped model).
        shared = shared_width(model)
        sl, sg = split(s_flat, shared)
        live = torch.from_numpy(np.flatnonzero(b.reshape(len(b), -1).max(1).values.numpy() > 0))
        bridged = torch.nonzero(torch.isin(word_of, live)).flatten()  # (P,) words with a bridge
        per_word = getattr(model.cfg, "pool", "sum") == "mean"
        lengths = data.lengths.clamp(min=1).float()
        scale = (1.0 / lengths if per_word else torch.ones_like(lengths))[sent_of[bridged]][:, None, None]
        out: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
        for a in range(0, len(data.image_ids), chunk):
            v = model.encode_regions(data.feats[a:a + chunk])  # (c, R', h)
            c, r = v.shape[:2]
            vl, vg = split(v, shared)
            local = (sl @ vl.reshape(c * r, -1).T).view(len(sl), c, r)  # (W, c, R')
            local = mask_regions(local, data.region_mask[a:a + chunk, :r][None])
            glob = sg @ vg[:, 0].T if shared else 0.0  # (W, c)
            best0 = local.amax(-1) + glob  # (W, c): each word's best region, model only
            bl = local[bridged]  # (P, c, R')
            br = b[word_of[bridged]][:, a:a + c, :r] * scale  # (P, c, R')
            gb = glob[bridged] if shared else 0.0
            for w in weights:
                tok = best0.clone()
                if w != 0.0 and len(bridged):
                    tok[bridged] = (bl + w * br).amax(-1) + gb  # the bridge inside the max
                out[w].append(sum_words(tok.T, sent_of, len(data.lengths)))  # (c, M)
            if on_progress:
                on_progress(c)
        return {w: torch.cat(rows) for w, rows in out.items()}
    finally:
        model.train(was)


def recall_with_bridge(model_path: str | Path, features: str | Path, split: str = "dev",
                       weights: tuple[float, ...] = WEIGHT_GRID, cfg: BridgeConfig = DEFAULT_BRIDGE,
                       reps: int = 1000, on_progress: Callable[[int], None] | None = None,
                       photos: int | None = None, dataset: Any = None) -> dict[str, Any]:
    """Recall@1/5/10 in both directions, with 95% intervals, of the model with each bridge weight on
    the `split` photos of `dataset` (default: Flickr8k) in the feature store (the first `photos` of
    them in the split's order, when given: the candidate pool is then that many photos)."""
    from ..data.datasets import load_flickr8k
    from ..models.alignment import load_align
    from ..vision.features import FeatureStore
    from .metrics import mean_recall, retrieval_metrics
    from .recall import querybank_offsets, retrieval_data

    loaded = load_align(model_path)
    records = (dataset if dataset is not None else load_flickr8k()).present(split)
    with FeatureStore(features, readonly=True) as store:
        records = [r for r in records if r.image_id in store][:photos]
        data = retrieval_data(records, store, loaded.vocab)
    scores = scores_with_bridge(loaded.model, data, tuple(weights), cfg, loaded.region_config.backbone,
                                on_progress=on_progress)
    p_off, s_off = querybank_offsets(loaded, data)  # as search and eval recall score (zeros without a bank)
    scores = {w: sc - p_off[:, None] - s_off[None, :] for w, sc in scores.items()}
    rows = {}
    for w, sc in scores.items():
        m = retrieval_metrics(sc, data.sent_image, (1, 5, 10), reps=reps)
        rows[w] = {"metrics": m, "mean_recall": mean_recall(m)}
    return {"split": split, "photos": len(records), "sentences": len(data.sent_image), "rows": rows}


def tune_weight(model_path: str | Path, features: str | Path, split: str = "dev",
                weights: tuple[float, ...] = WEIGHT_GRID, cfg: BridgeConfig = DEFAULT_BRIDGE,
                on_progress: Callable[[int], None] | None = None, photos: int | None = None,
                tolerance: float = SHIPPED_TOLERANCE, dataset: Any = None) -> tuple[float, dict[str, Any]]:
    """The bridge weight chosen on `split` (never the test split): the largest weight whose mean
    Recall@K is within `tolerance` points of the best (0: the best, ties to the smaller weight).
    Returns (weight, the per-weight table, with "best" (the argmax) and "rule" added)."""
    from ..core.errors import UsageError

    if split == "test":
        raise UsageError("tune the bridge weight on dev (or train), never on test")
    if tolerance < 0:
        raise UsageError(f"the tolerance is in Recall@K points, at least 0 (got {tolerance})")
    res = recall_with_bridge(model_path, features, split, weights, cfg, reps=0, on_progress=on_progress,
                             photos=photos, dataset=dataset)
    return pick_weight({w: r["mean_recall"] for w, r in res["rows"].items()}, tolerance), res | {
        "best": pick_weight({w: r["mean_recall"] for w, r in res["rows"].items()}, 0.0),
        "rule": f"the largest weight whose {split} mean Recall@K is within {tolerance:g} of the best"}
