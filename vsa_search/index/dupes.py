"""Near-duplicate groups of an index (`vsa dupes`): recompressed, resized, lightly cropped, turned
and re-exposed copies of a photo, and bursts. Nothing is ever deleted; each group names the photo
to keep.

Two kinds of evidence, both stored at build time: the perceptual hash (photometa: pHash over the
four 90-degree turns, so a turned copy is found) and the photo's full-frame vector (region 0), whose
cosine confirms a pair whose hashes differ more (a crop, a burst). A pair is a duplicate when

    similarity = max(h, min(h + CONFIRM_BONUS, c) if c >= CONFIRM_COSINE)  >=  threshold

with h = 1 - (pHash distance) / 32 (about 0 for unrelated photos, 1 for the same picture) and c the
cosine. Groups are the connected components of the duplicate pairs. DEFAULT_THRESHOLD and the
constants were chosen on a set built from Flickr8k train and dev photos (benchmarks/dupes.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..vision.phash import rotations
from .filters import FilterReport, MetaFilter, index_meta, report_for
from .photometa import REBUILD_HINT
from .query import Hit, Result
from .sheet import contact_sheet
from .store import FragmentIndex, open_index

DEFAULT_THRESHOLD = 0.75
HASH_SCALE = 32.0  # pHash distance of unrelated photos (half of the 63 bits that vary)
CONFIRM_COSINE = 0.90  # full-frame cosine from which the vectors vouch for a pair...
CONFIRM_BONUS = 0.50  # ...whose hash similarity is up to this much below the threshold
SHARP_TIE = 0.25  # sharpness within 25% of the sharpest counts as as sharp (a re-exposed or
# re-encoded copy measures up to about 20% apart from its original: examples/photos copies)


@dataclass
class DupPhoto:
    path: str
    width: int
    height: int
    size: int  # bytes on disk
    sharp: float  # variance of the Laplacian at a fixed size
    similarity: float  # to the photo to keep (1 for that photo)
    rotation: int = 0  # degrees this copy is turned against the photo to keep, as its hash says

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height, "bytes": self.size,
                "sharpness": self.sharp, "similarity": round(self.similarity, 4), "rotation": self.rotation}


@dataclass
class Group:
    photos: list[DupPhoto]  # the photo to keep first, then by similarity to it
    keep: str
    why: str  # why that one: the largest, then the sharpest, then the largest file

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "why": self.why, "photos": [p.to_dict() for p in self.photos]}


@dataclass
class DupesResult:
    threshold: float
    photos: int  # photos compared
    groups: list[Group]
    no_meta: int = 0  # photos indexed before fingerprints were stored: not compared
    filter: FilterReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"threshold": self.threshold, "photos": self.photos, "no_fingerprint": self.no_meta,
                             "groups": [g.to_dict() for g in self.groups]}
        if self.filter is not None:
            d["filter"] = self.filter.to_dict()
        return d


def _check_threshold(threshold: float) -> None:
    from ..core.errors import UsageError

    if not (0 < threshold <= 1):
        raise UsageError(f"--threshold must be above 0 and at most 1 (got {threshold:g})")


def find(index: str | Path | FragmentIndex | None = None, threshold: float = DEFAULT_THRESHOLD,
         where: MetaFilter | None = None) -> DupesResult:
    """The near-duplicate groups of a photo index (by name, path or open), largest first; `where`
    limits the photos compared to those that pass a metadata filter."""
    _check_threshold(threshold)
    if isinstance(index, FragmentIndex):
        return _find(index, threshold, where)
    with open_index(index, "photos") as ix:
        return _find(ix, threshold, where)


def _find(ix: FragmentIndex, threshold: float, where: MetaFilter | None) -> DupesResult:
    metas = index_meta(ix)
    report = report_for(metas.values(), where) if where is not None and where.active else None
    keys = [rec["key"] for rec in ix.records()]
    items, no_meta = [], 0
    for i, key in enumerate(keys):
        m = metas[key]
        if m is None or "phash" not in m:
            no_meta += m is None
            continue
        if where is not None and not where.accepts(m):
            continue
        items.append(i)
    result = DupesResult(threshold, len(items), [], no_meta, report)
    if no_meta:
        result.notes.append(f"{no_meta} photos were indexed before fingerprints were stored and are not "
                            f"compared: {REBUILD_HINT}")
    if report is not None:
        report.kept, report.dropped = len(items), len(keys) - len(items)
        result.notes.extend(report.notes())
    if len(items) < 2:
        return result
    metas_l = [metas[keys[i]] for i in items]
    hashes = np.array([int(m["phash"], 16) for m in metas_l], dtype=np.uint64)
    vecs = full_frame(ix, items)
    sim = Similarity(hashes, vecs)
    recs = [ix.record(i) for i in items]
    result.groups = _groups(sim.pairs(threshold), sim, recs, metas_l)
    return result


def full_frame(ix: FragmentIndex, items: list[int], chunk: int = 4096) -> np.ndarray:
    """(N, h) unit full-frame vectors (region 0 of each photo)."""
    out = np.zeros((len(items), ix.dim), np.float32)
    for lo in range(0, len(items), chunk):
        for j, v in enumerate(ix.vectors(items[lo: lo + chunk])):
            out[lo + j] = v[0]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> (N, 8) uint8 codes, most significant byte first (as faiss's binary indexes want)."""
    return hashes.astype(">u8").view(np.uint8).reshape(-1, 8)


