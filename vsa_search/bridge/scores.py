"""Bridge scores: query words against regions through the regions' classes, and a photo's classes
listed by name.

    bridge(w, region) = Σ_k p_k · weights[w, c_k]        (weights: words.word_weights)"""

from __future__ import annotations

import numpy as np

from ..data.text import tokenize
from ..vision.concepts import Concepts, region_probs, topk
from .words import DEFAULT_BRIDGE, BridgeConfig, display_name, word_weights


def bridge_scores(weights: np.ndarray, concepts: Concepts) -> np.ndarray:
    """bridge(w, region) = Σ_k p_k · weights[w, c_k]: (W, 1000) x one photo's (R, K) -> (W, R)."""
    ids = concepts.ids.astype(np.int64)
    return (weights[:, ids] * concepts.probs.astype(np.float32)[None]).sum(-1)


def bridge_scores_many(weights: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The same over many regions at once: ids, probs (N, K) -> (W, N)."""
    out = np.zeros((len(weights), len(ids)), np.float32)
    p = probs.astype(np.float32)
    for k in range(ids.shape[1]):
        out += weights[:, ids[:, k].astype(np.int64)] * p[None, :, k]
    return out


def sentence_bridge(feats: np.ndarray, region_mask: np.ndarray, sentences: list[str], max_words: int,
                    cfg: BridgeConfig = DEFAULT_BRIDGE,
                    backbone: str = "tf_efficientnet_lite0") -> tuple[np.ndarray, np.ndarray]:
    """Bridge scores of every distinct word of `sentences` against every region of photos' CNN
    features feats (N, R, D) with region_mask (N, R): (U + 1, N, R) float32, row 0 all zero; and the
    sentences' words as rows of it (M, max_words) (padding and words past max_words point at row 0)."""
    n, r, d = feats.shape
    ids, probs = topk(region_probs(feats.reshape(-1, d), backbone), cfg.top_k)
    tokens = [tokenize(s) for s in sentences]
    vocab = sorted({w for t in tokens for w in t})
    where = {w: j + 1 for j, w in enumerate(vocab)}  # 0 = padding / no word
    weights = word_weights(vocab, cfg)
    live = np.flatnonzero(weights.max(1) > 0)  # most words (function words, verbs) never bridge
    b = np.zeros((len(vocab) + 1, n * r), np.float32)
    if len(live):
        b[live + 1] = bridge_scores_many(weights[live], ids, probs)
    b = b.reshape(-1, n, r) * region_mask[None].astype(np.float32)
    idx = np.zeros((len(sentences), max_words), np.int64)
    for m, t in enumerate(tokens):
        idx[m, : len(t)] = [where[w] for w in t][:max_words]
    return b, idx


def matched_concept(weights: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> str:
    """The class that gave a word most of its bridge score on one region: weights (1000,) the word's,
    ids, probs (K,) the region's top classes."""
    return display_name(int(ids[int((probs * weights[ids]).argmax())]))


def photo_concepts(concepts: Concepts, boxes: np.ndarray | None = None, top: int = 5) -> list[dict]:
    """A photo's most probable classes over its regions (each class's best region), for listing."""
    best: dict[int, tuple[float, int]] = {}
    for r in range(len(concepts)):
        for c, p in zip(concepts.ids[r].tolist(), concepts.probs[r].astype(np.float32).tolist()):
            if p > best.get(c, (-1.0, 0))[0]:
                best[c] = (p, r)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    return [{"class": int(c), "name": display_name(c), "prob": round(p, 4), "region": r,
             **({"box": [int(v) for v in boxes[r]]} if boxes is not None else {})}
            for c, (p, r) in ranked]
