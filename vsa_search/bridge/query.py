"""A query through the bridge: which of its words the model knows, which the bridge reaches, each
word's class weights, and the per-word, per-region unary that open-vocabulary search maximises:

    u_t(i) = [t known] v_i · s_t + weight · bridge(t, i) / T        (T: query words; the shipped
                                                                     model averages over words)

A photo then scores Σ_t max_i u_t(i) (models/score.py), the paper's S_kl with the bridge inside
the max."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import QueryError
from ..models.querytext import encode_query, short
from ..models.textenc import query_encoder
from .words import DEFAULT_BRIDGE, BridgeConfig, class_word, in_glove, word_weights


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


def unary(qr: Query, dots: np.ndarray, bridge: np.ndarray) -> np.ndarray:
    """u (T, R') from the known words' dots (T_known, R') and every word's bridge (T, R')."""
    u = np.zeros((len(qr.tokens), dots.shape[1]), np.float32)
    u[qr.model_known] = dots
    u += qr.scale * bridge
    u[~qr.scored] = 0.0
    return u
