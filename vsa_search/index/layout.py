"""Where an index lives on disk and who may write it: names, generation directories, the atomic
symlink swap, and the build lock. See the package docstring for the layout."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import SearchIndexError, UsageError
from ..core.kv import KV, as_os_error

# 2: one int8 copy of the vectors (memory-mapped .npy, a photo's shared global part stored once),
# a FAISS first stage of compact codes; 1 kept float32 vectors in FAISS and float16 ones in LMDB.
FORMAT_VERSION = 2
KINDS = {"photos": ("photos", "regions"), "sentences": ("sentences", "words")}

MANIFEST = "manifest.json"
META = "meta.lmdb"  # item records (key, info, first, count) and skipped photos
# Fragment rows (one per region or word; an item's rows are contiguous, items sorted by key):
VECTORS = "vectors.npy"  # int8 (F, dim - shared_dim): each fragment's own part
SCALES = "scales.npy"  # float32 (F,): vector = codes * scale
BOXES = "boxes.npy"  # int32 (F, 4) xyxy, photos only
CONCEPT_IDS = "concept_ids.npy"  # uint16 (F, K): each region's top ImageNet classes, photos only
CONCEPT_PROBS = "concept_probs.npy"  # float16 (F, K)
# Item rows:
ITEMS = "items.npy"  # structured (N,): first, count, querybank offset, has_concepts
SHARED = "shared.npy"  # int8 (N, shared_dim): the part every fragment of an item shares (hybrid global term)
SHARED_SCALES = "shared_scales.npy"  # float32 (N,)
# First stage (absent for "flat"):
FIRST_STAGE = "regions.faiss"  # codes of the fragments' own parts
SHARED_STAGE = "shared.faiss"  # codes of the items' shared parts
DEFAULT_NAME = "default"
SENTENCES_SUFFIX = ".sentences"

_ITEM = "i/"  # i/000000042 -> JSON item record (key, info, first, count)
_SKIP = "s/"  # s/<path> -> reason (photos that could not be read)
_WORK_META = "meta"
_WORK_VEC = "w/"  # w/<content hash> -> arrays boxes, vectors (a build in progress)


# --------------------------------------------------------------------------- where an index lives


def resolve(name: str | Path | None = None, kind: str = "photos") -> Path:
    """The link path of an index: a bare NAME lives under `paths.indexes_dir()`; anything that
    looks like a path (has a separator, starts with . or ~) is used as given."""
    s = str(name) if name is not None else DEFAULT_NAME
    if not s.strip():
        raise UsageError("empty index name")
    if isinstance(name, Path) or os.sep in s or s.startswith((".", "~")):
        p = Path(s).expanduser()
        p = p.parent.resolve() / p.name  # resolve the parent only: the link itself must stay a link
    else:
        p = paths.indexes_dir() / s
    return p.with_name(p.name + SENTENCES_SUFFIX) if kind == "sentences" else p


@dataclass(frozen=True)
class Location:
    link: Path

    @property
    def name(self) -> str:
        return self.link.name

    def sibling(self, suffix: str) -> Path:
        return self.link.parent / f".{self.link.name}.{suffix}"

    @property
    def work(self) -> Path:
        return self.sibling("work")

    @property
    def lockfile(self) -> Path:
        return self.sibling("lock")

    def generations(self) -> list[Path]:
        """Generation directories, finished (.gNNNNNN) or not (.gNNNNNN.tmp), oldest first."""
        if not self.link.parent.is_dir():
            return []
        pattern = re.compile(re.escape(f".{self.link.name}.g") + r"(\d{6})(\.tmp)?")
        return sorted(p for p in self.link.parent.iterdir() if pattern.fullmatch(p.name))

    def current(self) -> Path | None:
        """The generation directory the link points at (None when there is no index)."""
        if not self.link.is_symlink():
            if self.link.exists():
                raise SearchIndexError(f"{self.link}: exists but is not a vsa index")
            return None
        return self.link.parent / os.readlink(self.link)

    def next_generation(self) -> Path:
        n = max((int(g.name.rsplit(".g", 1)[1][:6]) for g in self.generations()), default=0)
        return self.sibling(f"g{n + 1:06d}")

    def swap_in(self, gen: Path) -> None:
        """Point the link at `gen` with one atomic rename, then drop older generations."""
        tmp_link = self.sibling(f"link.{os.getpid()}")
        tmp_link.unlink(missing_ok=True)
        os.symlink(gen.name, tmp_link)
        os.replace(tmp_link, self.link)
        _fsync_dir(self.link.parent)
        for g in self.generations():
            if g != gen:
                shutil.rmtree(g, ignore_errors=True)

    def lock(self) -> _Lock:
        return _Lock(self.lockfile, self.name)


class _Lock:
    """One build (or remove) of an index at a time; a second one fails at once, clearly. The lock
    file exists only while it is held, so that no `.NAME.lock` stays beside the index (or beside a
    user's own folder that --index points into)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.fd = path, name, -1

    def __enter__(self) -> _Lock:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only file system or folder: nothing can be built or removed there
                raise SearchIndexError(f"{self.path.parent}: cannot write there ({e.strerror}); index {self.name} "
                                       "cannot be built or changed: use a writable folder (--index PATH or "
                                       "$VSA_HOME)") from None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise SearchIndexError(f"index {self.name} is being built by another process; "
                                       "try again when it ends") from None
            # The holder before us may have removed the file as it let go: a lock on a removed file
            # guards nothing, so take it again on the file now at the path.
            try:
                st, held = os.stat(self.path), os.fstat(self.fd)
            except FileNotFoundError:
                st = held = None
            if st is not None and held is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                return self
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)

    def __exit__(self, *exc: object) -> None:
        # Removed while still held: whoever opens the path next creates a new file and locks that.
        with suppress(OSError):
            self.path.unlink()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def work_meta(location: Location) -> dict[str, Any]:
    """What an interrupted build recorded in its work area: model, and (since they are recorded)
    `roots` and `model_path`; {} when there is none or it cannot be read."""
    if not location.work.is_dir():
        return {}
    try:
        with KV(location.work, readonly=True) as kv:
            meta = kv.get_json(_WORK_META)
    except Exception:  # damaged or unreadable (lmdb raises its own types): it says nothing
        return {}
    return meta if isinstance(meta, dict) else {}


