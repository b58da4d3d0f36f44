"""Finding one photo's boxes and region vectors in a photo index (find_photo): what `vsa align`
and `vsa caption` reuse instead of running the CNN again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import SearchIndexError
from ..models.alignment import LoadedAlign
from ..vision.concepts import Concepts
from .layout import DEFAULT_NAME, SENTENCES_SUFFIX, Location, resolve
from .store import open_index


def find_photo(loaded: LoadedAlign, photo: str | Path, name: str | Path | None = None,
               with_concepts: bool = False) -> tuple[Any, ...] | None:
    """(boxes (R, 4), region vectors (R, h)) of a photo from a photo index, or None when the index
    cannot vouch for them: no default index, built with another model, photo not in it, or the
    file changed since (size or mtime). A named index that does not exist is an error.
    with_concepts=True appends the regions' stored concepts (None for an index built before them)."""
    try:
        st = Path(photo).stat()
    except OSError:
        return None
    if name is not None:
        return _find_in(name, loaded, photo, st, with_concepts)
    # No index named: the default one, then every other photo index (the demo's is "demo").
    others = sorted(p for p in paths.indexes_dir().glob("*") if p.is_symlink() and p.name != DEFAULT_NAME
                    and not p.name.endswith(SENTENCES_SUFFIX)) if paths.indexes_dir().is_dir() else []
    for link in [resolve(None), *others]:
        try:
            if Location(link).current() is None:
                continue
            found = _find_in(link, loaded, photo, st, with_concepts)
        except SearchIndexError:
            continue  # damaged or of another kind: computing the regions afresh is always right
        if found is not None:
            return found
    return None


def _find_in(name: str | Path, loaded: LoadedAlign, photo: str | Path, st: os.stat_result,
             with_concepts: bool = False) -> tuple[Any, ...] | None:
    with open_index(name) as ix:
        if ix.manifest.get("model", {}).get("fingerprint") != loaded.fingerprint:
            return None
        # Items are stored sorted by key (the absolute path), so binary search finds the photo.
        key = str(Path(photo).absolute())
        lo, hi = 0, len(ix)
        while lo < hi:
            mid = (lo + hi) // 2
            if ix.record(mid)["key"] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(ix):
            return None
        rec = ix.record(lo)
        if rec["key"] != key or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            return None
        found = ix.boxes(lo).copy(), ix.vectors([lo])[0]
        if with_concepts:
            blob = ix.concepts_bytes([lo])[0]
            return (*found, Concepts.from_bytes(blob) if blob is not None else None)
        return found
