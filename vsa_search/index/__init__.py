"""The photo index (and its image->text twin, the sentence index): fragment vectors stored once
(int8, memory-mapped), a FAISS first stage of compact codes, per-item records in LMDB, and a
manifest. The only package that knows FAISS. Modules: layout (where an index lives, the lock, the
file names), arrays (int8 codes, .npy row files), faiss_types, store (reader of a generation),
generation (writer of one), lookup (one photo's regions), photos (incremental photo builds),
photometa (hashes and EXIF stored per photo), sentences, shards (split builds, merge), query
(search), openvocab (search with the concept bridge), likeness (photos like a photo), minus,
floor (the relevance floor), filters (metadata filters over any result list), dupes
(near-duplicate groups) and sheet (contact sheets); this face adds build(), search(), status()
and remove().

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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import paths
from ..core.errors import SearchIndexError, UsageError
from . import openvocab
from .faiss_types import INDEX_TYPES, choose_for_memory, choose_type, memory_bytes
from .filters import FilterReport, MetaFilter, search_filtered
from .floor import Floored, apply_floor, load_calibration
from .generation import Item, write_generation
from .layout import DEFAULT_NAME, KINDS, Location, disk_size, resolve, work_meta
from .lookup import find_photo
from .minus import MINUS_WEIGHT, MinusResult, search_minus
from .query import Result, generator_for, model_for, search_image, search_text, text_model_for
from .shards import MergeReport, check_shard, merge, shard_of
from .store import FragmentIndex, open_index

if TYPE_CHECKING:
    from ..models.alignment import LoadedAlign
    from .dupes import DupesResult
    from .dupes import find as find_dupes
    from .likeness import LikeResult, search_like
    from .photos import PhotoBuild, build_photos
    from .plan import BuildReport
    from .sentences import TextReport, build_sentences

# The builders pull in torch and the CNN (seconds), search by photo too; a text search needs neither,
# so they load on first use.
_LAZY = {"PhotoBuild": "photos", "build_photos": "photos", "BuildReport": "plan", "TextReport": "sentences",
         "build_sentences": "sentences", "LikeResult": "likeness", "search_like": "likeness", "DupesResult": "dupes",
         "find_dupes": "dupes"}
_RENAMED = {"find_dupes": "find"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), _RENAMED.get(name, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BuildReport", "DEFAULT_NAME", "DupesResult", "FilterReport", "Floored", "FragmentIndex", "INDEX_TYPES",
           "Item", "KINDS", "LikeResult", "Location", "MergeReport", "MetaFilter", "MinusResult", "PhotoBuild",
           "Result", "TextReport", "build", "build_photos", "build_sentences", "check_shard", "choose_for_memory",
           "choose_type", "find_dupes", "find_photo", "like", "memory_bytes", "merge", "model_for", "open_index",
           "remove", "resolve", "search", "search_filtered", "search_floored", "search_like", "search_minus",
           "search_photo", "search_words", "shard_of", "status", "text_model_for", "write_generation"]

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
            pending = work_meta(loc) if kind == "photos" else {}
            if pending.get("roots"):  # what `vsa index build --index NAME` continues with
                entry["interrupted_roots"] = pending["roots"]
                entry["interrupted_model_path"] = pending.get("model_path")
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
        removed.append(str(loc.link))
    if not removed:
        raise SearchIndexError(f"no index {resolve(name).name!r} at {resolve(name)}")
    return removed


# --------------------------------------------------------------------------- library API


def build(roots: list[str | Path], name: str | Path | None = None, model: str | Path | LoadedAlign = paths.ALIGN_MODEL,
          index_type: str = "auto", device: str | None = None,
          on_progress: Callable[[int], None] | None = None) -> BuildReport:
    """Index (or update) the photos under `roots` into index `name` with an alignment model."""
    from ..core.device import pick_device
    from ..models.alignment import LoadedAlign, load_align
    from .photos import build_photos

    # One device for the CNN and the alignment model alike: a model given loaded keeps its own.
    if isinstance(model, LoadedAlign):
        loaded, dev = model, pick_device(device or next(model.model.parameters()).device)
    else:
        dev = pick_device(device)
        loaded = load_align(paths.find_model(str(model)), dev)
    return build_photos([Path(r) for r in roots], loaded, name, index_type, on_progress=on_progress, device=dev)


def search_words(ix: FragmentIndex, loaded: Any, text: str, k: int = 10, per_word: int | None = None,
                 bridge: bool = True) -> Any:
    """`vsa search TEXT` on an open photo index: with the bridge (the default), every query word
    counts, through the CNN's classes too (openvocab.search_text); without it, the model alone.
    `loaded`: a LoadedAlign or its text encoder (query.text_model_for); `per_word` sets the first
    stage's depth on either path."""
    if bridge:
        return openvocab.search_text(ix, loaded, text, k, per_word=per_word)
    return search_text(ix, loaded, text, k, per_word)


