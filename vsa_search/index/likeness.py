"""Photos like a photo (`vsa search --like PHOTO [TEXT]`), by the paper's max-over-regions form:
every region of the query photo finds its best region in the candidate,

    S(Q, P) = 1/R_Q Σ_i max_j v_i · v_j        (i: Q's regions, j: P's; v the index's region vectors)

the same shape as S_kl with the query photo's regions in the place of the query's words (the mean,
not the sum, so a photo with many proposals does not outscore one with few). Optional words steer
it: their S_kl (Σ_t max_j v_j · s_t, less the photo's querybank offset, as `vsa search TEXT
--no-bridge` scores them: words outside the model's vocabulary are ignored) is added. The query
photo is an indexed one (by id, or by path while the file is the one indexed: its stored vectors,
and it is left out of its own results) or any photo file (encoded afresh).

The scoring functions take the query's region vectors and word vectors, whoever made them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import SearchIndexError, UsageError
from ..models.score import best_per_item, item_scores, starts_of
from .lookup import find_item
from .query import Hit, Result, WordMatch, _top, photo_regions

if TYPE_CHECKING:
    from ..models.alignment import LoadedAlign

PER_REGION = 256  # approximate indexes: first-stage neighbours per query region
SHOWN_PAIRS = 3  # region pairs drawn on the contact sheet and the page (all are in the JSON)


@dataclass
class RegionMatch:
    query_region: int  # region of the query photo (0 = its full frame)
    query_box: list[int]
    region: int  # the candidate's region it matched best
    box: list[int]
    score: float  # v_i · v_j


@dataclass
class LikeHit(Hit):
    regions: list[RegionMatch] = field(default_factory=list)  # best pair first
    id: int = -1  # the photo's item id in the index


@dataclass
class LikeResult(Result):
    photo: str = ""  # the query photo (path as given, or the indexed key)
    photo_id: int | None = None  # its id when it is in the index (left out of the hits)
    text: str | None = None  # steering words, if any

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["like"] = {"photo": self.photo, "id": self.photo_id, "boxes": self.boxes}
        d["query"] = self.text or ""
        for h, hd in zip(self.hits, d["hits"]):
            if isinstance(h, LikeHit):
                hd["id"] = h.id
                drawn = {id(m) for m in shown_pairs(h.regions)}  # the pairs the sheet and the page draw
                hd["regions"] = [{"query_region": m.query_region, "query_box": m.query_box, "region": m.region,
                                  "box": m.box, "score": round(m.score, 4), "shown": id(m) in drawn}
                                 for m in h.regions]
        return d


# --------------------------------------------------------------------------- scores


def like_scores(qv: np.ndarray, dots: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the query regions' dots with the candidates' regions (R_Q, ΣR) laid out item by item
    (`starts`: each item's first column): S(Q, P) per item (C,) and each query region's best dot (R_Q, C)."""
    if dots.shape[1] == 0:
        return np.zeros(0, np.float32), np.zeros((len(qv), 0), np.float32)
    best = best_per_item(dots, starts)  # (R_Q, C)
    return best.mean(0), best


def region_pairs(qv: np.ndarray, qboxes: np.ndarray, vecs: np.ndarray, boxes: np.ndarray) -> list[RegionMatch]:
    """Each query region with the candidate region it matched best, best pair first."""
    dots = qv @ vecs.astype(np.float32).T  # (R_Q, R)
    best = dots.argmax(1)
    pairs = [RegionMatch(i, qboxes[i].tolist(), int(j), boxes[j].tolist(), float(dots[i, j]))
             for i, j in enumerate(best)]
    return sorted(pairs, key=lambda m: (-m.score, m.query_region))


def shown_pairs(regions: list[RegionMatch], n: int = SHOWN_PAIRS) -> list[RegionMatch]:
    """The pairs worth drawing: the best ones between proposals (full frame to full frame says little),
    one per candidate region."""
    seen: set[int] = set()
    out = []
    for m in regions:
        if m.query_region == 0 or m.region == 0 or m.region in seen:
            continue
        seen.add(m.region)
        out.append(m)
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- the query photo


