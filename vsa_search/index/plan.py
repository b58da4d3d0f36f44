"""What a photo build starts from and ends with: the photos under the roots (scan), each photo's
plan (where its vectors come from) and the build's report."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..vision.images import is_photo
from .generation import file_digest


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


def scan_reachable(roots: list[Path], old_by_path: dict[str, dict[str, Any]],
                   unreachable: dict[str, int]) -> list[tuple[str, int, int]]:
    """scan() of the roots, where the indexed photos (`old_by_path`: path -> record) of a folder that
    is gone, or empty where it held photos (an unmounted drive), are unreachable: kept as they were,
    not removed; `unreachable` gets each such folder's count."""
    reachable = [root for root in roots if root.exists() or not any(is_under(p, root) for p in old_by_path)]
    entries = scan(reachable)
    for root in roots:
        held = [p for p in old_by_path if is_under(p, root)]
        if held and (root not in reachable or not any(is_under(e[0], root) for e in entries)):
            unreachable[str(root)] = len(held)
            entries.extend((p, old_by_path[p]["size"], old_by_path[p]["mtime_ns"]) for p in held)
    entries.sort()
    return entries


def plan_photos(entries: list[tuple[str, int, int]], old_by_path: dict[str, dict[str, Any]],
                old_hashes: Collection[str], in_work: Collection[str], skipped: dict[str, str]
                ) -> tuple[list[PlannedPhoto], int, int, int]:
    """Each photo's plan: its status against the index (a file of the same size and mtime keeps its
    hash; another is hashed again) and where its vectors come from (the index's `old_hashes`, an
    interrupted build's `in_work`, or the CNN). A file that cannot be read goes to `skipped`.
    Returns (plans, contents to encode, indexed files with new size/mtime, indexed paths gone)."""
    present = {p for p, _, _ in entries}
    # A photo gone from its old path and present under a new one was moved, not removed.
    gone = Counter(rec["hash"] for p, rec in old_by_path.items() if p not in present)
    missing = sum(gone.values())
    planned: list[PlannedPhoto] = []
    to_encode: set[str] = set()
    touched = 0  # same content, new size/mtime: only the record needs rewriting
    for path, size, mtime in entries:
        old = old_by_path.get(path)
        if old is not None and old["size"] == size and old["mtime_ns"] == mtime:
            digest: str | None = old["hash"]
        else:
            touched += old is not None
            try:
                digest = file_digest(Path(path))
            except OSError as e:
                digest = None
                skipped[path] = f"{path}: cannot read ({e.strerror or e})"
        if digest is None:
            continue
        if old is not None:
            status = "unchanged" if digest == old["hash"] else "changed"
        elif gone[digest] > 0:
            gone[digest] -= 1
            status = "moved"
        else:
            status = "added"
        source = "old" if digest in old_hashes else "work" if digest in in_work else "encode"
        if source == "encode":
            to_encode.add(digest)
        planned.append(PlannedPhoto(path, size, mtime, digest, source, status))
    return planned, len(to_encode), touched, missing


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