def work_roots(location: Location) -> list[str] | None:
    """The folders an interrupted build was indexing (None if its work area names none)."""
    return work_meta(location).get("roots") or None


def drop_empty_work(location: Location) -> None:
    """Remove a work area that holds no encoded vectors (a build that failed before encoding any)."""
    if not location.work.is_dir():
        return
    try:
        with KV(location.work, readonly=True) as kv:
            empty = kv.count(_WORK_VEC) == 0
    except Exception:  # damaged: the next build discards it and says so
        return
    if empty:
        shutil.rmtree(location.work, ignore_errors=True)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(location: Location) -> dict[str, Any] | None:
    """The current generation's manifest when it is readable, whatever state its other files are in
    (a rebuild of a damaged index takes its folders from it)."""
    gen = location.current()
    try:
        return json.loads((gen / MANIFEST).read_text()) if gen is not None else None
    except (OSError, ValueError):
        return None


def disk_size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file size limit (RLIMIT_FSIZE, quotas)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(e: BaseException, where: Path, need: int | None = None) -> SearchIndexError | None:
    """A full or read-only disk as one line (how much space was needed, when known); None for other errors."""
    os_err = as_os_error(e) if isinstance(e, Exception) else None
    if os_err is None:
        return None
    if os_err.errno in _DISK_FULL:
        free = shutil.disk_usage(where).free
        needs = f"it needs about {_mb(need)}, {_mb(free)} free" if need else f"{_mb(free)} free"
        return SearchIndexError(f"no space left on the disk of {where} ({needs}); the previous index is kept: "
                                "free some space and build again")
    if os_err.errno in _NOT_WRITABLE:
        return SearchIndexError(f"{where}: cannot write there ({os_err.strerror}); the index is unchanged: "
                                "use a writable folder (--index PATH or $VSA_HOME)")
    if os_err.errno == errno.EIO:  # LMDB's word for a short write: a full disk, a file size limit, a bad disk
        free = shutil.disk_usage(where).free
        needs = f"; it needs about {_mb(need)}, {_mb(free)} free" if need else ""
        return SearchIndexError(f"writing to {where} failed ({os_err.strerror}: no space left, a file size "
                                f"limit or a failing disk{needs}); the previous index is kept")
    return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def generation_bytes(items: int, fragments: int, dim: int) -> int:
    """About what a generation takes at most on disk: int8 vectors and their scales, boxes,
    concepts and PQ codes per fragment; a record (LMDB, with its page overhead) per item."""
    return int(fragments * (dim + 4 + 16 + 40 + dim // 8) + items * 1024)