def query_photo(ix: Any, model: LoadedAlign, photo: str | Path | int, encoder: Any = None,
                device: str | None = None) -> tuple[str, int | None, np.ndarray, np.ndarray]:
    """(shown name, item id or None, boxes (R, 4), region vectors (R, h)) of the query photo: an id
    of the index, a path the index holds unchanged (its stored vectors), or any photo file (encoded)."""
    if isinstance(photo, int):
        if not 0 <= photo < len(ix):
            raise SearchIndexError(f"no photo {photo} in index {ix.location.name} ({len(ix)} photos)")
        rec = ix.record(photo)
        return rec["key"], photo, ix.boxes(photo).copy(), ix.vectors([photo])[0].astype(np.float32)
    path = Path(photo)
    i = find_item(ix, str(path.absolute()))
    if i is not None:
        rec = ix.record(i)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec["key"], i, ix.boxes(i).copy(), ix.vectors([i])[0].astype(np.float32)
    boxes, v = photo_regions(model, path, encoder, device)  # the guarded loader: not a photo is one line
    return str(photo), None, np.asarray(boxes), np.asarray(v, np.float32)


# --------------------------------------------------------------------------- search


def search_like(ix: Any, model: LoadedAlign, photo: str | Path | int, text: str | None = None, k: int = 10,
                encoder: Any = None, device: str | None = None,
                steer: tuple[list[str], np.ndarray] | None = None, per_region: int = PER_REGION) -> LikeResult:
    """Photos of index `ix` like `photo`, best first, each with its region pairs (and the box each
    steering word matched). `steer`: the steering words and their vectors (T, h) when the caller
    encoded `text` itself; otherwise the model encodes it."""
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if ix.kind != "photos":
        raise UsageError("--like finds photos: search a photo index")
    ignored: list[str] = []
    if text is not None and steer is None:
        from ..models.encode import query_vectors

        scored, ignored, vecs_t = query_vectors(model, text)
        steer = scored, vecs_t
    tokens = list(steer[0]) if steer is not None else []
    q_words = np.asarray(steer[1], np.float32) if steer is not None else np.zeros((0, ix.dim), np.float32)
    shown, own, qboxes, qv = query_photo(ix, model, photo, encoder, device)
    if ix.exact or not len(ix):
        cands = np.arange(len(ix))
        both = ix.all_dots(np.vstack([qv, q_words])) if len(ix) else np.zeros((len(qv) + len(q_words), 0))
    else:
        _, ids = ix.search(qv, per_region)
        found = [ix.items_of(ids[ids >= 0])]
        if len(q_words):
            _, wids = ix.search(q_words, per_region)
            found.append(ix.items_of(wids[wids >= 0]))
        cands = np.unique(np.concatenate(found))
        vecs = ix.vectors(cands)
        both = np.vstack([qv, q_words]) @ np.concatenate(vecs).astype(np.float32).T if vecs \
            else np.zeros((len(qv) + len(q_words), 0), np.float32)
    starts = starts_of(ix.count[cands])
    scores, _ = like_scores(qv, both[: len(qv)], starts)
    if len(q_words) and len(cands):  # the steering words' S_kl, less the photo's querybank offset
        scores = scores + item_scores(both[len(qv):], starts)[0] - ix.offsets[cands]
    if own is not None:
        keep = cands != own
        cands, scores = cands[keep], scores[keep]
    top = _top(scores, cands, k)
    hits = []
    for j, vecs in zip(top, ix.vectors(cands[top])):
        item = int(cands[j])
        boxes = ix.boxes(item)
        matched = _word_matches(tokens, q_words, vecs, boxes)
        hits.append(LikeHit(ix.record(item)["key"], float(scores[j]), matched,
                            regions=region_pairs(qv, qboxes, vecs, boxes), id=item))
    return LikeResult(text or "", tokens, ignored, hits, len(cands), per_region, ix.exact,
                      boxes=qboxes.tolist(), photo=shown, photo_id=own, text=text)


def _word_matches(tokens: list[str], q: np.ndarray, vecs: np.ndarray, boxes: np.ndarray) -> list[WordMatch]:
    if not len(q):
        return []
    known = tokens
    dots = q @ vecs.astype(np.float32).T
    best = dots.argmax(1)
    return [WordMatch(w, float(dots[t, r]), int(r), boxes[r].tolist()) for t, (w, r) in enumerate(zip(known, best))]
