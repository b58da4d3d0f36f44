"""Photo index builds: walk the folders, sort photos into new, changed, moved, removed and
unchanged (by size and mtime, then content hash), encode only what no index or interrupted build
already holds, and write a new generation."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DamagedError, SearchIndexError, UsageError
from ..core.kv import KV
from ..models import textenc
from ..models.alignment import LoadedAlign
from ..models.encode import encode_regions, photo_offset
from ..models.score import shared_width
from ..vision.concepts import from_features
from ..vision.images import DEFAULT_MAX_MEGAPIXELS, PHOTO_KINDS
from ..vision.regions import RegionEncoder, RegionFeatures, decode_side, extract
from . import photometa
from .faiss_types import check_index_type, choose_for_memory
from .generation import Item, as_stored, model_info, write_generation
from .layout import (
    _WORK_META,
    _WORK_VEC,
    FORMAT_VERSION,
    MANIFEST,
    Location,
    _Lock,
    disk_error,
    drop_empty_work,
    generation_bytes,
    read_manifest,
    resolve,
    work_roots,
)
from .plan import BuildReport, PlannedPhoto, is_under, plan_photos, scan_reachable
from .shards import check_shard, shard_of
from .store import FragmentIndex

BATCH_SIZE = 8  # photos per CNN batch, and per batch saved to the work area


class PhotoBuild:
    """`with PhotoBuild(...) as b: b.plan(); b.run(on_progress)` — planning is cheap (stat and
    hash), so the CLI can size its progress bar before the CNN starts."""

    def __init__(self, roots: list[Path] | None, model: LoadedAlign, name: str | Path | None = None,
                 index_type: str = "auto", device: str | torch.device | None = None, batch_size: int = BATCH_SIZE,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, encoder: Any = None,
                 max_memory: int | None = None, shard: tuple[int, int] | None = None, replace: bool = False):
        check_index_type(index_type)
        self.location = Location(resolve(name))
        self.model = model
        self.roots = [Path(os.path.abspath(Path(r).expanduser())) for r in roots] if roots else None
        self.index_type = index_type
        self.device = device
        self.batch_size = batch_size
        self.max_megapixels = max_megapixels
        self.encoder = encoder
        self.max_memory = max_memory  # bytes of FAISS RAM; past it "auto" builds IVF-PQ (choose_for_memory)
        self.shard = check_shard(shard) if shard is not None else None  # (i, n): index only slice i of n
        self.replace = replace  # may drop the index's photos: another model, folders no longer named
        self.report = BuildReport(index=str(self.location.link), model=model.fingerprint)
        self.planned: list[PlannedPhoto] = []
        self._lock: _Lock | None = None
        self.old: FragmentIndex | None = None
        self.work: KV | None = None

    def __enter__(self) -> PhotoBuild:
        self._lock = self.location.lock().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        if exc[0] is not None:  # a failed build keeps the vectors it encoded for the next one, nothing else
            drop_empty_work(self.location)
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    def _close(self) -> None:
        if self.old is not None:
            self.old.close()
            self.old = None
        if self.work is not None:
            self.work.close()
            self.work = None

    # -- planning
    def plan(self) -> int:
        """Compare the photos on disk with the current index; returns how many photos need work: the
        CNN, or (for an index from before photometa) reading their hashes and EXIF."""
        r = self.report
        old_manifest = self._open_old()
        old_by_path: dict[str, dict[str, Any]] = {}
        self.old_item_by_hash: dict[str, int] = {}
        self.meta_missing = 0  # records of an older build without photometa: the next write adds it
        if self.old is not None:
            for i, rec in enumerate(self.old.records()):
                old_by_path[rec["key"]] = rec
                self.old_item_by_hash.setdefault(rec["hash"], i)
                self.meta_missing += photometa.current(rec) is None
        entries = scan_reachable(self.roots or [], old_by_path, r.unreachable)
        if not entries and not (old_manifest and old_manifest["counts"].get("photos")):
            # Nothing to index and nothing indexed before: almost certainly the wrong folder.
            # (A folder emptied of its photos keeps them as unreachable, above: an unmounted drive looks
            # the same; `--replace` with the other folders drops them.)
            where = ", ".join(str(r) for r in self.roots or [])
            raise UsageError(f"no photos ({', '.join(PHOTO_KINDS)}) under {where}")
        try:
            self.work = self._open_work()
        except Exception as e:
            why = disk_error(e, self.location.link.parent)
            if why is None:
                raise
            raise why from None
        in_work = {k[len(_WORK_VEC):] for k in self.work.keys(_WORK_VEC)}
        if self.shard is not None:
            entries = [e for e in entries if shard_of(e[0], self.roots, self.shard[1]) == self.shard[0]]
        self.planned, self.to_encode, self.touched, missing = plan_photos(
            entries, old_by_path, self.old_item_by_hash, in_work, r.skipped)
        self._tally()
        r.removed = missing - r.moved
        # Photos whose vectors are reused from an index built before photometa: their hashes and EXIF
        # are read from the files (no CNN) in run(), counted in the progress with the photos to encode.
        self.meta_todo = {p.hash: p.path for p in self.planned if p.source == "old"
                          and photometa.current(self.old.record(self.old_item_by_hash[p.hash])) is None} \
            if self.meta_missing else {}
        self.described: dict[str, dict[str, Any]] = {}
        return self.to_encode + len(self.meta_todo)

    def _open_old(self) -> dict[str, Any] | None:
        """Open the current index (kept in self.old while its vectors can be reused) and settle the
        folders to index; returns the index's manifest (None without one)."""
        loc, r = self.location, self.report
        for root in self.roots or []:  # a folder named on the command line must be there (one from the
            if not root.exists():       # index's manifest may be unreachable: its photos are kept)
                raise UsageError(f"{root}: no such file or directory")
        if loc.current() is not None:
            try:
                self.old = FragmentIndex(loc, "photos")
            except SearchIndexError as e:
                # An index this version cannot read (old format, damaged files): build it anew.
                r.replaced = str(e)
        old_manifest = self.old.manifest if self.old else None
        if self.roots is None:
            # An interrupted build's folders first (it is what was asked last), then the index's: a
            # damaged index still names its folders in its manifest, so it is rebuilt from them.
            named = work_roots(loc) or (old_manifest or read_manifest(loc) or {}).get("roots")
            if not named:
                raise UsageError(f"give the folders to index: vsa index build PATH... ({r.replaced})" if r.replaced
                                 else "give the folders to index: vsa index build PATH...")
            self.roots = [Path(p) for p in named]
        if old_manifest and not self.replace:
            self._refuse_drops(old_manifest)
        if old_manifest and old_manifest["model"]["fingerprint"] != self.model.fingerprint:
            r.model_changed = True
            self.old.close()  # type: ignore[union-attr]
            self.old = None  # its vectors belong to another model: encode everything again
        return old_manifest

    def _refuse_drops(self, old: dict[str, Any]) -> None:
        """Another model, or folders that leave some of the index's out, drop photos the index
        holds: only with `replace`, and the message says what would go."""
        name, n = self.location.name, old["counts"].get("photos", 0)
        if old["model"]["fingerprint"] != self.model.fingerprint:
            raise UsageError(f"index {name} was built with model {old['model']['fingerprint']} "
                             f"({old['model']['path']}); building it with {self.model.fingerprint} ({self.model.path}) "
                             f"drops the vectors of its {n} photos and encodes them all again: add --replace")
        left_out = [p for p in old["roots"] if not any(is_under(p, str(root)) for root in self.roots or [])]
        if left_out:
            raise UsageError(f"index {name} also holds the photos under {', '.join(left_out)}, which the "
                             "folders given leave out: add --replace to drop them, or give no PATH to update "
                             "the index's own folders")

    def _tally(self) -> None:
        r = self.report
        for status in ("added", "changed", "moved", "unchanged"):
            setattr(r, status, sum(1 for p in self.planned if p.status == status))
        r.resumed = sum(1 for p in self.planned if p.source == "work")

    def _open_work(self) -> KV:
        """The work area of an interrupted build continues only if made for the same model."""
        w = self.location.work
        if w.exists():
            try:
                kv = KV(w)
            except DamagedError as e:  # cut short (a kill, a full disk): its vectors cannot be trusted
                self.report.work_discarded = str(e)
            else:
                meta = kv.get_json(_WORK_META) or {}
                if (meta.get("model"), meta.get("format_version")) == (self.model.fingerprint, FORMAT_VERSION):
                    kv.put_json(_WORK_META, self._work_meta())
                    return kv
                kv.close()
            shutil.rmtree(w)
        kv = KV(w)
        kv.put_json(_WORK_META, self._work_meta())
        return kv

    def _work_meta(self) -> dict[str, Any]:
        # The folders and the model file go in too: a first build killed before it wrote an index
        # resumes without PATH, and `vsa index status` can say with which --model.
        return {"model": self.model.fingerprint, "format_version": FORMAT_VERSION,
                "roots": [str(p) for p in self.roots or []], "model_path": str(Path(self.model.path).resolve())}

    # -- encoding and writing
    def run(self, on_progress: Callable[[int], None] | None = None) -> BuildReport:
        t0 = time.perf_counter()
        r = self.report
        try:
            self._check_space()
            self._encode(on_progress)
            self._describe_old(on_progress)
            chosen = choose_for_memory(self.index_type, self._fragment_estimate(), self.model.model.out_dim,
                                       self.max_memory)
            prev_skipped = self.old.skipped() if self.old else {}
            nothing_new = (self.old is not None and not (r.added or r.changed or r.moved or r.removed)
                           and r.encoded == 0 and self.touched == 0 and r.skipped == prev_skipped
                           and self.meta_missing == 0
                           and self.old.manifest["roots"] == [str(p) for p in self.roots or []]
                           and self.old.manifest["index_type"] == chosen)
            if nothing_new:
                r.up_to_date = True
                r.index_type = chosen
                r.photos, r.regions = len(self.old), self.old.fragments  # type: ignore[arg-type]
            else:
                self._write(chosen)
        except Exception as e:  # a full or read-only disk while saving vectors: one line, the old index kept
            why = disk_error(e, self.location.link.parent, sum(self._need_bytes()))
            if why is None:
                raise
            raise why from None
        finally:
            self._close()
        shutil.rmtree(self.location.work, ignore_errors=True)
        textenc.export(self.model)  # the model is loaded now: the first search after the build needs no torch
        r.seconds = time.perf_counter() - t0
        return r

    def _need_bytes(self) -> tuple[int, int]:
        """(bytes the work area still needs, bytes the new generation needs), estimated."""
        dim = self.model.model.out_dim
        per_photo = self.model.region_config.max_regions * dim * 2 * 1.3 + 4096
        return int(self.to_encode * per_photo), generation_bytes(len(self.planned), self._fragment_estimate(), dim)

    def _check_space(self) -> None:
        """Refuse a build that cannot fit before encoding anything: on a full disk LMDB's mapped
        file can end a later build with SIGBUS, and the work of this one would be lost."""
        work, gen = self._need_bytes()
        if not self.to_encode and not self.report.removed and not self.report.added and not self.touched:
            return  # up to date, or only reusing vectors: nothing worth refusing
        free = shutil.disk_usage(self.location.link.parent).free
        if work + gen > free:
            raise SearchIndexError(f"not enough space on the disk of {self.location.link.parent}: the build needs "
                                   f"about {(work + gen) / 2**20:.1f} MB, {free / 2**20:.1f} MB are free; "
                                   "the index is unchanged")

    def _fragment_estimate(self) -> int:
        return len(self.planned) * self.model.region_config.max_regions

    def _encode(self, on_progress: Callable[[int], None] | None) -> None:
        todo: dict[str, str] = {}  # hash -> first path with it
        for p in self.planned:
            if p.source == "encode" and p.hash not in todo:
                todo[p.hash] = p.path
        if not todo:
            return
        encoder = self.encoder or RegionEncoder(self.model.region_config, self.device, top=self.model.top)
        cfg = getattr(encoder, "cfg", None)  # a stand-in encoder (benchmarks: cached features) has none
        if cfg is not None and cfg.extractor_id() != self.model.region_config.extractor_id():
            raise UsageError(f"the encoder extracts {cfg.extractor_id()}, but {self.model.path} reads "
                             f"{self.model.region_config.extractor_id()}")
        by_path = {path: h for h, path in todo.items()}
        pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]] = []
        failed: dict[str, str] = {}

        def commit() -> None:
            with self.work.batch() as b:
                for digest, boxes, vecs, con, offset, meta in pending:
                    b.put_arrays(_WORK_VEC + digest, boxes=boxes, vectors=vecs, concepts=con,
                                 offset=np.array([offset], np.float32), meta=meta)
            n = len(pending)
            pending.clear()
            if on_progress:
                on_progress(n)

        for path, result in extract([Path(p) for p in todo.values()], encoder, batch_size=self.batch_size,
                                    max_megapixels=self.max_megapixels):
            digest = by_path[str(path)]
            if isinstance(result, str):
                failed[digest] = result
                if on_progress:
                    on_progress(1)
                continue
            vecs = encode_regions(self.model, result.features)  # (R', h)
            boxes = result.boxes[: len(vecs)]  # a global model keeps region 0 only
            vecs = vecs.astype(np.float16)
            pending.append((digest, boxes.astype(np.int32), vecs,
                            _concepts_of(result, len(vecs), self.model), self._offset(vecs),
                            photometa.to_array(photometa.of_prepared(result.photo))))  # type: ignore[arg-type]
            self.report.encoded += 1
            if len(pending) >= self.batch_size:
                commit()
        if pending:
            commit()
        if failed:
            for p in self.planned:
                if p.hash in failed:
                    self.report.skipped[p.path] = _short(failed[p.hash], p.path)
            self.planned = [p for p in self.planned if p.hash not in failed]
            self._tally()

    def _describe_old(self, on_progress: Callable[[int], None] | None) -> None:
        for digest, path in self.meta_todo.items():
            self.described[digest] = photometa.describe(path, self.max_megapixels,
                                                        decode_side(self.model.region_config))
            if on_progress:
                on_progress(1)

    def _items(self) -> Iterator[Item]:
        for p in self.planned:
            stored = None
            if p.source == "old":
                i = self.old_item_by_hash[p.hash]
                vecs = None
                stored = self.old.stored(i)  # type: ignore[union-attr]
                boxes = self.old.boxes(i)  # type: ignore[union-attr]
                con = self.old.concepts_bytes([i])[0]  # type: ignore[union-attr]
                offset = float(self.old.offsets[i])  # type: ignore[union-attr]
                meta = self.described.get(p.hash) or photometa.current(self.old.record(i))  # type: ignore[union-attr]
            else:
                a = self.work.get_arrays(_WORK_VEC + p.hash)
                if a is None:  # pragma: no cover - the plan only names hashes it saw stored
                    raise SearchIndexError(f"{p.path}: vectors missing from the build's work area; build again")
                vecs, boxes = a["vectors"], a["boxes"]
                con = a["concepts"].tobytes() if "concepts" in a else None
                offset = float(a["offset"][0]) if "offset" in a else self._offset(vecs)
                meta = photometa.from_array(a["meta"]) if "meta" in a else None
            if meta is None or meta.get("v") != photometa.META_VERSION:  # an index or work area from before
                # this photometa version: read it from the photo now (no CNN)
                meta = photometa.describe(p.path, self.max_megapixels, decode_side(self.model.region_config))
            info = {"path": p.path, "size": p.size, "mtime_ns": p.mtime_ns, "hash": p.hash, "meta": meta}
            yield Item(p.path, info, vecs, boxes, con, offset, stored)

    def _offset(self, vecs: np.ndarray) -> float:
        """The querybank offset of the vectors as the index will store them, so that a stored
        photo's scores and its offset come from the same numbers."""
        return photo_offset(self.model, as_stored(vecs, shared_width(self.model.model)))

    def _write(self, chosen: str) -> None:
        r = self.report
        skipped = {p: why for p, why in r.skipped.items()}
        extra: dict[str, Any] = {"roots": [str(p) for p in self.roots or []]}
        if self.shard is not None:  # what `merge` needs to check the set and choose the type as one build would
            extra.update(shard=list(self.shard), max_regions=self.model.region_config.max_regions)
        gen = write_generation(self.location, "photos", self._items(), self.model.model.out_dim,
                               model_info(self.model), chosen, extra=extra, skipped=skipped,
                               need_bytes=self._need_bytes()[1], shared_dim=shared_width(self.model.model))
        manifest = json.loads((gen / MANIFEST).read_text())
        r.photos, r.regions = manifest["counts"]["photos"], manifest["counts"]["regions"]
        r.index_type = manifest["index_type"]


def _concepts_of(result: RegionFeatures, regions: int, model: LoadedAlign) -> np.ndarray:
    """The first `regions` regions' concepts (the backbone's own ImageNet classes, top K, from ImageNet's
    features even when the model reads a fine-tuned top's) as a uint8 array for the work area."""
    feats = result.imagenet_or_own[:regions]
    return np.frombuffer(from_features(feats, backbone=model.region_config.backbone).to_bytes(), np.uint8)


def _short(reason: str, path: str) -> str:
    return reason if reason.startswith(path) else f"{path}: {reason}"


def build_photos(roots: list[Path] | None, model: LoadedAlign, name: str | Path | None = None,
                 index_type: str = "auto", on_progress: Callable[[int], None] | None = None,
                 **kw: Any) -> BuildReport:
    """Plan and run a build in one call (the CLI uses PhotoBuild to show a progress bar)."""
    with PhotoBuild(roots, model, name, index_type, **kw) as b:
        b.plan()
        return b.run(on_progress)
