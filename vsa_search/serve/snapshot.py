"""One generation of the index as the server holds it: the photo index (and its sentence twin) with
their models, counted users, and photo ids found by key. engine.py opens and retires them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import errors


@dataclass
class Snapshot:
    """One generation of the index (photos, and sentences when there are any) with its models.
    Requests hold it while they run; a retired snapshot closes when its last user leaves."""

    key: tuple[str | None, str | None]  # the generation directories the links pointed at
    photos: Any  # index.FragmentIndex
    model: Any  # the LoadedAlign the photos were indexed with
    sentences: Any = None
    sentence_model: Any = None
    sentence_generator: Any = None  # the caption generator the sentence index re-ranks with, if any
    users: int = 0
    retired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: dict[str, int] = field(default_factory=dict)  # photo key -> id, as found
    files: Any = None  # index.files.IndexedFiles: whether a photo's file is still the one indexed

    @property
    def generation(self) -> str:
        return Path(self.key[0] or "").name

    def release(self, retire: bool = False) -> None:
        with self.lock:
            if retire:
                self.retired = True
            else:
                self.users -= 1
            done = self.retired and self.users == 0
        if done:
            for ix in (self.photos, self.sentences):
                if ix is not None:
                    ix.close()

    def photo_id(self, key: str) -> int:
        """An item id from its key: items are stored sorted by key, so binary search finds it
        (remembered: the same photos come back query after query)."""
        if key in self.ids:
            return self.ids[key]
        lo, hi = 0, len(self.photos)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.photos.record(mid)["key"] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(self.photos) or self.photos.record(lo)["key"] != key:
            raise errors.SearchIndexError(f"{key}: not in this index")
        self.ids[key] = lo
        return lo

    def size(self, i: int) -> list[int]:
        """(width, height) of photo i: region 0 is the full frame."""
        b = self.photos.boxes(i)
        return [int(b[0][2]), int(b[0][3])] if len(b) else [0, 0]
