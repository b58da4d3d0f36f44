"""Whether a photo's file is still the one the index holds, and opening it only then. An index names
its photos by path, and a path can point elsewhere by the time someone asks for the photo: a symlink
put in its place, a file replaced or edited. So a photo is served only while it is a regular file
whose resolved path lies under one of the index's folders (resolved too) and whose size and mtime are
those indexed; the checks are made again on the opened file, so a swap between check and open shows."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import ImageMissingError
from ..core.names import display
from .plan import is_under

OK, CHANGED, MISSING = "ok", "changed", "missing"
# No symlink as the last component (realpath resolved them; one put there since is refused), and no
# wait on a FIFO put there since: the fstat after the open refuses anything that is not a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class IndexedFiles:
    """The files of one index generation, by their records (`key`, `size`, `mtime_ns`)."""

    def __init__(self, roots: Iterable[str]):
        self.roots = [os.path.realpath(r) for r in roots]

    def _inside(self, real: str) -> bool:
        return any(is_under(real, r) for r in self.roots)

    @staticmethod
    def _same(st: os.stat_result, rec: dict[str, Any]) -> bool:
        return stat.S_ISREG(st.st_mode) and st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns")

    def state(self, rec: dict[str, Any]) -> str:
        """OK: the file indexed is there; MISSING: nothing at its path; CHANGED: anything else."""
        real = os.path.realpath(rec["key"])
        try:
            st = os.lstat(real)
        except OSError:
            return MISSING if not os.path.lexists(rec["key"]) else CHANGED
        return OK if self._inside(real) and self._same(st, rec) else CHANGED

    def open(self, rec: dict[str, Any], what: str = "the photo") -> BinaryIO:
        """The file of `rec`, open for reading, when its state is OK; else ImageMissingError."""
        real = os.path.realpath(rec["key"])
        try:
            if not self._inside(real):
                raise OSError
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            raise self._gone(rec, what) from None
        f = os.fdopen(fd, "rb")
        try:
            if not (self._same(os.fstat(fd), rec) and self._inside(_opened(fd, real))):
                raise self._gone(rec, what)
        except BaseException:
            f.close()
            raise
        return f

    def check(self, rec: dict[str, Any], what: str = "the photo") -> Path:
        """The path of `rec` when its state is OK; else ImageMissingError."""
        if self.state(rec) != OK:
            raise self._gone(rec, what)
        return Path(rec["key"])

    def _gone(self, rec: dict[str, Any], what: str) -> ImageMissingError:
        name = display(os.path.basename(rec["key"]))
        if not os.path.lexists(rec["key"]):
            return ImageMissingError(f"{what}: {name} is no longer on disk (rebuild the index)")
        return ImageMissingError(f"{what}: {name} is not the file that was indexed any more: it changed, or "
                                 "points outside the index's folders (rebuild the index)")


def _opened(fd: int, fallback: str) -> str:
    """The path of the file that is open (Linux: /proc/self/fd); elsewhere, the path opened."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback
