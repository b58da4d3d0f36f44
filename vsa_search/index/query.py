"""Search an index with words (text -> photos) or with a photo (image -> sentences).

The score is the paper's S_kl = Σ_t max_i v_i · s_t: a sum over words of a max over regions,
less the item's querybank offset when the model has a querybank (models/querybank.py). With a
hybrid model every region of a photo shares its global part u (v_i = [a_i ; u], s_t = [b_t ; g_t]),
so S_kl = Σ_t max_i a_i·b_t + u·Σ_t g_t, and the index stores u once per photo. Search runs in
two stages: (a) each word's own part b_t retrieves its top-N regions by a_i·b_t from the first
stage and, with a shared part, Σ_t g_t its top-M photos by u·Σ_t g_t: their photos are the
candidates; (b) the candidates are re-ranked by the exact S_kl over all of their regions, read
from the stored vectors.

For an exact (flat) index the first stage also gives a bound: a photo in no list scores at most
Σ_t (N-th best dot of word t) + (M-th best global dot). When the k-th re-ranked score already
beats that bound, the result is provably the exhaustive top k; otherwise N and M grow (x4) up
to a cap. Approximate first stages (PQ codes) use fixed depths, measured to keep recall@10
against exhaustive scoring at 0.99 or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import paths
from ..core.errors import UsageError
from ..models import textenc
from ..models.querytext import encode_query, known_words
from ..models.score import item_scores, sentence_scores, split, starts_of
from .store import FragmentIndex

if TYPE_CHECKING:  # torch loads only for a photo query or a model without a text export
    from ..models.alignment import LoadedAlign

PER_WORD = 256  # exact (flat) index: first-stage regions per word before any growth
MAX_PER_WORD = 1024  # growth cap: bounds the worst-case query time
PER_WORD_APPROX = 256  # PQ / IVF / HNSW: a fixed depth, as the bound is itself approximate there
PER_ITEM_APPROX = 128  # photos by the shared (global) part, approximate first stages
# (real queries on 2,000 Flickr8k photos, PQ codes: 340 candidates a query, recall@10 0.998
# against exhaustive scoring, the same as scoring every photo from the int8 vectors)


@dataclass
class WordMatch:
    word: str
    score: float  # v_i · s_t of the region this word matched best
    region: int  # index of that region within the photo (0 = the full image)
    box: list[int] | None  # xyxy in the photo's pixels (None for a sentence index)


@dataclass
class Hit:
    key: str  # photo path | sentence source (e.g. "1000268201_693b08cb0e.jpg#2" or "file.txt:7")
    score: float
    words: list[WordMatch]
    text: str | None = None  # the sentence (image -> text only)

    def to_dict(self, rank: int) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": rank}
        if self.text is None:
            d["path"] = self.key
        else:
            d.update({"source": self.key, "text": self.text})
        d["score"] = round(self.score, 4)
        d["words"] = [{"word": m.word, "score": round(m.score, 4), "region": m.region, "box": m.box}
                      for m in self.words]
        return d


@dataclass
class Result:
    query: str
    words: list[str]  # the words that were scored
    ignored: list[str]  # unknown to the model's vocabulary: not scored
    hits: list[Hit]
    candidates: int  # items re-ranked exactly in stage (b)
    per_word: int  # first-stage depth finally used
    exact: bool  # proven equal to the exhaustive top k
    boxes: list[list[int]] = field(default_factory=list)  # image query: the photo's regions
    dropped: list[str] = field(default_factory=list)  # characters of the query that make no word (emoji...)
    stand_ins: dict[str, str] = field(default_factory=dict)  # "elephants" -> "elephant": scored as that word
    reranked_by: str | None = None  # image query: the file name of the caption generator that re-ranked it

    def to_dict(self) -> dict[str, Any]:
        d = {"query": self.query, "words": self.words, "ignored": self.ignored, "dropped": self.dropped,
             "stand_ins": self.stand_ins, "hits": [h.to_dict(i + 1) for i, h in enumerate(self.hits)]}
        return d if self.reranked_by is None else {**d, "reranked_by": self.reranked_by}


# --------------------------------------------------------------------------- model and index


def _model_path(ix: FragmentIndex, model: str | Path | None) -> Path:
    if model is None:
        built = Path(ix.manifest["model"]["path"])
        model = built if built.is_file() else paths.find_model(paths.ALIGN_MODEL)
    return paths.find_model(str(model))


def model_for(ix: FragmentIndex, model: str | Path | None = None, device: str | None = None) -> LoadedAlign:
    """The model to search `ix` with: `model` if given, else the one the index was built with
    (when its file is still there), else the default `align` model. A model other than the
    index's is refused with one line (`check_model`)."""
    from ..models.alignment import load_align

    loaded = load_align(_model_path(ix, model), device or "cpu")
    ix.check_model(loaded)
    return loaded


