"""Recall@K with the concept bridge inside the paper's score, and the tuning of its weight.

    S_kl(weight) = Σ_t max_i ( v_i · s_t + weight · bridge(t, i) / T )

over every photo x sentence of a split, for several weights in one pass (the model's dots are
computed once per chunk of photos). `tune_weight` picks the weight with the best mean Recall@K on
a split that is not the test split (Flickr8k dev)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .concepts import DEFAULT_BRIDGE, BridgeConfig, bridge_scores_many, region_probs, topk, word_weights
from .text import tokenize

WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


def _word_bridge(data: Any, cfg: BridgeConfig, backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bridge scores of every distinct sentence word against every region: (U, N, R), and the
    sentences' words as indices into U (M, T) (padding points at an all-zero row)."""
    n, r, d = data.feats.shape
    ids, probs = topk(region_probs(data.feats.reshape(-1, d).numpy(), backbone), cfg.top_k)
    tokens = [tokenize(s) for s in data.sentences]
    vocab = sorted({w for t in tokens for w in t})
    where = {w: j + 1 for j, w in enumerate(vocab)}  # 0 = padding / no word
    weights = word_weights(vocab, cfg)
    live = np.flatnonzero(weights.max(1) > 0)  # most words (function words, verbs) never bridge
    b = np.zeros((len(vocab) + 1, n * r), np.float32)
    if len(live):
        b[live + 1] = bridge_scores_many(weights[live], ids, probs)
    b = b.reshape(-1, n, r) * data.region_mask.numpy()[None].astype(np.float32)
    # The model sees at most data.ids.shape[1] tokens; an empty sentence was one UNK.
    idx = np.zeros(tuple(data.ids.shape), np.int64)
    for m, t in enumerate(tokens):
        idx[m, : len(t)] = [where[w] for w in t][: idx.shape[1]]
    return torch.from_numpy(b), torch.from_numpy(idx)


def _dots(model: Any, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """v_i · s_t as (M, T, c, R). A hybrid model's dimensions past `hidden` are global terms, the
    same for every region of a photo: they are added once instead of once per region (4x fewer
    multiplications for the shipped model)."""
    h = model.cfg.hidden
    if getattr(model, "glob", None) is None or v.shape[-1] == h:
        return torch.einsum("crh,mth->mtcr", v, s)
    local = torch.einsum("crh,mth->mtcr", v[..., :h], s[..., :h])
    glob = torch.einsum("ch,mth->mtc", v[:, 0, h:], s[..., h:])
    return local + glob[..., None]


@torch.no_grad()
def scores_with_bridge(model: Any, data: Any, weights: tuple[float, ...], cfg: BridgeConfig = DEFAULT_BRIDGE,
                       backbone: str = "tf_efficientnet_lite0", chunk: int = 10,
                       on_progress: Callable[[int], None] | None = None) -> dict[float, torch.Tensor]:
    """(N_img, N_sent) scores for each bridge weight; weight 0 equals evaluate.score_all exactly."""
    was = model.training
    model.eval()
    try:
        b, idx = _word_bridge(data, cfg, backbone)
        s = model.encode_words(data.ids, data.lengths)  # (M, T, h)
        word_mask = torch.arange(data.ids.shape[1])[None, :] < data.lengths[:, None]  # (M, T)
        per_word = getattr(model.cfg, "pool", "sum") == "mean"
        scale = 1.0 / data.lengths.clamp(min=1).float() if per_word else torch.ones(len(data.lengths))
        scale = scale[:, None, None, None]
        out: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
        for a in range(0, len(data.image_ids), chunk):
            v = model.encode_regions(data.feats[a:a + chunk])  # (c, R', h)
            rm = data.region_mask[a:a + chunk, : v.shape[1]]
            dots = _dots(model, v, s)  # (M, T, c, R')
            bridge = b[:, a:a + chunk, : v.shape[1]][idx] * scale  # (M, T, c, R')
            neg = ~rm[None, None]
            for w in weights:
                best = (dots + w * bridge).masked_fill(neg, float("-inf")).max(-1).values  # (M, T, c)
                out[w].append((best * word_mask[:, :, None]).sum(1).T)  # (c, M)
            if on_progress:
                on_progress(len(v))
        return {w: torch.cat(rows) for w, rows in out.items()}
    finally:
        model.train(was)


def recall_with_bridge(model_path: str | Path, features: str | Path, split: str = "dev",
                       weights: tuple[float, ...] = WEIGHT_GRID, cfg: BridgeConfig = DEFAULT_BRIDGE,
                       reps: int = 1000, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Recall@1/5/10 in both directions, with 95% intervals, of the model with each bridge weight on
    the `split` photos of the Flickr8k feature store."""
    from .datasets import load_flickr8k
    from .embedding import load_align
    from .evaluate import mean_recall, retrieval_data, retrieval_metrics
    from .features import FeatureStore

    loaded = load_align(model_path)
    records = load_flickr8k().present(split)
    with FeatureStore(features, readonly=True) as store:
        records = [r for r in records if r.image_id in store]
        data = retrieval_data(records, store, loaded.vocab)
    scores = scores_with_bridge(loaded.model, data, tuple(weights), cfg, loaded.region_config.backbone,
                                on_progress=on_progress)
    rows = {}
    for w, sc in scores.items():
        m = retrieval_metrics(sc, data.sent_image, (1, 5, 10), reps=reps)
        rows[w] = {"metrics": m, "mean_recall": mean_recall(m)}
    return {"split": split, "photos": len(records), "sentences": len(data.sent_image), "rows": rows}


def tune_weight(model_path: str | Path, features: str | Path, split: str = "dev",
                weights: tuple[float, ...] = WEIGHT_GRID, cfg: BridgeConfig = DEFAULT_BRIDGE,
                on_progress: Callable[[int], None] | None = None) -> tuple[float, dict[str, Any]]:
    """The bridge weight with the best mean Recall@K on `split` (never the test split); ties go to
    the smaller weight. Returns (weight, the per-weight table)."""
    from .errors import UsageError

    if split == "test":
        raise UsageError("tune the bridge weight on dev (or train), never on test")
    res = recall_with_bridge(model_path, features, split, weights, cfg, reps=0, on_progress=on_progress)
    best = max(sorted(res["rows"]), key=lambda w: (round(res["rows"][w]["mean_recall"], 6), -w))
    return best, res
