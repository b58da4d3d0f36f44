"""What a photo build starts from and ends with: the photos under the roots (scan), each photo's
plan (where its vectors come from) and the build's report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..vision.images import is_photo


def scan(roots: list[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime_ns) of every photo under the roots, sorted by path."""
    found: dict[str, tuple[int, int]] = {}
    for root in roots:
        if not root.exists():
            raise UsageError(f"{root}: no such file or directory")
        files = [root] if root.is_file() else (p for p in root.rglob("*"))
        for p in files:
            if not is_photo(p):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            if not p.is_file():
                continue
            found[os.path.abspath(p)] = (st.st_size, st.st_mtime_ns)  # normalised: no ./ or ../
    return [(p, s, m) for p, (s, m) in sorted(found.items())]


@dataclass
class PlannedPhoto:
    path: str
    size: int
    mtime_ns: int
    hash: str
    source: str  # where its vectors come from: old (the current index) | work (an interrupted build) | encode
    status: str  # added | changed | moved | unchanged


@dataclass
class BuildReport:
    index: str
    photos: int = 0
    regions: int = 0
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0  # photos that went through the CNN in this run
    resumed: int = 0  # photos whose vectors an interrupted build had already stored
    skipped: dict[str, str] = field(default_factory=dict)
    index_type: str = ""
    model: str = ""
    up_to_date: bool = False
    model_changed: bool = False
    replaced: str | None = None  # why the previous index could not be reused at all
    unreachable: dict[str, int] = field(default_factory=dict)  # root gone or empty -> its photos, kept
    work_discarded: str | None = None  # why an interrupted build's vectors were not reused
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "photos": self.photos, "regions": self.regions, "added": self.added,
                "changed": self.changed, "moved": self.moved, "removed": self.removed,
                "unchanged": self.unchanged, "encoded": self.encoded, "resumed": self.resumed,
                "skipped": [{"path": p, "reason": r} for p, r in sorted(self.skipped.items())],
                "index_type": self.index_type, "model": self.model, "up_to_date": self.up_to_date,
                "model_changed": self.model_changed, "replaced": self.replaced,
                "unreachable": [{"root": p, "photos": n} for p, n in sorted(self.unreachable.items())],
                "work_discarded": self.work_discarded}


def is_under(path: str, root: str | Path) -> bool:
    root = str(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
