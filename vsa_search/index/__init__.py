"""The photo index (and its image->text twin, the sentence index): fragment vectors stored once
(int8, memory-mapped), a FAISS first stage of compact codes, per-item records in LMDB, and a
manifest. The only package that knows FAISS. Modules: layout (where an index lives, the lock, the
file names), arrays (int8 codes, .npy row files), faiss_types, store (reader of a generation),
generation (writer of one), lookup (one photo's regions), photos (incremental photo builds),
sentences, shards (split builds, merge), query (search) and sheet (contact sheets); this face adds
build(), search(), status() and remove().

On disk, `indexes/NAME` is a symlink to a hidden generation directory beside it:

    indexes/NAME -> .NAME.g000003/      manifest.json, meta.lmdb/, vectors.npy, scales.npy,
                                        shared.npy, items.npy, boxes.npy, concept_*.npy,
                                        regions.faiss and shared.faiss (not for "flat")
    indexes/.NAME.work/                 vectors encoded by a build in progress (LMDB, by content hash)
    indexes/.NAME.lock                  held by a running build

A build writes a complete new generation to a temporary sibling, renames it, then swaps the
symlink with one atomic rename: a reader resolves the link once, so it sees the old index or
the new one, never a mix. Vectors are persisted to the work area batch by batch as they are
encoded, so a build killed at any moment resumes where it stopped; the generation is rebuilt
deterministically from those vectors (items sorted by key), so it ends equal to a clean build.

An "item" is a photo (fragments = its regions, with boxes) or a sentence (fragments = its
words). Fragment ids are consecutive per item: item i owns ids first[i] .. first[i] + count[i].
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import SearchIndexError
from ..models.alignment import LoadedAlign, load_align
from . import openvocab
from .faiss_types import INDEX_TYPES, choose_for_memory, choose_type, memory_bytes
from .generation import Item, write_generation
from .layout import DEFAULT_NAME, KINDS, Location, disk_size, resolve
from .lookup import find_photo
from .photos import PhotoBuild, build_photos
from .plan import BuildReport
from .query import Result, model_for, search_text
from .sentences import TextReport, build_sentences
from .shards import MergeReport, check_shard, merge, shard_of
from .store import FragmentIndex, open_index

__all__ = ["DEFAULT_NAME", "INDEX_TYPES", "KINDS", "BuildReport", "FragmentIndex", "Item", "Location", "MergeReport",
           "PhotoBuild", "Result", "TextReport", "build", "build_photos", "build_sentences", "check_shard",
           "choose_for_memory", "choose_type", "find_photo", "memory_bytes", "merge", "open_index", "remove",
           "resolve", "search", "shard_of", "status", "write_generation"]

# --------------------------------------------------------------------------- status and remove


def status(name: str | Path | None = None, verify: bool = False) -> dict[str, Any]:
    """What an index holds: counts, model, type, size on disk; and its sentence twin if any. A
    damaged index is reported under "damaged"; `verify` checks every file against its checksum."""
    out: dict[str, Any] = {"index": str(resolve(name))}
    found = False
    for kind in KINDS:
        loc = Location(resolve(name, kind))
        gen = loc.current()
        work = loc.work.exists()
        if gen is None and not work:
            continue
        found = True
        entry: dict[str, Any] = {"path": str(loc.link)}
        if gen is not None:
            try:
                ix = FragmentIndex(loc, kind)
            except SearchIndexError as e:
                entry["damaged"] = str(e)
            else:
                with ix:
                    m = ix.manifest
                    entry.update({**m["counts"], "index_type": m["index_type"], "model": m["model"]["fingerprint"],
                                  "model_path": m["model"]["path"], "dim": m["dim"],
                                  "bytes": disk_size(ix.dir)})
                    if kind == "photos":
                        entry["roots"] = m["roots"]
                    if verify:
                        problems = ix.verify()
                        if problems:
                            entry["damaged"] = f"index {ix.location.name}: {'; '.join(problems)}"
                        entry["verified"] = not problems
        if work:
            entry["interrupted_build"] = True
        out[kind] = entry
    if not found:
        raise SearchIndexError(f"no index {resolve(name).name!r} at {resolve(name)} "
                               "(create it with `vsa index build PATH`)")
    return out


def remove(name: str | Path | None = None) -> list[str]:
    """Delete an index (photos and sentences, finished or interrupted); returns what was removed."""
    removed: list[str] = []
    for kind in KINDS:
        loc = Location(resolve(name, kind))
        if loc.current() is None and not loc.generations() and not loc.work.exists():
            continue
        with loc.lock():
            if loc.link.is_symlink():
                loc.link.unlink()  # first: from here on readers see no index, never a partial one
            for g in loc.generations():
                shutil.rmtree(g, ignore_errors=True)
            shutil.rmtree(loc.work, ignore_errors=True)
        loc.lockfile.unlink(missing_ok=True)
        removed.append(str(loc.link))
    if not removed:
        raise SearchIndexError(f"no index {resolve(name).name!r} at {resolve(name)}")
    return removed


# --------------------------------------------------------------------------- library API


def build(roots: list[str | Path], name: str | Path | None = None, model: str | Path | LoadedAlign = "align",
          index_type: str = "auto", device: str | None = None,
          on_progress: Callable[[int], None] | None = None) -> BuildReport:
    """Index (or update) the photos under `roots` into index `name` with an alignment model."""
    loaded = model if isinstance(model, LoadedAlign) else load_align(paths.find_model(str(model)), device or "cpu")
    return build_photos([Path(r) for r in roots], loaded, name, index_type, on_progress=on_progress, device=device)


def search_words(ix: FragmentIndex, loaded: LoadedAlign, text: str, k: int = 10, per_word: int | None = None,
                 bridge: bool = True) -> Any:
    """`vsa search TEXT` on an open photo index: with the bridge (the default), every query word
    counts, through the CNN's classes too (openvocab.search_text); without it, the model alone."""
    if bridge:
        return openvocab.search_text(ix, loaded, text, k)
    return search_text(ix, loaded, text, k, per_word)


def search(text: str, name: str | Path | None = None, k: int = 10, model: str | Path | None = None,
           bridge: bool = True) -> Any:
    """Photos of index `name` for `text`, best first: a result with `.hits` (path, score, and the
    box each word matched), as `vsa search` finds them."""
    with open_index(name, "photos") as ix:
        return search_words(ix, model_for(ix, model), text, k, bridge=bridge)
