"""Captions that name what the CNN's own classifier is sure of: constrained beam search.

Anderson et al. (2017), "Guided Open Vocabulary Image Captioning with Constrained Beam Search":
a finite-state machine whose states are the subsets of constraint words already generated keeps
one beam per state; a hypothesis moves to state s | {j} when it emits constraint word j, and the
caption is the best finished sentence in the state where every constraint is met.

Concepts reach the caption vocabulary as in placeholder / copy methods: an ImageNet class whose
name (or its head word: "bear" of "teddy bear") is a caption word is constrained on that word;
otherwise on its nearest caption word by GloVe, and the class's own name replaces that word in
the output ("a giraffe" for a proxy "animal")."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..bridge.table import STOPWORDS
from ..bridge.words import class_names, display_name, glove
from ..core.config import DEFAULT_BEAM
from ..core.errors import UsageError
from ..data.text import tokenize
from ..data.vocab import END, START
from ..models.beam import Caption, _step_logprobs
from ..models.captioner import Captioner
from ..vision.concepts import Concepts

MIN_CONFIDENCE = 0.5  # a concept's probability (best region, summed over classes sharing its word)
MAX_CONSTRAINTS = 1  # the FSM has 2^C states; two forced words overwhelm this small generator
PROXY_MIN_COSINE = 0.7  # nearest caption word must be at least this close to stand in for a class


@dataclass(frozen=True)
class Constraint:
    token: int  # the caption-vocabulary word the beam must emit
    word: str
    name: str  # what the output shows in its place ("teddy bear" for "bear")
    confidence: float
    class_id: int


# --------------------------------------------------------------------------- the decoder


@torch.inference_mode()
def constrained_beam(model: Captioner, feat: torch.Tensor, constraints: list[int], beam: int = DEFAULT_BEAM,
                     max_len: int = 20, length_norm: float = 0.0) -> tuple[Caption, int]:
    """The best caption of one image (feat (D,)) containing every token of `constraints` (at most
    a few), or, when no finished sentence meets them all within max_len, the one meeting the most.
    Returns (caption, bit mask of the constraints met)."""
    if beam < 1:
        raise UsageError(f"beam size must be >= 1, got {beam}")
    model.eval()
    n_c = len(constraints)
    full = (1 << n_c) - 1
    bit = {tok: 1 << j for j, tok in enumerate(constraints)}
    state = model.init_state(feat[None])
    # Open hypotheses: parallel lists; each state row of `state` belongs to one hypothesis.
    words: list[list[int]] = [[]]
    masks = [0]
    scores = torch.zeros(1)
    tokens = torch.full((1,), START, dtype=torch.long, device=feat.device)
    finished: dict[int, list[Caption]] = {}
    extra = torch.tensor(constraints, dtype=torch.long)
    for t in range(max_len + 1):
        logp, state = _step_logprobs(model, tokens, state, t, max_len)  # (N, V)
        logp = logp.cpu()
        k = min(beam, logp.shape[1])
        top = logp.topk(k, dim=-1).indices  # (N, k)
        pool: dict[int, list[tuple[float, int, int]]] = {}
        for n in range(len(words)):
            cand = torch.cat([top[n], extra]) if n_c else top[n]
            for w in dict.fromkeys(cand.tolist()):
                s = float(scores[n] + logp[n, w])
                if not np.isfinite(s):
                    continue
                if w == END:
                    finished.setdefault(masks[n], []).append(
                        Caption.ranked(list(words[n]), s, length_norm))
                    continue
                pool.setdefault(masks[n] | bit.get(w, 0), []).append((s, n, w))
        keep = [(m, s, n, w) for m, c in pool.items() for s, n, w in sorted(c, key=lambda x: -x[0])[:beam]]
        if not keep:
            break
        parents = torch.tensor([n for _, _, n, _ in keep], dtype=torch.long, device=feat.device)
        state = tuple(x.index_select(0, parents) for x in state)
        words = [words[n] + [w] for _, _, n, w in keep]
        masks = [m for m, _, _, _ in keep]
        scores = torch.tensor([s for _, s, _, _ in keep])
        tokens = torch.tensor([w for _, _, _, w in keep], dtype=torch.long, device=feat.device)
        if full in finished and length_norm == 0.0:
            # Log-probabilities only fall: once a finished full-state sentence beats every open one in
            # the full state, nothing later can win.
            best_done = max(c.score for c in finished[full])
            open_full = [float(s) for s, m in zip(scores, masks) if m == full]
            if not open_full or best_done >= max(open_full):
                break
    if not finished:  # pragma: no cover - END is forced after max_len words
        raise RuntimeError("constrained beam search finished no sentence")
    best_mask = max(finished, key=lambda m: (bin(m).count("1"), m == full))
    return max(finished[best_mask], key=lambda c: c.score), best_mask


# --------------------------------------------------------------------------- concepts -> caption words


@functools.lru_cache(maxsize=4)
def _vocab_table(itos: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Unit GloVe vectors of the caption vocabulary's content words, and their ids."""
    cand = [i for i, w in enumerate(itos) if w.isalpha() and w not in STOPWORDS and len(w) > 2]
    vecs, known = glove([itos[i] for i in cand])
    return vecs[known], np.array(cand)[known]


