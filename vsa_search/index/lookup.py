"""Finding one photo's boxes and region vectors in a photo index (find_photo): what `vsa align`
and `vsa caption` reuse instead of running the CNN again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import paths
from ..core.errors import SearchIndexError
from ..vision.concepts import Concepts
from .layout import DEFAULT_NAME, SENTENCES_SUFFIX, Location, resolve
from .store import open_index

if TYPE_CHECKING:  # torch stays out of a search's imports (cold start)
    from ..models.alignment import LoadedAlign


@dataclass(frozen=True)
class StoredRegions:
    """A photo's regions as a photo index stored them, and the index they came from (its name as
    `--index` takes it)."""

    index: str
    boxes: np.ndarray  # (R, 4)
    vectors: np.ndarray  # (R, h) float32
    concepts: Concepts | None = None  # None: not asked for, or an index built before concepts


def find_item(ix: Any, key: str) -> int | None:
    """The item id of `key` (items are stored sorted by key, the absolute path: binary search), or None."""
    lo, hi = 0, len(ix)
    while lo < hi:
        mid = (lo + hi) // 2
        if ix.record(mid)["key"] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(ix) and ix.record(lo)["key"] == key else None


def find_photo(loaded: LoadedAlign, photo: str | Path, name: str | Path | None = None,
               with_concepts: bool = False) -> StoredRegions | None:
    """A photo's stored regions from a photo index, or None when no index can vouch for them: none
    built with this model holds the photo, or the file changed since (size or mtime). `name`: that
    index only (one that does not exist is an error); None: the default index, then every other.
    with_concepts=True reads the regions' stored concepts too."""
    try:
        st = Path(photo).stat()
    except OSError:
        return None
    if name is not None:
        return _find_in(name, str(name), loaded, photo, st, with_concepts)
    # No index named: the default one, then every other photo index (the demo's is "demo").
    others = sorted(p for p in paths.indexes_dir().glob("*") if p.is_symlink() and p.name != DEFAULT_NAME
                    and not p.name.endswith(SENTENCES_SUFFIX)) if paths.indexes_dir().is_dir() else []
    for link in [resolve(None), *others]:
        try:
            if Location(link).current() is None:
                continue
            found = _find_in(link, link.name, loaded, photo, st, with_concepts)
        except SearchIndexError:
            continue  # damaged or of another kind: computing the regions afresh is always right
        if found is not None:
            return found
    return None


def _find_in(where: str | Path, name: str, loaded: LoadedAlign, photo: str | Path, st: os.stat_result,
             with_concepts: bool = False) -> StoredRegions | None:
    with open_index(where) as ix:
        if ix.manifest.get("model", {}).get("fingerprint") != loaded.fingerprint:
            return None
        lo = find_item(ix, str(Path(photo).absolute()))
        if lo is None:
            return None
        rec = ix.record(lo)
        if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            return None
        blob = ix.concepts_bytes([lo])[0] if with_concepts else None
        return StoredRegions(name, ix.boxes(lo).copy(), ix.vectors([lo])[0].astype(np.float32),
                             Concepts.from_bytes(blob) if blob is not None else None)
