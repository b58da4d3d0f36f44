"""Open-vocabulary search over a photo index: every query word counts, through the concept bridge
(vsa_search/bridge: the query's words and classes in bridge/query.py). A word the alignment model
knows scores a region as before (v_i · s_t) plus `weight` times its bridge score; an inflected form
of such a word is scored as that word ("elephants" as "elephant", data/lemma.py); a word outside the
model's vocabulary but known to GloVe scores by the bridge alone (as a class name's base form when it
is an inflection of one), so its box is still shown; a word neither knows is reported, never dropped
silently. A photo scores Σ_t max_i u_t(i) (bridge.query.unary), the paper's S_kl with the bridge
inside the max."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bridge.query import Query, make_query, unary
from ..bridge.scores import bridge_scores_many, matched_concept
from ..bridge.weight import bridge_weight
from ..bridge.words import DEFAULT_BRIDGE, BridgeConfig
from ..core.errors import QueryError, UsageError
from ..models.score import item_scores, split, starts_of
from .query import PER_ITEM_APPROX, PER_WORD_APPROX, Hit, Result, WordMatch, _top, candidates

# --------------------------------------------------------------------------- an index's concepts

def index_concepts(ix: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every region's concepts of a photo index: ids (N, K) uint16, probs (N, K) float16 (both
    memory-mapped from the index) and which items have none stored."""
    got = ix.concept_arrays()
    if got is None:
        return np.zeros((ix.fragments, 1), np.uint16), np.zeros((ix.fragments, 1), np.float16), \
            np.ones(len(ix), bool)
    return got


# --------------------------------------------------------------------------- search


@dataclass
class OpenWordMatch(WordMatch):
    via: str = "model"  # model | bridge | model+bridge
    bridge: float = 0.0  # the bridge score of the matched region
    concept: str | None = None  # the class that carried the bridge there


@dataclass
class OpenResult(Result):
    bridged: list[str] = field(default_factory=list)  # scored by the bridge alone
    weight: float = 0.0
    concepts_missing: int = 0  # photos of the index without stored concepts

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()  # "ignored": known neither to the model nor to GloVe, so not scored
        d["bridged"] = self.bridged
        d["bridge"] = {"weight": self.weight, "photos_without_concepts": self.concepts_missing}
        for h, hd in zip(self.hits, d["hits"]):
            for m, md in zip(h.words, hd["words"]):
                if isinstance(m, OpenWordMatch):
                    md.update(via=m.via, bridge=round(m.bridge, 4), concept=m.concept)
        return d


def search_text(ix: Any, model: Any, text: str, k: int = 10, cfg: BridgeConfig | None = None,
                with_bridge: bool = True, per_word: int | None = None) -> OpenResult:
    """Photos for a sentence with every word counted (see the module docstring). On a flat index
    every photo is scored; `per_word` (or an approximate index) scores only the candidates of a
    first stage instead: each known word's top `per_word` regions from FAISS, and each bridged
    word's top `per_word` regions by their concept score."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    cfg = cfg or dataclasses.replace(DEFAULT_BRIDGE, weight=bridge_weight(model))
    qr = make_query(model, text, cfg, with_bridge)
    ids, probs, missing = index_concepts(ix) if with_bridge else (None, None, np.zeros(len(ix), bool))
    if with_bridge and missing.all() and not qr.model_known.any():
        raise QueryError(f"index {ix.location.name} has no region concepts (built before them): rebuild it "
                         f"to search for {', '.join(qr.bridge_only)}")
    if per_word is not None and per_word <= 0:
        raise UsageError(f"--per-word must be at least 1 (got {per_word})")
    score_all = (ix.exact and per_word is None) or not len(ix)
    depth = ix.fragments if score_all else (per_word or PER_WORD_APPROX)
    if score_all:
        cands, rows = np.arange(len(ix)), np.arange(ix.fragments)
        dots = ix.all_dots(qr.q) if len(qr.q) and len(ix) else np.zeros((len(qr.q), ix.fragments), np.float32)
    else:
        cands = _candidates(ix, qr, ids, probs, depth)
        rows = ix.rows_of(cands)
        dots = _dots(ix, qr.q, cands, rows)
    bridge = bridge_scores_many(qr.weights, ids[rows], probs[rows]) if with_bridge \
        else np.zeros((len(qr.tokens), len(rows)), np.float32)
    u = unary(qr, dots, bridge)
    starts = starts_of(ix.count[cands])
    scores = item_scores(u, starts)[0] - ix.offsets[cands]  # Σ_t max_i u_t(i): S_kl, the bridge inside the max
    top = _top(scores, cands, k)
    hits = []
    for j in top:
        a, m = int(starts[j]), int(ix.count[cands[j]])
        hits.append(Hit(ix.record(int(cands[j]))["key"], float(scores[j]),
                        _matches(qr, u[:, a:a + m], bridge[:, a:a + m], ids[rows[a:a + m]] if with_bridge else None,
                                 probs[rows[a:a + m]] if with_bridge else None, ix.boxes(int(cands[j])))))
    words = [w for w, s in zip(qr.tokens, qr.scored) if s]
    return OpenResult(text, words, qr.unknown, hits, len(cands), depth, score_all and ix.exact,
                      dropped=qr.dropped, stand_ins=qr.stand_ins, bridged=qr.bridge_only,
                      weight=cfg.weight if with_bridge else 0.0, concepts_missing=int(missing.sum()))


def _dots(ix: Any, q: np.ndarray, cands: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(T_known, ΣR) dots of the known words with the candidates' regions (`rows`, ix.rows_of(cands)),
    from the stored vectors (a shared part added to each of its item's regions)."""
    q_own, q_shared = split(q, ix.shared_dim)
    dots = q_own @ ix.part_vectors(rows).T
    if ix.shared_dim and len(cands):
        dots += np.repeat(ix.shared_vectors(cands) @ q_shared.T, ix.count[cands], axis=0).T
    return dots.astype(np.float32)


def _candidates(ix: Any, qr: Query, ids: np.ndarray | None, probs: np.ndarray | None, depth: int) -> np.ndarray:
    """The first stage: the candidates of the known words (query.candidates: each word's top `depth`
    regions, and the photos best by the shared part), plus the photos of the `depth` regions that
    score highest through the bridge alone (a linear pass over K concepts per region)."""
    found = []
    if len(qr.q):
        found.append(candidates(ix, qr.q, depth, PER_ITEM_APPROX).items)
    if ids is not None and qr.bridged.any():
        b = bridge_scores_many(qr.weights[qr.bridged], ids, probs).max(0)  # (N,)
        n = min(depth, len(b))
        found.append(ix.items_of(np.argpartition(-b, n - 1)[:n]))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)


def _matches(qr: Query, u: np.ndarray, bridge: np.ndarray, ids: np.ndarray | None, probs: np.ndarray | None,
             boxes: np.ndarray) -> list[WordMatch]:
    out: list[WordMatch] = []
    for t, w in enumerate(qr.tokens):
        if not qr.scored[t]:
            continue
        r = int(u[t].argmax())
        b = float(bridge[t, r])
        via = "model+bridge" if qr.model_known[t] and b > 0 else ("model" if qr.model_known[t] else "bridge")
        concept = None
        if ids is not None and probs is not None and b > 0:
            concept = matched_concept(qr.weights[t], ids[r], probs[r])
        out.append(OpenWordMatch(w, float(u[t, r]), r, boxes[r].tolist() if len(boxes) else None,
                                 via=via, bridge=b, concept=concept))
    return out