def caption_word(c: int, itos: tuple[str, ...]) -> tuple[str, str] | None:
    """(caption word to constrain on, name to show) for ImageNet class c, or None when no caption
    word is close enough. A name that is itself a caption word wins; then a multi-word name whose
    head is one ("teddy bear" -> "bear", shown as "teddy bear"); then the nearest caption word by
    GloVe, shown as the class's name."""
    stoi = {w: i for i, w in enumerate(itos)}
    names = [tokenize(n) for n in class_names()[c]]
    names = [n for n in names if n]
    shown = display_name(c)
    for n in names:
        if len(n) == 1 and n[0] in stoi:
            # "teddy" of "teddy, teddy bear" is shown as "teddy bear" (both caption words); "pizza" of
            # "pizza, pizza pie" stays "pizza" ("pie" is no caption word).
            full = shown.split()
            return n[0], shown if n[0] in full and all(w in stoi for w in full) else n[0]
    for n in names:
        if len(n) > 1 and n[-1] in stoi and n[-1] not in STOPWORDS:
            return n[-1], " ".join(n)
    vecs, ids = _vocab_table(itos)
    g, known = glove([w for n in names for w in n])
    if not known.any():
        return None
    m = g[known].mean(0)
    cos = vecs @ (m / max(float(np.linalg.norm(m)), 1e-8))
    j = int(cos.argmax())
    if cos[j] < PROXY_MIN_COSINE:
        return None
    return itos[int(ids[j])], display_name(c)


def choose_constraints(concepts: Concepts, itos: list[str], min_confidence: float = MIN_CONFIDENCE,
                       most: int = MAX_CONSTRAINTS) -> list[Constraint]:
    """The photo's confident concepts as caption constraints: classes that map to one caption word
    pool their probability within a region (120 dog breeds -> "dog"); a word's confidence is its best
    region's; the `most` surest words at or above `min_confidence`, surest first."""
    table = tuple(itos)
    stoi = {w: i for i, w in enumerate(itos)}
    conf: dict[str, float] = {}
    top_class: dict[str, tuple[float, int, str]] = {}
    for r in range(len(concepts)):
        per_word: dict[str, float] = {}
        for c, p in zip(concepts.ids[r].tolist(), concepts.probs[r].astype(np.float32).tolist()):
            mapped = _cached_caption_word(c, table)
            if mapped is None:
                continue
            word, name = mapped
            per_word[word] = per_word.get(word, 0.0) + p
            if p > top_class.get(word, (-1.0, 0, ""))[0]:
                top_class[word] = (p, c, name)
        for w, p in per_word.items():
            conf[w] = max(conf.get(w, 0.0), p)
    ranked = sorted((w for w in conf if conf[w] >= min_confidence), key=lambda w: (-conf[w], w))[:most]
    out = []
    for w in ranked:
        _, c, name = top_class[w]
        # Pooled classes (breeds -> "dog") keep the caption word: one breed's name would claim too much.
        shown = name if (name == w or conf[w] - top_class[w][0] < 0.5 * conf[w]) else w
        out.append(Constraint(stoi[w], w, shown, round(conf[w], 4), c))
    return out


@functools.lru_cache(maxsize=4096)
def _cached_caption_word(c: int, itos: tuple[str, ...]) -> tuple[str, str] | None:
    return caption_word(c, itos)


def render(tokens: list[str], constraints: list[Constraint], met: int) -> str:
    """The caption's words with each met constraint's word shown as its concept's name (first use)."""
    words = list(tokens)
    for j, c in enumerate(constraints):
        if not (met >> j & 1) or c.name == c.word or c.word not in words:
            continue
        i = words.index(c.word)
        name = c.name.split()
        at = name.index(c.word) if c.word in name else len(name) - 1
        if words[i - at:i - at + len(name)] == name:  # the generator already wrote the whole name
            continue
        words[i] = c.name
    return " ".join(words)


def caption_with_concepts(loaded: Any, feat: torch.Tensor, concepts: Concepts, beam: int = DEFAULT_BEAM,
                          max_len: int | None = None, length_norm: float = 0.0,
                          min_confidence: float = MIN_CONFIDENCE) -> dict[str, Any]:
    """One photo's caption constrained on its confident concepts: {caption, logprob, constraints}."""
    cons = choose_constraints(concepts, loaded.vocab.itos, min_confidence)
    cap, met = constrained_beam(loaded.model, feat.to(next(loaded.model.parameters()).device),
                                [c.token for c in cons], beam, max_len or loaded.config.max_len, length_norm)
    return {"caption": render(loaded.vocab.decode(cap.tokens), cons, met), "logprob": float(cap.logprob),
            "constraints": [{"word": c.word, "name": c.name, "confidence": c.confidence, "met": bool(met >> j & 1)}
                            for j, c in enumerate(cons)]}
