"""Removing a concept from a query: `vsa search "beach" --minus "people"`. Each part is scored the way
`vsa search TEXT` scores a query (S = Σ_t max_i u_t(i): per word, its best region), and

    score(photo) = S(photo, query) - weight · Σ_m S(photo, minus_m)

so a photo whose regions match a minus term well falls, whatever else it holds. Every hit shows the
box each query word matched and the box each minus word matched (drawn in another colour).
On an approximate index a photo that is not among a minus term's candidates is scored at the lowest
score listed for that term (its candidates are the photos that term matches best)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import UsageError
from .query import Hit, Result, WordMatch

MINUS_WEIGHT = 1.0  # the shipped model's scores are per-word means: one unit of the minus term per unit of the query


@dataclass
class MinusHit(Hit):
    positive: float = 0.0  # S(photo, query) alone: what the relevance floor is calibrated on
    minus: list[float] = field(default_factory=list)  # S(photo, minus_m) per minus term


@dataclass
class MinusResult(Result):
    minus: list[str] = field(default_factory=list)
    weight: float = MINUS_WEIGHT
    minus_words: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["minus"] = [{"text": t, "words": w} for t, w in zip(self.minus, self.minus_words)]
        d["minus_weight"] = self.weight
        for h, hd in zip(self.hits, d["hits"]):
            if isinstance(h, MinusHit):
                hd["positive_score"] = round(h.positive, 4)
                hd["minus_scores"] = [round(s, 4) for s in h.minus]
                for m, md in zip(h.words, hd["words"]):
                    md["negative"] = bool(getattr(m, "negative", False))
        return d


@dataclass
class MinusWordMatch(WordMatch):
    negative: bool = True


def combine(positive: np.ndarray, minus: np.ndarray, weight: float = MINUS_WEIGHT) -> np.ndarray:
    """score = S(query) - weight · Σ_m S(minus_m): positive (C,), minus (M, C)."""
    return positive - weight * minus.sum(0) if len(minus) else positive


def search_minus(ix: Any, model: Any, text: str, minus: list[str], k: int, search: Callable[..., Result],
                 weight: float = MINUS_WEIGHT) -> MinusResult:
    """Photos for `text` less `minus`. `search(ix, model, text, k)` is the text search to score each
    part with (the CLI's: with or without the concept bridge); it is asked for every photo."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if weight < 0:
        raise UsageError(f"--minus-weight must be at least 0 (got {weight:g})")
    minus = [m for m in minus if m.strip()]
    if not minus:
        raise UsageError("--minus needs some words")
    n = max(1, len(ix))
    pos = search(ix, model, text, n)
    keys = [h.key for h in pos.hits]
    where = {key: j for j, key in enumerate(keys)}
    neg_scores = np.zeros((len(minus), len(keys)), np.float32)
    neg_words: list[dict[str, list[WordMatch]]] = []
    minus_words = []
    for t, term in enumerate(minus):
        res = search(ix, model, term, n)
        minus_words.append(res.words)
        got = {h.key: h for h in res.hits}
        floor = min((h.score for h in res.hits), default=0.0)  # approximate index: a photo it did not list
        neg_scores[t] = [got[key].score if key in got else floor for key in keys]
        neg_words.append({key: h.words for key, h in got.items() if key in where})
    positive = np.array([h.score for h in pos.hits], np.float32)
    scores = combine(positive, neg_scores, weight)
    order = np.lexsort((np.arange(len(keys)), -scores))[:k]
    hits = []
    for j in order:
        h = pos.hits[j]
        words = list(h.words)
        for t in range(len(minus)):
            words += [MinusWordMatch(m.word, m.score, m.region, m.box) for m in neg_words[t].get(h.key, [])]
        hits.append(MinusHit(h.key, float(scores[j]), words, positive=float(positive[j]),
                             minus=[float(s) for s in neg_scores[:, j]]))
    return MinusResult(text, pos.words, pos.ignored, hits, pos.candidates, pos.per_word, pos.exact,
                       minus=minus, weight=weight, minus_words=minus_words)
