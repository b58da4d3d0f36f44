"""Open-vocabulary search: every query word counts (alignment uses the same bridge: align/bridge.py).

A word the alignment model knows scores a region as before (v_i · s_t) plus `weight` times its
concept-bridge score (vision/concepts.py); an inflected form of such a word is scored as that word
("elephants" as "elephant", data/lemma.py); a word outside the model's vocabulary but known to GloVe
scores by the bridge alone (as a class name's base form when it is an inflection of one), so its box
is still shown; a word neither knows is reported, never dropped silently. Per word and region:

    u_t(i) = [t known] v_i · s_t + weight · bridge(t, i) / T        (T: query words; the shipped
                                                                     model averages over words)

and a photo scores Σ_t max_i u_t(i), the paper's S_kl with the bridge inside the max."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import QueryError, UsageError
from ..models.querytext import encode_query, short
from ..models.score import item_scores, split, starts_of
from ..models.textenc import query_encoder
from ..vision.concepts import (
    DEFAULT_BRIDGE,
    BridgeConfig,
    bridge_scores_many,
    bridge_weight,
    class_word,
    display_name,
    in_glove,
    word_weights,
)
from .query import PER_ITEM_APPROX, PER_WORD_APPROX, Hit, Result, WordMatch, _top, candidates

# --------------------------------------------------------------------------- the query


@dataclass
class Query:
    tokens: list[str]
    model_known: np.ndarray  # (T,) bool: in the alignment model's vocabulary (itself or its stand-in)
    bridged: np.ndarray  # (T,) bool: scored through the concept bridge (GloVe knows it)
    weights: np.ndarray  # (T, 1000) sharp(sim(w, c)); zero rows for words without a bridge
    q: np.ndarray  # (T_known, h) the model's word vectors of the known words
    scale: float  # weight / T (or weight for a model that sums over words)
    dropped: list[str] = field(default_factory=list)  # characters that make no word (querytext.dropped)
    stand_ins: dict[str, str] = field(default_factory=dict)  # "elephants" -> "elephant" (data/lemma.py)

    @property
    def scored(self) -> np.ndarray:
        return self.model_known | self.bridged

    @property
    def unknown(self) -> list[str]:
        """Known neither to the model nor to GloVe: not scored, and reported."""
        return [w for w, s in zip(self.tokens, self.scored) if not s]

    @property
    def bridge_only(self) -> list[str]:
        return [w for w, m, b in zip(self.tokens, self.model_known, self.bridged) if b and not m]


def make_query(model: Any, text: str, cfg: BridgeConfig = DEFAULT_BRIDGE, with_bridge: bool = True) -> Query:
    """`model`: a loaded alignment model or its text encoder (models/textenc.py). A word outside the
    model's vocabulary whose base form is in it ("elephants") is scored as that form, by the model
    and by the bridge alike; only a word with no such form falls to the bridge alone."""
    eq = encode_query(model, text)
    tokens = eq.tokens
    model_known = eq.known
    stand_ins = dict(eq.stand_ins)
    if with_bridge:  # a word the model lacks even in its base form may still be a class name's ("zebras")
        for t in tokens:
            if t not in stand_ins and not model_known[tokens.index(t)]:
                base = class_word(t)
                if base is not None and base != t:
                    stand_ins[t] = base
    words = [stand_ins.get(t, t) for t in tokens]  # what the model and the bridge score
    bridged = np.array([with_bridge and in_glove(w) for w in words])
    if not (model_known | bridged).any():
        shown = ", ".join(w[:30] for w in tokens[:10]) + (" ..." if len(tokens) > 10 else "")
        raise QueryError(f"no word of {short(text)} is known to the model's vocabulary or to GloVe ({shown})")
    weights = word_weights(words, cfg) if with_bridge else np.zeros((len(tokens), 1000), np.float32)
    weights[~bridged] = 0.0
    q = eq.vectors[model_known].astype(np.float32)
    per_word = getattr(query_encoder(model).config, "pool", "sum") == "mean"
    scale = cfg.weight / len(tokens) if per_word else cfg.weight
    return Query(tokens, model_known, bridged, weights, q, scale if with_bridge else 0.0, eq.dropped, stand_ins)


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


def _unary(qr: Query, dots: np.ndarray, bridge: np.ndarray) -> np.ndarray:
    """u (T, R') from the known words' dots (T_known, R') and every word's bridge (T, R')."""
    u = np.zeros((len(qr.tokens), dots.shape[1]), np.float32)
    u[qr.model_known] = dots
    u += qr.scale * bridge
    u[~qr.scored] = 0.0
    return u


def search_text(ix: Any, model: Any, text: str, k: int = 10, cfg: BridgeConfig | None = None,
                with_bridge: bool = True, per_word: int | None = None) -> OpenResult:
    """Photos for a sentence with every word counted (see the module docstring). On a flat index
    every photo is scored; `per_word` (or an approximate index) scores only the candidates of a
    first stage instead: each known word's top `per_word` regions from FAISS, and each bridged
    word's top `per_word` regions by their concept score."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    import dataclasses

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
    u = _unary(qr, dots, bridge)
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
            contrib = probs[r] * qr.weights[t, ids[r]]
            concept = display_name(int(ids[r][int(contrib.argmax())]))
        out.append(OpenWordMatch(w, float(u[t, r]), r, boxes[r].tolist() if len(boxes) else None,
                                 via=via, bridge=b, concept=concept))
    return out
