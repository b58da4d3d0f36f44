"""Sharded builds: which slice of a split a photo belongs to, and merging the shards' indexes
into one (equal, byte for byte, to a single build)."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import SearchIndexError, UsageError
from .faiss_types import choose_for_memory, memory_bytes
from .generation import Item, write_generation
from .layout import MANIFEST, Location, resolve
from .store import FragmentIndex


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {i}/{n}: want i/n with 0 <= i < n")
    return int(i), int(n)



def shard_of(path: str, roots: list[Path], n: int) -> int:
    """Which of n shards a photo belongs to: a stable hash of its path relative to the root that
    holds it, so the split is the same on every machine and for every build of the same roots."""
    rel = path
    for root in roots:
        r = str(root).rstrip(os.sep)
        if path == r:
            rel = os.path.basename(path)
            break
        if path.startswith(r + os.sep):
            rel = path[len(r) + 1:]
            break
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=8).digest(), "big") % n


@dataclass
class MergeReport:
    index: str
    parts: list[str]
    photos: int = 0
    regions: int = 0
    skipped: int = 0
    index_type: str = ""
    memory_bytes: int = 0  # FAISS RAM while searching (estimate, memory_bytes())
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "parts": self.parts, "photos": self.photos, "regions": self.regions,
                "skipped": self.skipped, "index_type": self.index_type, "memory_bytes": self.memory_bytes,
                "seconds": round(self.seconds, 2)}


def merge(parts: list[str | Path], name: str | Path | None = None, index_type: str = "auto",
          max_memory: int | None = None, on_progress: Callable[[int], None] | None = None) -> MergeReport:
    """Combine photo indexes (the shards of `vsa index build --shard i/n`) into the index NAME.
    Items are merged in key order and their fragment id ranges renumbered, and the FAISS index is
    built from the parts' stored vectors as one build would: with the same photos, roots, model
    and options the result equals a single build byte for byte (so do its search results). No
    photo is read or encoded again. on_progress(n) counts photos."""
    t0 = time.perf_counter()
    if not parts:
        raise UsageError("give the shard indexes to merge")
    location = Location(resolve(name))
    report = MergeReport(index=str(location.link), parts=[])
    opened: list[FragmentIndex] = []
    try:
        for p in parts:
            loc = Location(resolve(p))
            if loc.link == location.link:
                raise UsageError(f"{loc.link}: the merged index cannot also be one of its parts")
            opened.append(FragmentIndex(loc, "photos"))
            report.parts.append(str(loc.link))
        first = opened[0].manifest
        for x in opened[1:]:
            if (x.manifest["model"]["fingerprint"] != first["model"]["fingerprint"] or x.dim != opened[0].dim
                    or x.shared_dim != opened[0].shared_dim):
                raise SearchIndexError(f"{x.location.link} was built with model {x.manifest['model']['fingerprint']}, "
                                  f"{opened[0].location.link} with {first['model']['fingerprint']}: "
                                  "build every shard with the same --model")
        _check_shard_set(opened)
        roots: list[str] = []
        for x in opened:
            roots += [r for r in x.manifest.get("roots", []) if r not in roots]
        skipped: dict[str, str] = {}
        for x in opened:
            skipped.update(x.skipped())
        photos = sum(len(x) for x in opened)
        per_photo = first.get("max_regions")
        # As PhotoBuild.run: "auto" decides on photos x max_regions (the count it knows before writing).
        estimate = photos * per_photo if per_photo else sum(x.fragments for x in opened)
        chosen = choose_for_memory(index_type, estimate, opened[0].dim, max_memory)

        def items(x: FragmentIndex) -> Iterator[Item]:
            recs = list(x.records())
            for a in range(0, len(recs), 512):
                chunk = recs[a:a + 512]
                cons = x.concepts_bytes(range(a, a + len(chunk)))
                for j, rec in enumerate(chunk):
                    info = {k: v for k, v in rec.items() if k not in ("key", "first", "count")}
                    yield Item(rec["key"], info, None, x.boxes(a + j), cons[j], float(x.offsets[a + j]),
                               x.stored(a + j))
                if on_progress:
                    on_progress(len(chunk))

        last: list[str] = []

        def unique(stream: Iterator[Item]) -> Iterator[Item]:
            for it in stream:
                if last and it.key == last[0]:
                    raise SearchIndexError(f"{it.key} is in two of the parts: merge shards of one split (i/n)")
                last[:] = [it.key]
                yield it

        merged = unique(heapq.merge(*(items(x) for x in opened), key=lambda it: it.key))
        with location.lock():
            gen = write_generation(location, "photos", merged, opened[0].dim, first["model"], chosen,
                                   extra={"roots": roots}, skipped=skipped, shared_dim=opened[0].shared_dim)
    finally:
        for x in opened:
            x.close()
    manifest = json.loads((gen / MANIFEST).read_text())
    report.photos, report.regions = manifest["counts"]["photos"], manifest["counts"]["regions"]
    report.skipped, report.index_type = manifest["counts"]["skipped"], manifest["index_type"]
    report.memory_bytes = memory_bytes(report.index_type, report.regions, int(manifest["dim"]))
    report.seconds = time.perf_counter() - t0
    return report


def _check_shard_set(opened: list[FragmentIndex]) -> None:
    """Shards of one split, each once, none missing (plain indexes of other folders may join too)."""
    specs = [(x.manifest["shard"], x.location.link) for x in opened if "shard" in x.manifest]
    if not specs:
        return
    ns = {n for (_, n), _ in specs}
    if len(ns) > 1:
        raise UsageError("the parts come from different splits (" + ", ".join(f"{i}/{n}" for (i, n), _ in specs)
                         + "): merge the shards of one split")
    n = ns.pop()
    seen: dict[int, Path] = {}
    for (i, _), link in specs:
        if i in seen:
            raise UsageError(f"shard {i}/{n} is given twice ({seen[i]} and {link})")
        seen[i] = link
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise UsageError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: "
                         "build them (vsa index build PATH --shard i/n) before merging")