class Similarity:
    """similarity(a, b) of the module docstring, over the photos' hashes and unit full-frame vectors."""

    def __init__(self, hashes: np.ndarray, vecs: np.ndarray):
        self.turns = np.array([rotations(int(h)) for h in hashes], dtype=np.uint64).reshape(-1, 4)  # (N, 4)
        self.vecs = vecs

    def __call__(self, a: int, b: int) -> tuple[float, int]:
        """(similarity, degrees b is turned against a)."""
        d = np.bitwise_count(self.turns[a] ^ self.turns[b, 0])  # a turned by 0, 90, 180, 270 against b
        turn = int(np.argmin(d))
        h = 1 - float(d[turn]) / HASH_SCALE
        c = float(self.vecs[a] @ self.vecs[b])
        return combine(h, c), turn * 90

    def pairs(self, threshold: float) -> dict[tuple[int, int], tuple[float, int]]:
        """(a, b) with a < b -> (similarity, turn) for every pair at or above `threshold`. A pair gets
        there by its hashes alone (a radius search over the hashes of all four turns) or with a cosine
        of at least CONFIRM_COSINE (the cosines above it are few): those are the only candidates."""
        n = len(self.turns)
        radius = int(np.floor((1 - threshold) * HASH_SCALE + 1e-9))  # h >= threshold
        base = faiss.IndexBinaryFlat(64)
        base.add(_codes(self.turns[:, 0]))
        cands: set[tuple[int, int]] = set()
        for turn in range(4):
            lims, _, ids = base.range_search(_codes(self.turns[:, turn]), radius + 1)
            for q in range(n):
                cands.update((min(q, int(j)), max(q, int(j))) for j in ids[lims[q]:lims[q + 1]] if j != q)
        cands.update(_cosine_pairs(self.vecs, max(CONFIRM_COSINE, threshold)))
        found = {}
        for a, b in sorted(cands):
            s, turn = self(a, b)
            if s >= threshold:
                found[(a, b)] = (s, turn)
        return found


def combine(h: float, c: float) -> float:
    """The pair's similarity from its hash similarity h and its full-frame cosine c."""
    return max(h, min(h + CONFIRM_BONUS, c)) if c >= CONFIRM_COSINE else h


def _cosine_pairs(vecs: np.ndarray, floor: float, chunk: int = 2048) -> list[tuple[int, int]]:
    """Every pair (a < b) of full-frame vectors whose cosine is at or above `floor`."""
    found = []
    for lo in range(0, len(vecs), chunk):
        rows, cols = np.nonzero(vecs[lo: lo + chunk] @ vecs.T >= floor)
        found.extend((lo + r, j) for r, j in zip(rows.tolist(), cols.tolist(), strict=True) if lo + r < j)
    return found


def _groups(found: dict[tuple[int, int], tuple[float, int]], sim: Similarity, recs: list[dict[str, Any]],
            metas: list[dict[str, Any]]) -> list[Group]:
    parent = list(range(len(recs)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in found:
        parent[root(x)] = root(y)
    members: dict[int, list[int]] = {}
    for x in range(len(recs)):
        members.setdefault(root(x), []).append(x)
    groups = []
    for ms in members.values():
        if len(ms) < 2:
            continue
        keep = _keep(ms, recs, metas)
        photos = []
        for x in ms:
            s, turn = (1.0, 0) if x == keep else sim(keep, x)
            m = metas[x]
            photos.append(DupPhoto(recs[x]["key"], m["width"], m["height"], recs[x]["size"], m["sharp"], s, turn))
        photos.sort(key=lambda p: (p.path != recs[keep]["key"], -p.similarity, p.path))
        groups.append(Group(photos, recs[keep]["key"], _why(photos)))
    groups.sort(key=lambda g: (-len(g.photos), g.keep))
    return groups


def _keep(ms: list[int], recs: list[dict[str, Any]], metas: list[dict[str, Any]]) -> int:
    """The largest photo; among those, the sharpest (within SHARP_TIE), then the oldest file (a copy is
    usually made after its original), then the largest file."""
    most = max(metas[x]["width"] * metas[x]["height"] for x in ms)
    largest = [x for x in ms if metas[x]["width"] * metas[x]["height"] == most]
    sharpest = max(metas[x]["sharp"] for x in largest)
    sharp = [x for x in largest if metas[x]["sharp"] >= sharpest * (1 - SHARP_TIE)]
    return min(sharp, key=lambda x: (recs[x]["mtime_ns"], -recs[x]["size"], recs[x]["key"]))


def _why(photos: list[DupPhoto]) -> str:
    k, rest = photos[0], photos[1:]
    if all(k.width * k.height > p.width * p.height for p in rest):
        return f"the largest ({k.width}x{k.height})"
    if all(k.sharp > p.sharp * (1 + SHARP_TIE) for p in rest if p.width * p.height == k.width * k.height):
        return f"the largest ({k.width}x{k.height}) and sharpest"
    return f"the largest ({k.width}x{k.height}), as sharp as any, the oldest file"


def group_sheets(result: DupesResult, folder: str | Path) -> list[Path]:
    """A contact sheet per group (group-001.png, ...), the photo to keep first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, g in enumerate(result.groups, 1):
        hits = [Hit(p.path, p.similarity, []) for p in g.photos]
        res = Result(f"group {n}: keep {Path(g.keep).name} ({g.why})", [], [], hits, len(hits), 0, True)
        out.append(contact_sheet(res, folder / f"group-{n:03d}.png", columns=min(4, len(hits))))
    return out