def text_model_for(ix: FragmentIndex, model: str | Path | None = None) -> textenc.TextEncoder:
    """What a text search needs of the model `model_for` would choose: its numpy text encoder, from
    the export cached for the index's model fingerprint when that came from the same, unchanged
    file (no torch at all), else loaded once with torch and exported for next time."""
    path = _model_path(ix, model)
    enc = textenc.cached(path, ix.manifest["model"]["fingerprint"])
    if enc is not None:
        return enc
    return textenc.export(model_for(ix, path))


# --------------------------------------------------------------------------- the two stages


def exhaustive(ix: FragmentIndex, q: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k over every item (no first stage): the reference the two stages are
    measured against. Returns (items (k,), scores (k,))."""
    best_items = np.zeros(0, np.int64)
    best_scores = np.zeros(0, np.float32)
    for lo in range(0, len(ix), chunk):
        items = np.arange(lo, min(lo + chunk, len(ix)))
        scores, _ = ix.scores(q, items)
        scores = scores - ix.offsets[items]
        best_items = np.concatenate([best_items, items])
        best_scores = np.concatenate([best_scores, scores])
        order = _top(best_scores, best_items, k)
        best_items, best_scores = best_items[order], best_scores[order]
    return best_items, best_scores


def _top(scores: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best, by score then item id (a stable order for equal scores)."""
    if len(scores) > 4 * k:
        keep = np.argpartition(-scores, k - 1)[:k]
        kth = scores[keep].min()
        keep = np.flatnonzero(scores >= kth)  # keep every tie with the k-th
    else:
        keep = np.arange(len(scores))
    order = np.lexsort((items[keep], -scores[keep]))
    return keep[order[:k]]


@dataclass
class Ranked:
    items: np.ndarray  # (k',) item ids, best first
    scores: np.ndarray  # (k',)
    candidates: int  # items found by the first stage
    per_word: int
    exact: bool


def two_stage(ix: FragmentIndex, q: np.ndarray, k: int, per_word: int | None = None,
              max_per_word: int | None = MAX_PER_WORD) -> Ranked:
    """Top k items for query words q (T, h): first-stage candidates, then the exact S_kl.
    On a flat index with no `per_word` every photo is scored: the scan computes every dot
    anyway, so scoring all photos from them costs no more and is exact. `max_per_word=None`
    turns growth off."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if ix.exact and per_word is None:
        return _score_all(ix, q, k)
    n = per_word or (PER_WORD if ix.exact else PER_WORD_APPROX)
    m = n if ix.exact else PER_ITEM_APPROX
    while True:
        c = candidates(ix, q, n, m)
        # The bounds hold for an exact index only; an approximate one may have missed a
        # candidate's best region, so there every candidate is scored (the stored int8 rows of a
        # few hundred photos and one product).
        items, scores = _rerank(ix, q, c.items, c.upper if ix.exact else None, k)
        proven = c.everything or (len(items) == k and bool(scores[-1] >= c.outside))
        if proven or max_per_word is None or n >= max_per_word or not ix.exact:
            return Ranked(items, scores, len(c.items), c.depth, proven and ix.exact)
        n, m = min(n * 4, max_per_word), min(m * 4, max_per_word)


@dataclass
class Candidates:
    items: np.ndarray  # (C,) item ids
    upper: np.ndarray  # (C,) an upper bound of each one's score, offsets subtracted (exact first stages)
    outside: float  # a bound of the score of every item not among them
    depth: int  # regions per word that were read
    everything: bool  # every item is a candidate


def candidates(ix: FragmentIndex, q: np.ndarray, n: int, m: int) -> Candidates:
    """The photos whose regions are among each word's top n by a_i·b_t, and (with a shared
    part) the top m by u·Σ_t g_t. A candidate's best listed dot per word is its max for that
    word (the list is the top n overall); where it is not listed, the word's n-th dot bounds it."""
    dots, ids = ix.search(q, n)  # (T, n'): own parts only
    valid = ids >= 0
    nth = np.where(valid, dots, np.inf).min(axis=1)  # (T,) each word's last listed dot
    found = [ix.items_of(ids[valid])]
    g_dots, g_items = (ix.search_shared(split(q, ix.shared_dim)[1].sum(0), m) if ix.shared_dim
                       else (np.zeros(0), np.zeros(0, int)))
    found.append(g_items)
    cands, inv = np.unique(np.concatenate(found).astype(np.int64), return_inverse=True)
    listed = np.full((len(cands), len(q)), -np.inf, np.float32)
    np.maximum.at(listed, (inv[: int(valid.sum())], np.nonzero(valid)[0]), dots[valid])
    upper = np.where(listed > -np.inf, listed, nth[None, :]).sum(1)  # (C,)
    g_nth = 0.0
    if ix.shared_dim and len(g_dots):
        g_nth = float(g_dots[-1])  # the m-th global dot: no photo outside the list has more
        glob = np.full(len(cands), g_nth, np.float32)
        glob[np.searchsorted(cands, g_items)] = g_dots
        upper = upper + glob
    upper = upper - ix.offsets[cands]
    everything = ids.shape[1] >= ix.fragments or len(cands) == len(ix)
    outside = float(nth.sum() + g_nth - (ix.offsets.min() if len(ix) else 0.0))
    return Candidates(cands, upper, outside, ids.shape[1], everything)