def search_photo(ix: FragmentIndex, loaded: LoadedAlign, photo: str | Path | int, k: int = 10,
                 text: str | None = None, encoder: Any = None, device: str | None = None, generator: Any = None,
                 generator_encoder: Any = None) -> Any:
    """Search by photo, one entry for both kinds of index: a photo index gives the photos like it
    (like.search_like: its regions against theirs, optionally steered by `text`), a sentence index
    the sentences that describe it (query.search_image). Both score with the photo's region vectors
    under the same max-over-regions rule; a sentence index built with a caption generator is re-ranked by it
    (`generator`: query.generator_for's, loaded once by a caller that searches often; None: loaded here)."""
    if ix.kind == "sentences":
        if text is not None or isinstance(photo, int):
            raise UsageError("a sentence index is searched with a photo file alone")
        gen = generator if generator is not None else generator_for(ix)
        return search_image(ix, loaded, photo, k, encoder=encoder, device=device, generator=gen,
                            generator_encoder=generator_encoder)
    from .likeness import search_like

    return search_like(ix, loaded, photo, text, k, encoder=encoder, device=device)


def like(photo: str | Path | int, text: str | None = None, name: str | Path | None = None, k: int = 10,
         model: str | Path | None = None) -> LikeResult:
    """Photos of index `name` like `photo` (an indexed photo's id or path, or any photo file),
    optionally steered by `text`, as `vsa search --like` finds them: each hit with its region pairs."""
    with open_index(name, "photos") as ix:
        from .likeness import search_like

        return search_like(ix, model_for(ix, model), photo, text, k)


def search(text: str, name: str | Path | None = None, k: int = 10, model: str | Path | None = None,
           bridge: bool = True, where: MetaFilter | None = None, minus: list[str] | None = None,
           minus_weight: float = MINUS_WEIGHT) -> Any:
    """Photos of index `name` for `text`, best first: a result with `.hits` (path, score, and the
    box each word matched), as `vsa search` finds them. `where` (a MetaFilter) keeps only the photos
    it passes; the result then carries `.filter`, a FilterReport (how many photos had no date...).
    `minus`: terms whose photos fall (score = S(text) - minus_weight x S(term)); their words' boxes
    are in each hit's words too."""
    with open_index(name, "photos") as ix:
        loaded = text_model_for(ix, model)

        def run(n: int) -> Any:
            if minus:
                return search_minus(ix, loaded, text, minus, n, partial(search_words, bridge=bridge), minus_weight)
            return search_words(ix, loaded, text, n, bridge=bridge)

        if where is None or not where.active:
            return run(k)
        result, report = search_filtered(ix, where, k, run)
        result.filter = report
        return result


def search_floored(text: str, name: str | Path | None = None, k: int = 10, model: str | Path | None = None,
                   min_score: float | None = None, bridge: bool = True, minus: list[str] | None = None) -> Floored:
    """`search`, then the relevance floor (`vsa search` without --min-score): `.hits` the hits whose
    calibrated probability of being right reaches `min_score` (default: the calibration's floor),
    `.below` the best few of the others, `.probability[id(hit)]`, `.to_dict()` as `--json`."""
    with open_index(name, "photos") as ix:
        loaded = text_model_for(ix, model)
        res = search_minus(ix, loaded, text, minus, k, partial(search_words, bridge=bridge)) if minus \
            else search_words(ix, loaded, text, k, bridge=bridge)
        return apply_floor(res, load_calibration(loaded), min_score)
