"""The concept bridge in alignment: the MRF's unaries with every word able to reach a region
through the CNN's ImageNet classes (the same bridge as open-vocabulary search, query.py)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..data.vocab import UNK
from ..vision.concepts import Concepts
from .scores import bridge_scores
from .weight import bridge_weight
from .words import DEFAULT_BRIDGE, BridgeConfig, in_glove, word_weights

if TYPE_CHECKING:
    from ..models.alignment import LoadedAlign


def align_unary(loaded: LoadedAlign, tokens: list[str], unary: np.ndarray, concepts: Concepts,
                cfg: BridgeConfig | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """The MRF's unaries with the bridge: known words get v_i · s_t + weight · bridge, words outside
    the model's vocabulary that GloVe knows get weight · bridge alone (they find their region that
    way). Returns (unary (N, R), words scored by the bridge alone, words known to neither)."""
    cfg = cfg or dataclasses.replace(DEFAULT_BRIDGE, weight=bridge_weight(loaded))
    ids = loaded.vocab.encode(tokens)
    known = np.array([i != UNK for i in ids])
    glove_known = np.array([in_glove(w) for w in tokens])
    b = bridge_scores(word_weights(tokens, cfg), concepts)[:, : unary.shape[1]]  # (N, R)
    u = np.asarray(unary, np.float32).copy()
    u[known] += cfg.weight * b[known]
    only = ~known & glove_known
    u[only] = cfg.weight * b[only]
    return u, [w for w, o in zip(tokens, only) if o], [w for w, k, g in zip(tokens, known, glove_known)
                                                        if not k and not g]


def word_status(loaded: LoadedAlign, tokens: list[str], bridge: bool) -> dict[str, list[str]]:
    """Which words the bridge placed alone, and which no one knows (they stay on the model's <unk>):
    the fields `vsa align --json` adds to an alignment."""
    unk = [w for w, i in zip(tokens, loaded.vocab.encode(tokens)) if i == UNK]
    if not bridge:
        return {"unknown": unk}
    return {"bridged": [w for w in unk if in_glove(w)], "unknown": [w for w in unk if not in_glove(w)]}