def _score_all(ix: FragmentIndex, q: np.ndarray, k: int) -> Ranked:
    """Exact S_kl of every item from the stored vectors (one scan)."""
    items = np.arange(len(ix))
    if not len(items):
        return Ranked(items, np.zeros(0, np.float32), 0, 0, True)
    dots = ix.all_dots(q)  # (T, ΣR)
    scores = item_scores(dots, ix.first)[0] - ix.offsets  # (C,)
    top = _top(scores, items, k)
    return Ranked(items[top], scores[top], len(items), ix.fragments, True)


def _rerank(ix: FragmentIndex, q: np.ndarray, cands: np.ndarray, upper: np.ndarray | None, k: int,
            batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidates in order of their upper bound, stopping once the k-th best
    exact score beats every remaining bound: most candidates are never read. Without bounds
    (upper=None) every candidate is scored."""
    if upper is None:
        upper = np.full(len(cands), np.inf, np.float32)
        batch = max(batch, len(cands))
    order = np.lexsort((cands, -upper))
    got_items: list[np.ndarray] = []
    got_scores: list[np.ndarray] = []
    kth = -np.inf
    done = 0
    while done < len(order):
        # Slack for float rounding between the first stage's sums and ours.
        if done >= k and kth > upper[order[done]] + 1e-5 * (1 + abs(upper[order[done]])):
            break
        nxt = cands[order[done:done + batch]]
        s, _ = ix.scores(q, nxt)
        s = s - ix.offsets[nxt]
        got_items.append(nxt)
        got_scores.append(s)
        done += len(nxt)
        if done >= k:
            kth = np.partition(np.concatenate(got_scores), done - k)[done - k]
    items = np.concatenate(got_items) if got_items else np.zeros(0, np.int64)
    scores = np.concatenate(got_scores) if got_scores else np.zeros(0, np.float32)
    top = _top(scores, items, k)
    return items[top], scores[top]


def _matches(q: np.ndarray, words: list[str], vecs: np.ndarray, boxes: np.ndarray | None) -> list[WordMatch]:
    dots = q @ np.asarray(vecs, np.float32).T  # (T, R)
    best = dots.argmax(1)
    return [WordMatch(w, float(dots[t, r]), int(r), boxes[r].tolist() if boxes is not None else None)
            for t, (w, r) in enumerate(zip(words, best))]


def search_text(ix: FragmentIndex, model: LoadedAlign | textenc.TextEncoder, text: str, k: int = 10,
                per_word: int | None = None) -> Result:
    """Photos for a sentence, best first, each with the box every word matched. `model` is a loaded
    alignment model or its text encoder (text_model_for); either way the words go through numpy."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    eq = encode_query(model, text)
    words, ignored, q = known_words(eq, text)
    r = two_stage(ix, q, k, per_word)
    hits = []
    for item, score, vecs in zip(r.items, r.scores, ix.vectors(np.asarray(r.items, np.int64))):
        hits.append(Hit(ix.record(int(item))["key"], float(score), _matches(q, words, vecs, ix.boxes(int(item)))))
    return Result(text, words, ignored, hits, r.candidates, r.per_word, r.exact, dropped=eq.dropped,
                  stand_ins=eq.stand_ins)


# --------------------------------------------------------------------------- image -> text


def photo_regions(model: LoadedAlign, photo: str | Path, encoder: Any = None,
                  device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (R, 4) int32, region vectors (R, h) float32) of one photo."""
    from ..models.encode import encode_regions
    from ..vision.regions import RegionEncoder

    encoder = encoder or RegionEncoder(model.region_config, device, top=model.top)
    feats = encoder.encode_photo(photo)  # decoded as a build decodes it: an indexed copy's regions
    v = encode_regions(model, feats.features)
    return feats.boxes[: len(v)], v


def search_image(ix: FragmentIndex, model: LoadedAlign, photo: str | Path, k: int = 10,
                 per_region: int = 256, encoder: Any = None, device: str | None = None, generator: Any = None,
                 generator_encoder: Any = None) -> Result:
    """Sentences for a photo by the same S_kl (sum over the sentence's words of the max over
    the photo's regions): each region retrieves its nearest word fragments, whose sentences
    are re-ranked exactly. With the caption `generator` the index was built with (generator_for), the top
    DEPTH are then re-ranked by S + w · [log P(s | photo) - log P̄(s)] (models/likelihood.py)."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    boxes, v = photo_regions(model, photo, encoder, device)
    _, ids = ix.search(v, per_region)  # (R, n)
    cands = np.unique(ix.items_of(ids[ids >= 0]))
    vecs = ix.vectors(cands)
    scores = np.zeros(0, np.float32)
    if vecs:
        dots = np.concatenate(vecs).astype(np.float32) @ v.T  # (ΣT, R)
        scores = sentence_scores(dots, starts_of([len(s) for s in vecs])) - ix.offsets[cands]
    if generator is None:
        order = _top(scores, cands, k)
    else:
        order, scores = _by_generator(ix, generator, photo, scores, cands, k, generator_encoder, device)
    hits = []
    for j in order:
        rec = ix.record(int(cands[j]))
        s = vecs[j].astype(np.float32)  # (T, h)
        dots = s @ v.T  # (T, R)
        words = [WordMatch(w, float(dots[t].max()), int(dots[t].argmax()), boxes[int(dots[t].argmax())].tolist())
                 for t, w in enumerate(rec["words"])]
        hits.append(Hit(rec["key"], float(scores[j]), words, text=rec["text"]))
    return Result(str(photo), [], [], hits, len(cands), per_region, False, boxes.tolist(),
                  reranked_by=None if generator is None else Path(generator.path).name)


def _by_generator(ix: FragmentIndex, generator: Any, photo: str | Path, scores: np.ndarray, cands: np.ndarray,
                  k: int, encoder: Any, device: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(the top k candidates' positions, the first DEPTH of them re-ranked by the generator; the scores with
    theirs replaced by S + w · PMI)."""
    from ..models.captioner import photo_input
    from ..models.likelihood import ANNOTATION_WEIGHT, DEPTH, sentence_logprobs
    from ..vision.regions import RegionEncoder

    order = _top(scores, cands, max(k, DEPTH))
    order, rest = order[:DEPTH], order[DEPTH:k]
    if not len(order):
        return order, scores
    encoder = encoder or RegionEncoder(generator.region_config, device or "cpu")
    x = photo_input(encoder.encode_photo(photo), generator.config)[None]
    recs = [ix.record(int(cands[j])) for j in order]
    lp = sentence_logprobs(generator.model, x, [0] * len(recs),
                           [generator.vocab.encode_text(r["text"]) for r in recs]).numpy()
    new = scores[order] + ANNOTATION_WEIGHT * (lp - np.array([r["prior"] for r in recs], np.float32))
    scores = scores.copy()
    scores[order] = new
    return np.concatenate([order[np.lexsort((cands[order], -new))], rest])[:k], scores


def generator_for(ix: FragmentIndex) -> Any:
    """The caption generator (LoadedCaptioner) a sentence index was built with, or None: its sentences' priors
    are that generator's, so no other may re-rank them."""
    path = ix.manifest.get("generator")
    if path is None:
        return None
    if not Path(path).is_file():
        raise UsageError(f"{ix.location.link}: its sentences were indexed with the generator {path}, which is gone; "
                         f"index them again (`vsa index text`)")
    from ..models.captioner import load_caption

    return load_caption(path)
